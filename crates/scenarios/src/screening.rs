//! The seed's healthcare screening example in partial automation: a symptom-screening
//! classifier (scikit-learn, exported by skl2onnx) over patients with unmeasured values; the
//! model decides obvious cases, hard ones go through the logger into the review queue, and three
//! doctors decide each independently through the monitor's review API (the majority labels it).
//! The monitor reports the automation rate and the doctors' agreement.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice};
use vigil_store::{MonitorStore, PredictionStore};

use crate::recipes::ScreeningCheck;
use crate::{Progress, Recipes, Stack};

pub const MODEL: &str = "screening";
/// The doctors and each one's share of wrong calls, in percent (deterministic per patient).
pub const DOCTORS: [(&str, u64); 3] = [("dr-adams", 4), ("dr-baker", 10), ("dr-chen", 18)];
const PATIENTS_PER_REQUEST: usize = 10;

/// Trains the classifier into `repository`; returns `patients` patients with the truth and
/// onnxruntime's answers.
pub fn prepare(recipes: &Recipes, repository: &std::path::Path, patients: usize) -> Result<ScreeningCheck> {
    recipes.screening(repository, 1, patients)
}

/// The clinic's answers: per prediction id, the patient's index, the decision and P(refer).
#[derive(Debug, Clone)]
pub struct Served {
    pub answers: HashMap<String, (usize, String, [f32; 2])>,
}

impl Served {
    /// The hard cases: prediction id -> patient.
    pub fn hard(&self) -> HashMap<String, usize> {
        self.answers
            .iter()
            .filter(|(_, (_, d, _))| d == "human_review")
            .map(|(id, (p, _, _))| (id.clone(), *p))
            .collect()
    }

    /// The share of patients the model decided.
    pub fn automation_rate(&self) -> f64 {
        1.0 - self.hard().len() as f64 / self.answers.len().max(1) as f64
    }
}

/// Registers and deploys the model in partial automation, then sends every patient
/// ([`PATIENTS_PER_REQUEST`] per request, unmeasured values as NaN).
pub async fn serve_patients<S: PredictionStore + MonitorStore>(
    stack: &Stack<S>,
    check: &ScreeningCheck,
    progress: Progress<'_>,
) -> Result<Served> {
    crate::rollouts::register_and_deploy(stack, MODEL, &["1"], "vigil_train.screening", "partial").await?;
    // The server follows the deployment within its poll interval.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut oip = stack.oip.clone();
    let columns = check.features.len();
    let mut answers = HashMap::new();
    for (chunk, patients) in check.patients.chunks(PATIENTS_PER_REQUEST).enumerate() {
        let values: Vec<u8> = patients.iter().flatten().flat_map(|v| v.unwrap_or(f32::NAN).to_le_bytes()).collect();
        let request = ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "patient".into(),
                datatype: "FP32".into(),
                shape: vec![patients.len() as i64, columns as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![values.into()],
            ..Default::default()
        };
        let response = oip.model_infer(request).await?.into_inner();
        let probabilities: Vec<f32> = response.raw_output_contents[0]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ids = string_parameter(&response, "prediction_ids")?;
        let decisions = string_parameter(&response, "decisions")?;
        for (i, (id, decision)) in ids.split(',').zip(decisions.split(',')).enumerate() {
            let p = [probabilities[2 * i], probabilities[2 * i + 1]];
            answers.insert(id.to_string(), (chunk * PATIENTS_PER_REQUEST + i, decision.to_string(), p));
        }
    }
    let served = Served { answers };
    progress(&format!(
        "{} patients screened: the model decided {:.0}%, {} hard cases to the doctors",
        check.patients.len(),
        served.automation_rate() * 100.0,
        served.hard().len()
    ));
    Ok(served)
}

fn string_parameter(response: &ModelInferResponse, name: &str) -> Result<String> {
    match response.parameters.get(name).and_then(|p| p.parameter_choice.clone()) {
        Some(ParameterChoice::StringParam(s)) => Ok(s),
        _ => bail!("the answer has no '{name}' parameter"),
    }
}

/// Whether `doctor` calls `patient` wrongly: FNV-1a of both, against the doctor's error share.
fn errs(doctor: &str, patient: &str, percent: u64) -> bool {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in doctor.bytes().chain(patient.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash % 100 < percent
}

/// Each doctor's calls: prediction id -> `home` or `refer`.
pub type Calls = HashMap<&'static str, HashMap<String, String>>;

/// The three doctors at once, each through the review API until they decided every hard case:
/// claim the next item, read the patient's values, call it from the truth (wrong at their rate).
pub async fn doctors_decide<S>(
    stack: &Stack<S>,
    check: &ScreeningCheck,
    served: &Served,
    progress: Progress<'_>,
) -> Result<Calls> {
    let url = format!("http://{}", stack.monitor_http);
    let hard = served.hard();
    let http = reqwest::Client::new();
    let doctor = |name: &'static str, error_percent: u64| {
        let (http, url, hard) = (http.clone(), url.clone(), &hard);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut decided: HashMap<String, String> = HashMap::new();
            while decided.len() < hard.len() {
                if Instant::now() > deadline {
                    bail!("{name} decided {} of {} hard cases in a minute", decided.len(), hard.len());
                }
                let next: serde_json::Value = http
                    .post(format!("{url}/api/review/next"))
                    .json(&serde_json::json!({ "reviewer": name, "model": MODEL }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let Some(item) = next["item"].as_object() else {
                    // The logger may still be queueing the last hard cases.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let id = item["prediction_id"].as_str().context("an item without an id")?.to_string();
                let patient = *hard.get(&id).with_context(|| format!("{id} is not a hard case of this clinic"))?;
                let truth = &check.truth[patient];
                let call = if errs(name, &id, error_percent) {
                    if truth == "refer" { "home" } else { "refer" }
                } else {
                    truth.as_str()
                };
                let answer = http
                    .post(format!("{url}/api/review/{id}"))
                    .json(&serde_json::json!({ "reviewer": name, "label": call }))
                    .send()
                    .await?;
                if !answer.status().is_success() {
                    bail!("{name}'s decision on {id} was refused: {}", answer.text().await?);
                }
                decided.insert(id, call.to_string());
            }
            Ok((name, decided))
        }
    };
    let (a, b, c) = tokio::join!(
        doctor(DOCTORS[0].0, DOCTORS[0].1),
        doctor(DOCTORS[1].0, DOCTORS[1].1),
        doctor(DOCTORS[2].0, DOCTORS[2].1)
    );
    let calls: Calls = [a?, b?, c?].into_iter().collect();
    progress(&format!("{} doctors decided {} hard cases each", calls.len(), hard.len()));
    Ok(calls)
}

/// The monitor's dashboard data for the model, once its rollups hold all `patients` predictions.
pub async fn report<S>(stack: &Stack<S>, patients: usize) -> Result<serde_json::Value> {
    let url = format!("http://{}/api/dashboard?model={MODEL}&range=3600", stack.monitor_http);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: serde_json::Value = reqwest::get(&url).await?.json().await?;
        let windows = report["windows"].as_array().context("no windows in the dashboard data")?;
        let counted: u64 = windows.iter().filter_map(|w| w["count"].as_u64()).sum();
        if counted == patients as u64 {
            return Ok(report);
        }
        if Instant::now() > deadline {
            bail!("the monitor's rollups hold {counted} of {patients} predictions");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
