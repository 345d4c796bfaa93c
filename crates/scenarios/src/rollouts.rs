//! What the rollout scenarios share: registering the versions a scenario trained, deploying the
//! first, and following a rollout while traffic runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vigil_store::{Change, MonitorStore, PredictionStore, RolloutRow, RolloutStep};

use crate::{Progress, Stack};

/// Registers `versions` of `model` from the stack's repository (their artifacts' digests) and
/// deploys the first alone under automation `policy` (`full`: the model decides).
pub async fn register_and_deploy<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    model: &str,
    versions: &[&str],
    training_data: &str,
    policy: &str,
) -> Result<()> {
    let now = chrono::Utc::now();
    for version in versions {
        let artifact = stack.repository.join(model).join(version).join("model.onnx");
        let row = vigil_store::ModelVersionRow {
            model_name: model.into(),
            version: version.to_string(),
            artifact_sha256: vigil_store::registry::sha256_file(&artifact)?,
            artifact_uri: String::new(),
            training_data: training_data.into(),
            metrics: serde_json::json!({}),
            stage: "candidate".into(),
            registered_by: "anna".into(),
            registered_at: now,
            stage_changed_at: now,
        };
        stack.store.register_version(&row, "").await?;
    }
    let primary = versions.first().context("no versions")?;
    let single = vigil_store::DeploymentRow {
        model_name: model.into(),
        deployment_id: format!("{model}-1"),
        primary_version: primary.to_string(),
        candidate_version: None,
        mode: "single".into(),
        share: 0.0,
        updated_by: "anna".into(),
        updated_at: now,
        policy: policy.into(),
        accept_below: None,
        reject_at: None,
    };
    stack.store.set_deployment(&single, &Change { actor: "anna", reason: "", at: now }).await?;
    Ok(())
}

/// Whether a good candidate was promoted and then a bad one rolled back in its first step.
pub fn promoted_then_rolled_back(good: &RolloutRow, bad: &RolloutRow) -> bool {
    good.state == "promoted" && (bad.state.as_str(), bad.step) == ("rolled_back", 0)
}

/// Follows the rollout of `candidate` of `model`: each look reports a new step and gives the
/// rollout once it has ended.
pub struct Watch {
    model: String,
    candidate: String,
    shown_step: i32,
    deadline: Instant,
}

impl Watch {
    pub fn new(model: &str, candidate: &str, deadline: Duration) -> Self {
        Self { model: model.into(), candidate: candidate.into(), shown_step: -1, deadline: Instant::now() + deadline }
    }

    /// The step the rollout was at when last looked at (-1 before the first look).
    pub fn step(&self) -> i32 {
        self.shown_step
    }

    /// The ended rollout, or None while it runs (a new step reported to `progress` with
    /// `describe` and the `sent` count); an error past the deadline or when replaced.
    pub async fn look<S: PredictionStore + MonitorStore>(
        &mut self,
        stack: &Stack<S>,
        sent: &str,
        describe: impl Fn(&RolloutStep) -> String,
        progress: Progress<'_>,
    ) -> Result<Option<RolloutRow>> {
        let rollout =
            stack.store.rollouts(Some(&self.model)).await?.into_iter().next().context("the rollout is gone")?;
        if rollout.candidate_version != self.candidate {
            bail!("another rollout ({}) replaced version {}'s", rollout.candidate_version, self.candidate);
        }
        if !rollout.is_active() {
            return Ok(Some(rollout));
        }
        if rollout.step != self.shown_step {
            let step = rollout.steps().ok().and_then(|s| s.get(rollout.step as usize).map(&describe));
            progress(&format!(
                "  version {}: step {} ({}), {sent} so far",
                self.candidate,
                rollout.step + 1,
                step.unwrap_or_default()
            ));
            self.shown_step = rollout.step;
        }
        if Instant::now() > self.deadline {
            bail!("rollout still {} at step {}: {}", rollout.state, rollout.step, rollout.history);
        }
        Ok(None)
    }
}
