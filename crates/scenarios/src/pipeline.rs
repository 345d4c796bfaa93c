//! The seed's pipeline-monitoring example: a user-profile model ("owns a car: no / unknown /
//! yes" from a 30-day clickstream) feeds a recommender (an offer per user), the two calls of a
//! visit under one trace id, each logged with its stage. Users click offers that fit them
//! (clicks to the monitor's SubmitFeedback). Then a site redesign loses the car tracking: the
//! profile's unknown share rises (alarm on the first stage) and click-through falls (alarm on
//! the second).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use vigil_monitor::{Catalog, MonitorConfig, Views};
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice};
use vigil_proto::vigil::v1::{FeedbackEvent, SubmitFeedbackRequest};
use vigil_store::{MonitorStore, PredictionStore};

use crate::recipes::{PipelineCheck, PipelinePhase};
use crate::{Progress, Recipes, Stack};

pub const OFFERS: [&str; 3] = ["car_insurance", "general_deals", "transit_pass"];
/// The alarms: the profile's unknown share above this, the recommender's clicks per offer below this.
pub const UNKNOWN_LIMIT: f64 = 0.3;
pub const CLICK_THROUGH_LIMIT: f64 = 0.2;

/// Trains both models into `repository`; returns `users` users per phase with onnxruntime's
/// answers of the profile model.
pub fn prepare(recipes: &Recipes, repository: &std::path::Path, users: usize) -> Result<PipelineCheck> {
    let check = recipes.pipeline_model(repository, "profile", 1, users)?;
    recipes.pipeline_model(repository, "recommender", 1, users)?;
    Ok(check)
}

/// What one phase's users did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Visits {
    pub users: usize,
    /// Users the profile called `unknown`.
    pub unknown: usize,
    pub clicks: usize,
}

/// Both phases, each in whole seconds: [`Outcome::bounds`] `[b0, b1)` normal, `[b1, b2)` shifted.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub bounds: [DateTime<Utc>; 3],
    pub normal: Visits,
    pub shifted: Visits,
}

/// The state and value of the two alarms after a phase (None: never fired).
pub type AlarmStates = (Option<(String, Option<f64>)>, Option<(String, Option<f64>)>);

/// Runs the normal phase, then the shifted one.
pub async fn run<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    check: &PipelineCheck,
    progress: Progress<'_>,
) -> Result<Outcome> {
    let mut seed = 7u64;
    let b0 = next_second().await;
    let normal = visit(stack, &check.normal, &mut seed).await?;
    progress(&format!("{} visits: profile unknown {}, clicks {}", normal.users, normal.unknown, normal.clicks));
    let b1 = next_second().await;
    let shifted = visit(stack, &check.shifted, &mut seed).await?;
    progress(&format!(
        "{} visits after the redesign: profile unknown {}, clicks {}",
        shifted.users, shifted.unknown, shifted.clicks
    ));
    let b2 = next_second().await;
    Ok(Outcome { bounds: [b0, b1, b2], normal, shifted })
}

/// The rules, each over the last `seconds`: `unknown-fraction` on the profile, `click-through`
/// on the recommender.
pub fn rules(seconds: i64) -> Result<MonitorConfig> {
    Ok(toml::from_str(&format!(
        "[[alerting.rules]]\nname = \"unknown-fraction\"\nmetric = \"label.unknown.rate\"\nmodel = \"profile\"\n\
         window = \"{seconds}s\"\ncomparator = \">\"\nthreshold = {UNKNOWN_LIMIT}\n\
         [[alerting.rules]]\nname = \"click-through\"\nmetric = \"feedback.click.rate\"\nmodel = \"recommender\"\n\
         window = \"{seconds}s\"\ncomparator = \"<\"\nthreshold = {CLICK_THROUGH_LIMIT}\n"
    ))?)
}

/// Waits until the rollups hold every visit, then judges the rules at the end of each phase over
/// that phase: the alarms' states after the normal phase and after the shifted one.
pub async fn judge<S: PredictionStore + MonitorStore>(stack: &Stack<S>, outcome: &Outcome) -> Result<[AlarmStates; 2]> {
    let [b0, b1, b2] = outcome.bounds;
    let catalog = std::sync::Arc::new(Catalog::load(&stack.repository)?);
    let views = Views::new(stack.store.clone(), catalog, std::sync::Arc::new(stack.monitor_config.clone()));
    let visits = (outcome.normal.users + outcome.shifted.users) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for model in ["profile", "recommender"] {
        let scope = vigil_monitor::views::Scope { model: model.into(), version: None, variant: None };
        while views.total(&scope, b0, b2).await?.count < visits {
            if std::time::Instant::now() > deadline {
                bail!("{model}: the rollups do not hold every visit after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The alarm state machine of the monitor's rounds, run here at the phases' ends and kept in
    // memory: the running monitor ends stored alarms whose rule it does not have, so storing
    // these would race with it.
    let mut alarms: std::collections::HashMap<String, vigil_store::monitoring::AlertRow> = Default::default();
    let mut cleared = vigil_monitor::alarms::ClearedSince::default();
    let mut states = Vec::new();
    for (now, seconds) in [(b1, (b1 - b0).num_seconds()), (b2, (b2 - b1).num_seconds())] {
        for rule in rules(seconds)?.rules()? {
            let model = rule.model.clone().context("the pipeline's rules name their model")?;
            let value = vigil_monitor::alarms::evaluate(&views, &rule, &model, now).await?;
            let current =
                alarms.get(&rule.name).cloned().unwrap_or_else(|| vigil_monitor::alarms::inactive(&rule, &model, now));
            // As the monitor stores them: an alarm that never changed state has no row.
            if let (next, Some(_)) =
                vigil_monitor::alarms::transition(&rule, &current, value, now, cleared.slot(&rule.name))
            {
                alarms.insert(rule.name.clone(), next);
            }
        }
        let state = |rule: &str| alarms.get(rule).map(|a| (a.state.clone(), a.value));
        states.push((state("unknown-fraction"), state("click-through")));
    }
    Ok([states[0].clone(), states[1].clone()])
}

/// Waits for the next whole second (plus a margin) and returns it: phases start on rollup
/// window boundaries.
async fn next_second() -> DateTime<Utc> {
    let now = Utc::now();
    let next = DateTime::from_timestamp(now.timestamp() + 1, 0).unwrap_or(now);
    tokio::time::sleep((next - now).to_std().unwrap_or_default() + Duration::from_millis(20)).await;
    next
}

fn call(model: &str, input: &str, values: &[f32], trace_id: &str, stage: &str) -> ModelInferRequest {
    let parameter = |v: &str| InferParameter { parameter_choice: Some(ParameterChoice::StringParam(v.into())) };
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![1, values.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()],
        parameters: [("trace_id".to_string(), parameter(trace_id)), ("stage".to_string(), parameter(stage))].into(),
        ..Default::default()
    }
}

fn probabilities(response: &ModelInferResponse) -> Vec<f32> {
    response.raw_output_contents[0].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn prediction_id(response: &ModelInferResponse) -> Result<String> {
    match response.parameters.get("prediction_ids").and_then(|p| p.parameter_choice.clone()) {
        Some(ParameterChoice::StringParam(id)) => Ok(id),
        _ => bail!("an answer without its prediction id"),
    }
}

/// Each user of `phase` visits: profile, then the recommender fed the profile's probabilities,
/// one trace id; a user clicks the offer with the chance `vigil_data.clickstream` gives
/// (seeded). The profile's answers must equal onnxruntime's. Clicks are then submitted, those
/// refused as not yet logged again until stored.
async fn visit<S>(stack: &Stack<S>, phase: &PipelinePhase, seed: &mut u64) -> Result<Visits> {
    let mut oip = stack.oip.clone();
    let mut visits = Visits { users: phase.inputs.len(), ..Default::default() };
    let mut clicks = Vec::new();
    for (user, clickstream) in phase.inputs.iter().enumerate() {
        let trace = uuid::Uuid::now_v7().to_string();
        let profile = oip.model_infer(call("profile", "clickstream", clickstream, &trace, "profile")).await?;
        let profile = probabilities(&profile.into_inner());
        if profile.iter().zip(&phase.probabilities[user]).any(|(got, want)| (got - want).abs() > 1e-5) {
            bail!("user {user}: profile {profile:?}, onnxruntime {:?}", phase.probabilities[user]);
        }
        visits.unknown += usize::from(phase.label[user] == "unknown");
        let offer = oip.model_infer(call("recommender", "profile", &profile, &trace, "recommend")).await?.into_inner();
        let scores = probabilities(&offer);
        let best = (0..OFFERS.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).context("no offer scores")?;
        let owns = phase.owns_car[user] == 1;
        let chance = match (OFFERS[best], owns) {
            ("car_insurance", true) | ("transit_pass", false) => 0.35,
            ("general_deals", _) => 0.06,
            _ => 0.02,
        };
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if ((*seed >> 11) as f64 / (1u64 << 53) as f64) < chance {
            visits.clicks += 1;
            clicks.push(FeedbackEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                prediction_id: prediction_id(&offer)?,
                kind: "click".into(),
                value: OFFERS[best].into(),
                session_id: format!("user-{user}"),
                ..Default::default()
            });
        }
    }
    submit_clicks(stack, clicks).await?;
    Ok(visits)
}

/// Submits clicks until each is stored: one on a prediction not logged yet is refused with
/// "retry later" and sent again (its event id keeps it from counting twice).
pub async fn submit_clicks<S>(stack: &Stack<S>, clicks: Vec<FeedbackEvent>) -> Result<()> {
    let mut monitoring = stack.monitoring.clone();
    let mut pending = clicks;
    for _ in 0..100 {
        if pending.is_empty() {
            return Ok(());
        }
        let answer = monitoring.submit_feedback(SubmitFeedbackRequest { events: pending.clone() }).await?.into_inner();
        if let Some(refused) = answer.rejected.iter().find(|r| !r.reason.contains("retry later")) {
            bail!("a click was refused: {}", refused.reason);
        }
        pending = answer.rejected.iter().map(|r| pending[r.index as usize].clone()).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} clicks still refused after 10 s", pending.len())
}
