//! The seed's phone line: vigil-edge follows the deployments in the store while the line client
//! inspects phones from 32 stations, and human inspectors look at every third phone (their
//! decisions arrive as labels). The controller takes the next scratch-detector version from
//! shadow (judged on its agreement with the primary and its accuracy on the inspected phones)
//! through half the stations to all of them; then a version that normalises the images
//! differently (its scores shift) is rolled back in its shadow step, and the line never stops.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use vigil_monitor::rollout;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::{InspectRequest, LabelEvent, SubmitLabelsRequest};
use vigil_store::{Change, MonitorStore, PredictionStore, RolloutRow, RolloutStep, StepMode};

use crate::recipes::project_path;
use crate::{Progress, Stack};

pub const MODEL: &str = "scratch-detector";
/// The controller's limits for this example (`StackOptions::rollouts`): on this line a shifted
/// score fails a step however many inspectors' labels agree with the candidate. Version 3's
/// normalisation moves every score (KS about 0.3) without flipping a decision on these phones,
/// so with the shipped rule (labels outweigh the proxies at 200 on each side) a shadow step
/// that lasted long enough to gather 200 labels let it through to the canary step.
pub const ROLLOUTS: &str = "labels_outweigh_proxies_at = 1000000";
/// Longest a rollout may take before the scenario gives up.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(90);

/// Puts three versions of the shipped scratch detector into `repository`: 1 in service, 2 the
/// next (the same model), 3 with a changed normalisation (`mean = 0.1`). Returns the line's
/// sample phones: (inspector's decision `ok` / `defect`, PNG).
pub fn prepare(repository: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let shipped = project_path(&format!("models/{MODEL}"))?;
    let newest = std::fs::read_dir(&shipped)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|v| (v, e.path())))
        .max()
        .context("no shipped scratch-detector version")?
        .1;
    for version in 1..=3u64 {
        let dir = repository.join(MODEL).join(version.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(newest.join("model.onnx"), dir.join("model.onnx"))?;
        let toml = std::fs::read_to_string(newest.join("model.toml"))?;
        let mut toml: String = toml
            .lines()
            .map(|l| if l.starts_with("version =") { format!("version = {version}") } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        if version == 3 {
            toml = toml.replace("mean = 0.5", "mean = 0.1");
        }
        std::fs::write(dir.join("model.toml"), toml)?;
    }
    crate::recipes::read_phones(&project_path("samples/normal")?)
}

/// Shadow for at least 4 s and 150 of the candidate's answers (the inspectors' decisions on
/// the first phones must reach the log before it is judged, also on a loaded machine), then
/// half the stations, then all, each at least 2 s and 60 answers.
pub fn plan() -> Vec<RolloutStep> {
    let step = |share, mode, min_duration_s, min_requests| RolloutStep {
        share,
        mode,
        min_duration_s,
        min_requests,
        max_duration_s: Some(60),
        approval: false,
    };
    vec![step(1.0, StepMode::Shadow, 4, 150), step(0.5, StepMode::Canary, 2, 60), step(1.0, StepMode::Canary, 2, 60)]
}

/// A rollout as the line lived it.
#[derive(Debug)]
pub struct Seen {
    pub rollout: RolloutRow,
    pub phones: usize,
    pub labelled: usize,
}

/// Both rollouts: the next version's and the badly normalising one's.
#[derive(Debug)]
pub struct Outcome {
    pub next: Seen,
    pub bad: Seen,
}

impl Outcome {
    /// Version 2 promoted; version 3 rolled back in its shadow step.
    pub fn as_expected(&self) -> bool {
        crate::rollouts::promoted_then_rolled_back(&self.next.rollout, &self.bad.rollout)
    }
}

/// Registers the versions, deploys version 1, and rolls out 2, then 3, while the line runs.
pub async fn run<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    phones: &[(String, Vec<u8>)],
    progress: Progress<'_>,
) -> Result<Outcome> {
    crate::rollouts::register_and_deploy(stack, MODEL, &["1", "2", "3"], "", "full").await?;
    progress("scratch-detector 1 inspects every phone; rolling out version 2 from shadow");
    let by_anna = Change { actor: "anna", reason: "v2 passed offline evaluation", at: chrono::Utc::now() };
    rollout::start(&stack.store, MODEL, "2", &plan(), &by_anna).await?;
    let next = drive(stack, phones, "2", progress).await?;
    progress(&format!(
        "version 2: {} after {} phones ({} inspected by people){}",
        next.rollout.state,
        next.phones,
        next.labelled,
        crate::anti_spam::failing(&next.rollout)
    ));
    progress("rolling out version 3 (a changed normalisation)");
    let by_ben = Change { actor: "ben", reason: "new normalisation", at: chrono::Utc::now() };
    rollout::start(&stack.store, MODEL, "3", &plan(), &by_ben).await?;
    let bad = drive(stack, phones, "3", progress).await?;
    progress(&format!(
        "version 3: {} in step {} after {} phones; failing checks: {}",
        bad.rollout.state,
        bad.rollout.step + 1,
        bad.phones,
        rollout::failed_checks(&bad.rollout, 0).join(", ")
    ));
    Ok(Outcome { next, bad })
}

/// Phones from 32 stations, one after another, until the rollout of `candidate` ends; every
/// third one also decided by an inspector, whose decision is sent as its label.
async fn drive<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    phones: &[(String, Vec<u8>)],
    candidate: &str,
    progress: Progress<'_>,
) -> Result<Seen> {
    let mut inspect = InspectionClient::connect(format!("http://{}", stack.server.addr)).await?;
    let mut monitoring = stack.monitoring.clone();
    let mut watch = crate::rollouts::Watch::new(MODEL, candidate, ROLLOUT_DEADLINE);
    let (mut i, mut labelled) = (0usize, 0usize);
    let mut decisions = Vec::new();
    loop {
        let (truth, image) = &phones[i % phones.len()];
        let request =
            InspectRequest { image: image.clone(), station_id: format!("line-{}", i % 32), ..Default::default() };
        let answer = inspect.inspect(request).await.context("the line stopped")?.into_inner();
        if i.is_multiple_of(3) {
            decisions.push(LabelEvent {
                prediction_id: answer.prediction_id,
                label: truth.clone(),
                source: "inspector".into(),
                ..Default::default()
            });
        }
        i += 1;
        if !i.is_multiple_of(50) {
            continue;
        }
        // Decisions on phones not logged yet are refused ("retry later") and sent again.
        let sent = std::mem::take(&mut decisions);
        let answer = monitoring.submit_labels(SubmitLabelsRequest { labels: sent.clone() }).await?.into_inner();
        labelled += answer.accepted as usize;
        if let Some(refused) = answer.rejected.iter().find(|r| !r.reason.contains("retry later")) {
            anyhow::bail!("an inspector's decision was refused: {}", refused.reason);
        }
        decisions = answer.rejected.iter().map(|r| sent[r.index as usize].clone()).collect();
        let describe = |s: &RolloutStep| match s.mode {
            StepMode::Shadow => "shadow".to_string(),
            StepMode::Canary => format!("{}% of the stations", s.share * 100.0),
        };
        if let Some(rollout) = watch.look(stack, &format!("{i} phones"), describe, progress).await? {
            return Ok(Seen { rollout, phones: i, labelled });
        }
    }
}
