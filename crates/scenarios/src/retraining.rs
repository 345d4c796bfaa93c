//! The loop closed on the symptom-screening classifier: the clinic's patients change (a new
//! variant of the illness: the sick have no fever, and age weighs far more), the follow-up's
//! labels show the model's accuracy falling, the accuracy alarm fires, the monitor retrains the
//! model by itself on the labelled predictions (exported and verified), registers the candidate,
//! runs it in shadow, where the labels judge it better than the primary, and promotes it; the
//! alarm resolves. Every step is an audit event with its time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::infer_parameter::ParameterChoice;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::vigil::v1::LabelEvent;
use vigil_store::{MonitorStore, PredictionStore, RetrainJob, RolloutRow};

use crate::loops::{Follow, alarm_state, percent, send_labels};
use crate::recipes::Patients;
use crate::{Progress, Recipes, Stack};

pub const MODEL: &str = crate::screening::MODEL;
/// The accuracy alarm that retrains and rolls out.
pub const RULE: &str = "screening-accuracy";
/// The alarm's threshold: accuracy on the labelled predictions of the last 10 seconds.
pub const MIN_ACCURACY: f64 = 0.76;
const PER_REQUEST: usize = 10;
/// The clinic's pace: a request of `PER_REQUEST` patients this often at most (the labels follow
/// through the logger, so the alarm sees the change within a few hundred patients).
const PACE: Duration = Duration::from_millis(20);
/// The whole loop, from the first patient to the promotion, at most this long.
const DEADLINE: Duration = Duration::from_secs(240);

/// The monitor's configuration for the loop: the accuracy alarm with its actions, and the
/// screening recipe (labels of 600 new items at least; a shadow step of at least 4 s and 400
/// patients, long enough for the labels to judge it, then all of them).
pub fn monitor_config(recipes: &Recipes, workdir: &Path) -> String {
    format!(
        r#"
[[alerting.rules]]
name = "{RULE}"
metric = "accuracy"
model = "{MODEL}"
window = "10s"
comparator = "<"
threshold = {MIN_ACCURACY}
actions = ["retrain", "rollout"]

[retraining]
poll = "200ms"
workdir = "{workdir}"

[retraining.models.{MODEL}]
recipe = ["{python}", "-m", "vigil_train.screening"]
cwd = "{training}"
min_new_labels = 600
cooldown = "10m"
rollout = {{ shadow = "4s", steps = [100], step_duration = "1s", min_requests = 400 }}
"#,
        workdir = workdir.display(),
        python = recipes.python().display(),
        training = recipes.training().display(),
    )
}

/// What the loop did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub job: RetrainJob,
    pub rollout: RolloutRow,
    /// Labelled answers (right, all) of each version on the changed population.
    pub before: (u64, u64),
    pub after: (u64, u64),
    /// Seconds from the alarm firing to: the job queued, the candidate registered, the rollout
    /// started, the promotion.
    pub timeline: Vec<(&'static str, f64)>,
}

/// Serves `normal` patients, then `shifted` ones (cycling) with the follow-up's label sent
/// after each answer, until the retrained candidate is promoted; returns what happened.
pub async fn run<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    normal: &Patients,
    shifted: &Patients,
    progress: Progress<'_>,
) -> Result<Outcome> {
    crate::rollouts::register_and_deploy(stack, MODEL, &["1"], "vigil_train.screening, seed 21", "full").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut clinic = Clinic { stack, pending: Vec::new(), by_version: Default::default() };
    for start in (0..normal.patients.len()).step_by(PER_REQUEST) {
        clinic.screen(normal, start).await?;
    }
    send_labels(stack, &mut clinic.pending).await?;
    progress(&format!("{} patients screened as usual; labels follow", normal.patients.len()));
    progress("the patients change: a new variant without fever, worst for the old");
    clinic.by_version.clear();
    let deadline = Instant::now() + DEADLINE;
    let mut follow = Follow::new(MODEL);
    let mut sent = 0usize;
    loop {
        tokio::time::sleep(PACE).await;
        clinic.screen(shifted, sent % shifted.patients.len()).await?;
        sent += PER_REQUEST;
        if !sent.is_multiple_of(50) {
            continue;
        }
        send_labels(stack, &mut clinic.pending).await?;
        if Instant::now() > deadline {
            bail!("the loop did not close within {DEADLINE:?}");
        }
        if !follow.started() && alarm_state(stack, RULE, MODEL).await? == "firing" {
            follow.start_clock("the accuracy alarm fires");
            progress(&format!("{RULE} fires after {sent} changed patients"));
        }
        if let Some((job, rollout)) = follow.look(stack, progress).await? {
            let candidate = rollout.candidate_version.clone();
            let before = clinic.by_version.get("1").copied().unwrap_or_default();
            let after = clinic.by_version.get(&candidate).copied().unwrap_or_default();
            progress(&format!(
                "version {candidate} {}{}; on the changed patients version 1 was right {:.1}%, version {candidate} {:.1}%",
                rollout.state,
                crate::anti_spam::failing(&rollout),
                percent(before),
                percent(after)
            ));
            return Ok(Outcome { job, rollout, before, after, timeline: follow.timeline });
        }
    }
}

/// Sends the last answers' labels and waits until the accuracy alarm resolves (the new primary's
/// labelled answers fill its window), serving changed patients meanwhile.
pub async fn until_resolved<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    shifted: &Patients,
    progress: Progress<'_>,
) -> Result<()> {
    let mut clinic = Clinic { stack, pending: Vec::new(), by_version: Default::default() };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sent = 0usize;
    while alarm_state(stack, RULE, MODEL).await? == "firing" {
        if Instant::now() > deadline {
            bail!("{RULE} still fires 90 s after the promotion");
        }
        tokio::time::sleep(PACE).await;
        clinic.screen(shifted, (sent + shifted.patients.len() / 2) % shifted.patients.len()).await?;
        sent += PER_REQUEST;
        if sent.is_multiple_of(50) {
            send_labels(stack, &mut clinic.pending).await?;
        }
    }
    progress(&format!("{RULE} resolved after {sent} more patients"));
    Ok(())
}

/// The clinic: screens patients and sends the follow-up's labels; counts each version's right
/// answers.
struct Clinic<'a, S> {
    stack: &'a Stack<S>,
    pending: Vec<LabelEvent>,
    by_version: std::collections::BTreeMap<String, (u64, u64)>,
}

impl<S: PredictionStore + MonitorStore> Clinic<'_, S> {
    /// Screens `PER_REQUEST` patients from `start` (wrapping) and keeps their labels to send.
    async fn screen(&mut self, patients: &Patients, start: usize) -> Result<()> {
        let n = patients.patients.len();
        let picked: Vec<usize> = (start..start + PER_REQUEST).map(|i| i % n).collect();
        let values: Vec<u8> = picked
            .iter()
            .flat_map(|&i| patients.patients[i].iter().map(|v| v.unwrap_or(f32::NAN)))
            .flat_map(f32::to_le_bytes)
            .collect();
        let request = ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "patient".into(),
                datatype: "FP32".into(),
                shape: vec![picked.len() as i64, patients.features.len() as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![values.into()],
            ..Default::default()
        };
        let response = self.stack.oip.clone().model_infer(request).await?.into_inner();
        let ids = match response.parameters.get("prediction_ids").and_then(|p| p.parameter_choice.clone()) {
            Some(ParameterChoice::StringParam(s)) => s,
            _ => bail!("the answer has no prediction_ids"),
        };
        let refer: Vec<f32> = response
            .raw_output_contents
            .first()
            .context("no probabilities")?
            .chunks_exact(8)
            .map(|b| f32::from_le_bytes([b[4], b[5], b[6], b[7]]))
            .collect();
        let counts = self.by_version.entry(response.model_version.clone()).or_default();
        for ((id, &patient), p) in ids.split(',').zip(&picked).zip(refer) {
            let truth = &patients.truth[patient];
            counts.0 += u64::from((p >= 0.5) == (truth == "refer"));
            counts.1 += 1;
            let source = "follow-up".into();
            self.pending.push(LabelEvent {
                prediction_id: id.into(),
                label: truth.clone(),
                source,
                ..Default::default()
            });
        }
        Ok(())
    }
}
