//! What the closed-loop scenarios share: alarm states, labels sent as they are logged, following
//! the retraining job an alarm starts and the rollout it starts in turn, and the audit trail.

use std::time::Instant;

use anyhow::{Result, bail};
use vigil_proto::vigil::v1::{LabelEvent, SubmitLabelsRequest};
use vigil_store::{AlertStore, MonitorStore, PredictionStore, RetrainJob, RolloutRow};

use crate::{Progress, Stack};

/// The state of `rule`'s alarm on `model` (`firing`, `resolved`; empty before it first fired).
pub async fn alarm_state<S: AlertStore>(stack: &Stack<S>, rule: &str, model: &str) -> Result<String> {
    let key = format!("{rule}/{model}");
    Ok(stack.store.load_alerts().await?.into_iter().find(|a| a.alert_key == key).map(|a| a.state).unwrap_or_default())
}

/// Sends `pending` labels through the monitor's API; those of predictions not logged yet are
/// refused ("retry later") and stay in `pending` for the next time. Any other refusal is an error.
pub async fn send_labels<S>(stack: &Stack<S>, pending: &mut Vec<LabelEvent>) -> Result<u64> {
    let sent = std::mem::take(pending);
    if sent.is_empty() {
        return Ok(0);
    }
    let mut monitoring = stack.monitoring.clone();
    let answer = monitoring.submit_labels(SubmitLabelsRequest { labels: sent.clone() }).await?.into_inner();
    if let Some(refused) = answer.rejected.iter().find(|r| !r.reason.contains("retry later")) {
        bail!("a label ({}) was refused: {}", sent[refused.index as usize].source, refused.reason);
    }
    *pending = answer.rejected.iter().map(|r| sent[r.index as usize].clone()).collect();
    Ok(u64::from(answer.accepted))
}

/// Follows an alarm's retraining job of one model and the rollout it starts: each step goes
/// into the timeline, in seconds from the moment [`Self::start_clock`] was called.
pub struct Follow {
    model: String,
    since: Option<Instant>,
    pub timeline: Vec<(&'static str, f64)>,
    shown_job_state: String,
    in_shadow: bool,
}

impl Follow {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.into(),
            since: None,
            timeline: Vec::new(),
            shown_job_state: String::new(),
            in_shadow: false,
        }
    }

    /// Whether the clock has started.
    pub fn started(&self) -> bool {
        self.since.is_some()
    }

    /// Seconds since the clock started (0 before).
    pub fn elapsed(&self) -> f64 {
        self.since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Starts the clock (once) and notes `what` happened at its start.
    pub fn start_clock(&mut self, what: &'static str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.timeline.push((what, 0.0));
        }
    }

    /// Notes `what` happened now.
    pub fn mark(&mut self, what: &'static str) {
        self.timeline.push((what, self.elapsed()));
    }

    /// Looks at the model's newest job and rollout; the job and the rollout once the rollout has
    /// ended, an error when the job failed or was cancelled.
    pub async fn look<S: PredictionStore + MonitorStore>(
        &mut self,
        stack: &Stack<S>,
        progress: Progress<'_>,
    ) -> Result<Option<(RetrainJob, RolloutRow)>> {
        let Some(job) = stack.store.retrain_jobs(Some(&self.model), 1).await?.into_iter().next() else {
            return Ok(None);
        };
        if job.state != self.shown_job_state {
            self.mark(match job.state.as_str() {
                "queued" => "retraining queued",
                "running" => "retraining running",
                "succeeded" => "candidate registered",
                _ => "retraining ended",
            });
            progress(&format!("  job {}: {} ({})", job.job_id, job.state, job.step));
            self.shown_job_state = job.state.clone();
        }
        if matches!(job.state.as_str(), "failed" | "cancelled") {
            bail!("retraining job {} {}: {}\n{}", job.job_id, job.state, job.error, job.log);
        }
        let Some(rollout) = stack.store.rollouts(Some(&self.model)).await?.into_iter().next() else {
            return Ok(None);
        };
        if !self.in_shadow && self.shadow_answered(stack, &rollout.candidate_version).await? {
            self.in_shadow = true;
            self.mark("serving in shadow");
        }
        if rollout.is_active() {
            return Ok(None);
        }
        self.mark(if rollout.state == "promoted" { "promoted" } else { "rollout ended" });
        Ok(Some((job, rollout)))
    }

    /// Whether a shadow answer of `version` is in the prediction log.
    async fn shadow_answered<S: PredictionStore>(&self, stack: &Stack<S>, version: &str) -> Result<bool> {
        let filter = vigil_store::PredictionFilter {
            model_name: Some(self.model.clone()),
            model_version: Some(version.into()),
            variant: Some(vigil_proto::vigil::v1::Variant::Shadow as i16),
            limit: 1,
            ..Default::default()
        };
        Ok(!stack.store.query_predictions(&filter).await?.is_empty())
    }
}

/// The loop's steps in `model`'s audit trail, oldest first: `registered`, `queued`, `shadow`
/// (the rollout's first step running), `retrained`, `promoted`; and every event of the model
/// (action, to state) to show when they differ from what was expected.
pub async fn audit_steps<S: MonitorStore>(
    store: &S,
    model: &str,
) -> Result<(Vec<&'static str>, Vec<(String, String)>)> {
    let events: Vec<(String, String)> = store
        .audit_events(1000)
        .await?
        .into_iter()
        .rev()
        .filter(|e| e.subject.starts_with(model))
        .map(|e| (e.action, e.to_state))
        .collect();
    let steps = events
        .iter()
        .filter_map(|(action, to)| match (action.as_str(), to.as_str()) {
            ("retrain", "queued") => Some("queued"),
            ("retrain", "succeeded") => Some("retrained"),
            ("register", _) => Some("registered"),
            ("rollout", to) if to.contains("promoted") => Some("promoted"),
            ("rollout", to) if to.starts_with("step 1 ") && to.ends_with("running") => Some("shadow"),
            _ => None,
        })
        .collect();
    Ok((steps, events))
}

/// Percent of right answers, (right, all).
pub fn percent((right, all): (u64, u64)) -> f64 {
    100.0 * right as f64 / all.max(1) as f64
}
