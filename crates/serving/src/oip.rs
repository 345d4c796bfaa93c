//! The Open Inference Protocol v2 (`inference.GRPCInferenceService`), Triton-compatible.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use vigil_inference::InferenceError;
use vigil_inference::batcher::BatchOutput;
use vigil_inference::config::{ModelConfig, TensorSpec};
use vigil_inference::repository::{LoadedModel, ModelRepository, VersionState, wait_until_idle};
use vigil_inference::tensor::{DataType, Tensor, element_count};
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::model_infer_response::InferOutputTensor;
use vigil_proto::inference::*;
use vigil_proto::vigil::v1::{Decision, ReviewRequest, Verdict};

use crate::admission::{Deadline, held_until_answered};
use crate::decision::{Automation, Policy};
use crate::ids::check_id;
use crate::infer::{Infer, Route, ShadowObserver, ShadowRun};
use crate::metrics::{Api, ServingMetrics, Tally};
use crate::records::{InferredItem, RecordEmitter, RequestContext, UntilAnswered, new_trace_id};
use crate::request_metrics::ServedBy;
use crate::status::to_status;

/// Extensions this server implements, as reported by ServerMetadata.
pub const EXTENSIONS: &[&str] = &["model_configuration", "statistics"];

/// Whether the server takes new work: ready from the start, not ready once it drains (as the
/// health service's NOT_SERVING), so OIP readiness probes stop sending it requests.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<std::sync::atomic::AtomicBool>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The server drains: ServerReady answers false from now on.
    pub fn draining(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The OIP v2 service over a model repository.
#[derive(Clone)]
pub struct InferenceService {
    repository: Arc<ModelRepository>,
    infer: Infer,
    server_name: String,
    metrics: ServingMetrics,
    records: Option<RecordEmitter>,
    capturer: Option<vigil_capture::Capturer>,
    readiness: Readiness,
}

impl InferenceService {
    /// A service named `server_name` (reported by ServerMetadata) serving `repository`.
    pub fn new(repository: Arc<ModelRepository>, server_name: impl Into<String>) -> Self {
        let infer = Infer::over(repository.clone());
        Self {
            repository,
            infer,
            server_name: server_name.into(),
            metrics: Default::default(),
            records: None,
            capturer: None,
            readiness: Readiness::default(),
        }
    }

    /// Answers ServerReady from `readiness` (the server host's, which turns not ready when it
    /// drains).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Captures ModelInfer items for retraining through `capturer` (its policy decides which;
    /// every item going to a person), each as a request of its own ([`crate::capture`]); their
    /// records name the captured object. Needs records (the prediction ids).
    pub fn with_capture(mut self, capturer: vigil_capture::Capturer) -> Self {
        self.capturer = Some(capturer);
        self
    }

    /// Routes and runs requests through `infer` (a custom router, shadows).
    pub fn with_infer(mut self, infer: Infer) -> Self {
        self.infer = infer.with_metrics(self.metrics.clone());
        self
    }

    /// Logs every ModelInfer prediction (one record per item; refused requests too) through `records`.
    pub fn with_records(mut self, records: RecordEmitter) -> Self {
        self.records = Some(records);
        self
    }

    /// Counts and times every ModelInfer request in `metrics`.
    pub fn with_metrics(mut self, metrics: ServingMetrics) -> Self {
        self.infer = self.infer.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// The version a metadata call describes: the one it names, else the one answering requests
    /// that name none (a deployment's primary, refused as those requests are when it is not
    /// loaded or not the registered artifact; the model's default version without one), so that
    /// a client sizing its requests from it sizes them for what answers, and ModelReady says
    /// whether they would be answered.
    fn described(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, Status> {
        match self.infer.primary(name) {
            Some(primary) if version.is_empty() => primary.map_err(to_status),
            _ => self.repository.get(name, version).map_err(to_status),
        }
    }

    /// Answers one inference request, reporting what answered it to `tally`; `deadline`: when
    /// the admission layer ends it.
    async fn infer(
        &self,
        request: ModelInferRequest,
        mut tally: Tally<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<ModelInferResponse, Status> {
        let result = self.infer_tallied(request, &mut tally, deadline).await;
        tally.finish(result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        result
    }

    async fn infer_tallied(
        &self,
        request: ModelInferRequest,
        tally: &mut Tally<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<ModelInferResponse, Status> {
        let request_time = std::time::SystemTime::now();
        let (trace_id, stage) = pipeline_parameters(&request)?;
        check_id("id", &request.id)?;
        let key = routing_key(&request);
        let route = self.infer.route(&request.model_name, &request.model_version, key).map_err(to_status)?;
        let model = route.primary.clone();
        tally.routed(&model.config, route.variant);
        let ctx = self.records.as_ref().map(|_| RequestContext {
            station_id: String::new(),
            part_id: String::new(),
            request_id: request.id.clone(),
            capture_time: None,
            request_time,
            model_name: model.config.name.clone(),
            api: "model_infer",
            variant: route.variant,
            deployment: route.deployment.clone(),
            trace_id: trace_id.unwrap_or_else(new_trace_id),
            stage,
        });
        let accounting = self.infer.accounting(&route, deadline);
        let recording = self.records.as_ref().zip(ctx.as_ref());
        let capturer = self.capturer.as_ref().filter(|_| recording.is_some());
        let unanswered = UntilAnswered::new(recording, model.config.version.to_string(), deadline);
        let result = infer_on(&self.infer, &route, request, recording, capturer).await;
        unanswered.answered();
        accounting.finish(&result);
        let Some((records, ctx)) = recording else { return result.map(|(response, _)| response) };
        match result {
            Ok((response, logged)) => {
                if let Some(logged) = logged {
                    logged.record(records, ctx, &model.config);
                }
                Ok(response)
            }
            Err(status) => {
                records.failed(ctx, &model.config.version.to_string(), uuid::Uuid::now_v7().to_string(), &status);
                Err(status)
            }
        }
    }
}

/// What a ModelInfer request's records need, gathered while it is answered.
struct Logged {
    items: Vec<InferredItem>,
    queue_time_us: u64,
    compute_time_us: u64,
}

impl Logged {
    /// One record per item, each with a new prediction id, from the outputs of the version
    /// `config` describes; `features`: each item's input summaries; `decisions`: each item's
    /// under the model's automation, and whether those going to a person are queued for review.
    fn of(
        config: &ModelConfig,
        features: Vec<Vec<vigil_proto::vigil::v1::Feature>>,
        out: &BatchOutput,
        decisions: Option<&[ItemDecision]>,
        review: Option<Policy>,
    ) -> Self {
        let values = scores_output(out).and_then(|t| t.to_f32().ok()).unwrap_or_default();
        let per = values.len() / features.len().max(1);
        let reviewers = config.thresholds.map_or(1, |t| t.reviewers);
        let items = features
            .into_iter()
            .enumerate()
            .map(|(i, features)| {
                let scores = values.get(i * per..(i + 1) * per).unwrap_or_default().to_vec();
                let (verdict, decision, reason) = decisions.and_then(|d| d.get(i).cloned()).unwrap_or_default();
                let review = reason.zip(review).map(|(reason, policy)| ReviewRequest {
                    policy: policy.as_str().into(),
                    reason,
                    show_suggestion: policy.shows_suggestion(),
                    content_type: "application/json".into(),
                    input: features_json(&features),
                    reviewers,
                });
                InferredItem {
                    prediction_id: uuid::Uuid::now_v7().to_string(),
                    label: label_of(config, &scores),
                    features,
                    scores,
                    verdict: verdict as i32,
                    decision: decision as i32,
                    review,
                    capture: String::new(),
                }
            })
            .collect();
        Self {
            items,
            queue_time_us: out.queue_time.as_micros() as u64,
            compute_time_us: out.compute_time.as_micros() as u64,
        }
    }

    /// Captures the items `capturer` wants (each one going to a person, a sample of the rest,
    /// at least `min_rate` of them), naming the captured object in each item's record.
    fn capture(&mut self, capturer: &vigil_capture::Capturer, config: &ModelConfig, inputs: &[Tensor], min_rate: f64) {
        let (model, version, items) = (&config.name, config.version.to_string(), self.items.len());
        for (i, item) in self.items.iter_mut().enumerate() {
            let probe = vigil_capture::Input {
                model,
                version: &version,
                prediction_id: &item.prediction_id,
                station_id: "",
                device_id: "",
                content_type: crate::capture::CONTENT_TYPE,
                bytes: &[],
                review: item.review.is_some(),
                min_rate,
            };
            if !capturer.wants(&probe) {
                continue;
            }
            let Some(bytes) = crate::capture::item_request(config, inputs, i, items) else { continue };
            item.capture = capturer.capture(vigil_capture::Input { bytes: &bytes, ..probe }).unwrap_or_default();
        }
    }

    fn record(self, records: &RecordEmitter, ctx: &RequestContext, config: &ModelConfig) {
        let version = config.version.to_string();
        records.inferred(ctx, &version, &config.labels, self.items, self.queue_time_us, self.compute_time_us);
    }
}

/// One item's verdict and decision under its model's automation, and why it goes to a person.
type ItemDecision = (Verdict, Decision, Option<String>);

/// Each item's decision, for a model with thresholds whose scores give its positive class (one
/// score, or the second of two); None for other models.
fn decide_items(config: &ModelConfig, automation: Automation, out: &BatchOutput) -> Option<Vec<ItemDecision>> {
    let thresholds = config.thresholds?;
    let scores = scores_output(out)?;
    let items = if config.max_batch_size > 0 { *scores.shape.first()? as usize } else { 1 };
    let values = scores.to_f32().ok()?;
    let per = values.len() / items.max(1);
    if !(1..=2).contains(&per) {
        return None;
    }
    Some(values.chunks_exact(per).map(|item| automation.decide(item[per - 1], &thresholds)).collect())
}

/// A decision's name in responses: `accept`, `reject`, `human_review` (empty: none).
fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Accept => "accept",
        Decision::Reject => "reject",
        Decision::HumanReview => "human_review",
        Decision::Unspecified => "",
    }
}

/// The response parameter that carries each item's decision, comma-separated (`accept`,
/// `reject`, `human_review`), for models with thresholds.
pub const DECISIONS_PARAMETER: &str = "decisions";

/// An item's input features as a JSON object (name -> value, null when missing), for a reviewer.
fn features_json(features: &[vigil_proto::vigil::v1::Feature]) -> Vec<u8> {
    let object: serde_json::Map<String, serde_json::Value> = features
        .iter()
        .map(|f| {
            let value = if f.missing { serde_json::Value::Null } else { serde_json::json!(f.value) };
            (f.name.clone(), value)
        })
        .collect();
    serde_json::to_vec(&object).expect("features serialise")
}

/// The output logged as an item's scores: the model's first FP32 output (a classifier exported
/// by skl2onnx puts its label first and its probabilities second).
fn scores_output(out: &BatchOutput) -> Option<&Tensor> {
    out.outputs.iter().find(|t| t.datatype == DataType::Fp32)
}

/// Logs each shadow's answer to the same inputs: one `SHADOW` record per item, with the
/// request's trace id.
fn shadow_recorder(
    records: RecordEmitter,
    ctx: RequestContext,
    features: Vec<Vec<vigil_proto::vigil::v1::Feature>>,
    band: Option<(f32, f32)>,
) -> ShadowObserver {
    Arc::new(move |run: ShadowRun| {
        let config = &run.model.config;
        let mut ctx = ctx.clone();
        ctx.deployment = run.deployment.clone();
        match run.result {
            // A shadow's decisions are logged as the model alone would decide, never queued.
            Ok(out) => {
                let decisions = decide_items(config, Automation { policy: Policy::Partial, band }, &out);
                Logged::of(config, features.clone(), &out, decisions.as_deref(), None).record(&records, &ctx, config)
            }
            Err(e) => {
                records.failed(&ctx, &config.version.to_string(), uuid::Uuid::now_v7().to_string(), &to_status(e))
            }
        }
    })
}

/// The request parameter that keeps one caller (a station, user or session id) on one version
/// under a canary deployment.
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";

fn routing_key(request: &ModelInferRequest) -> &str {
    string_parameter(request, ROUTING_KEY_PARAMETER).unwrap_or_default()
}

fn string_parameter<'a>(request: &'a ModelInferRequest, name: &str) -> Option<&'a str> {
    match request.parameters.get(name).and_then(|p| p.parameter_choice.as_ref()) {
        Some(infer_parameter::ParameterChoice::StringParam(value)) => Some(value),
        _ => None,
    }
}

/// The request parameter that joins the records of one pipeline run (e.g. a user profile model,
/// then a recommender fed its answer): the same trace id on every call. Default: a new one.
pub const TRACE_ID_PARAMETER: &str = "trace_id";
/// The request parameter naming the pipeline step a call is (e.g. `profile`, `recommend`),
/// logged as the records' stage.
pub const STAGE_PARAMETER: &str = "stage";
/// Longest trace id and stage name taken.
pub const MAX_PIPELINE_PARAMETER_CHARS: usize = 64;

/// The request's trace id and stage: short, printable, checked.
fn pipeline_parameters(request: &ModelInferRequest) -> Result<(Option<String>, String), Status> {
    let check = |name: &str| -> Result<Option<String>, Status> {
        let Some(value) = request.parameters.get(name) else { return Ok(None) };
        match &value.parameter_choice {
            Some(infer_parameter::ParameterChoice::StringParam(v))
                if !v.is_empty()
                    && v.len() <= MAX_PIPELINE_PARAMETER_CHARS
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
            {
                Ok(Some(v.clone()))
            }
            _ => Err(Status::invalid_argument(format!(
                "parameter '{name}' must be a string of 1 to {MAX_PIPELINE_PARAMETER_CHARS} letters, digits, '-', '_', \
                 '.' or ':'"
            ))),
        }
    };
    Ok((check(TRACE_ID_PARAMETER)?, check(STAGE_PARAMETER)?.unwrap_or_default()))
}

/// The response parameter that carries the prediction ids, comma-separated, one per item (for
/// labels and feedback sent later).
pub const PREDICTION_IDS_PARAMETER: &str = "prediction_ids";

async fn infer_on(
    infer: &Infer,
    route: &Route,
    mut request: ModelInferRequest,
    recording: Option<(&RecordEmitter, &RequestContext)>,
    capturer: Option<&vigil_capture::Capturer>,
) -> Result<(ModelInferResponse, Option<Logged>), Status> {
    let config = &route.primary.config;
    let requested = requested_outputs(config, &request)?;
    let inputs = decode_inputs(config, &mut request)?;
    // Which items are captured is known once they have prediction ids: the inputs are kept
    // until then (views of the same bytes, only while capture is on).
    let kept = capturer.map(|_| inputs.clone());
    let summaries = recording.map(|_| {
        let named: Vec<(&TensorSpec, &Tensor)> = config.inputs.iter().zip(inputs.iter()).collect();
        crate::records::summarise_inputs(&named, config.max_batch_size > 0)
    });
    let on_shadow = match (recording, &summaries) {
        (Some((records, ctx)), Some(features)) if !route.shadows.is_empty() => {
            Some(shadow_recorder(records.clone(), ctx.for_shadow(), features.clone(), route.automation.band))
        }
        _ => None,
    };
    let out = infer.run(route, inputs, on_shadow).await.map_err(to_status)?.output;
    let mut response = ModelInferResponse {
        model_name: config.name.clone(),
        model_version: config.version.to_string(),
        id: request.id,
        ..Default::default()
    };
    let decisions = decide_items(config, route.automation, &out);
    if let Some(decisions) = &decisions {
        let names: Vec<&str> = decisions.iter().map(|(_, d, _)| decision_name(*d)).collect();
        response.parameters.insert(
            DECISIONS_PARAMETER.into(),
            InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(names.join(","))) },
        );
    }
    let policy = Some(route.automation.policy);
    let mut logged = summaries.map(|features| Logged::of(config, features, &out, decisions.as_deref(), policy));
    if let (Some(capturer), Some(inputs), Some(logged)) = (capturer, kept, logged.as_mut()) {
        logged.capture(capturer, config, &inputs, route.capture_rate);
    }
    if let Some(logged) = &logged {
        let ids: Vec<&str> = logged.items.iter().map(|i| i.prediction_id.as_str()).collect();
        response.parameters.insert(
            PREDICTION_IDS_PARAMETER.into(),
            InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(ids.join(","))) },
        );
    }
    for (spec, tensor) in config.outputs.iter().zip(out.outputs) {
        if requested.as_ref().is_some_and(|names| !names.contains(&spec.name)) {
            continue;
        }
        response.outputs.push(InferOutputTensor {
            name: spec.name.clone(),
            datatype: tensor.datatype.as_str().to_string(),
            shape: tensor.shape,
            ..Default::default()
        });
        response.raw_output_contents.push(tensor.data);
    }
    Ok((response, logged))
}

/// The label of one item's scores: the model's label at the highest score when there is one
/// score per label, or by the defect threshold when there is a single score; else none.
fn label_of(config: &ModelConfig, scores: &[f32]) -> String {
    let labels = &config.labels;
    match (scores, &config.thresholds) {
        ([score], Some(t)) if labels.len() == 2 => labels[usize::from(*score >= t.defect)].clone(),
        (many, _) if many.len() == labels.len() && !many.is_empty() => many
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| labels[i].clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn requested_outputs(config: &ModelConfig, request: &ModelInferRequest) -> Result<Option<Vec<String>>, Status> {
    if request.outputs.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    for o in &request.outputs {
        if !config.outputs.iter().any(|s| s.name == o.name) {
            return Err(Status::invalid_argument(format!(
                "requested output '{}' is not an output of model '{}' (outputs: {})",
                o.name,
                config.name,
                spec_names(&config.outputs)
            )));
        }
        names.push(o.name.clone());
    }
    Ok(Some(names))
}

fn spec_names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Checks every input against the model's metadata and returns them in the model's order.
/// Raw contents are moved out of the request, not copied: views of the message it was decoded from.
pub fn decode_inputs(config: &ModelConfig, request: &mut ModelInferRequest) -> Result<Vec<Tensor>, Status> {
    for (i, input) in request.inputs.iter().enumerate() {
        if !config.inputs.iter().any(|s| s.name == input.name) {
            return Err(Status::invalid_argument(format!(
                "unknown input '{}'; model '{}' takes: {}",
                input.name,
                config.name,
                spec_names(&config.inputs)
            )));
        }
        if request.inputs[..i].iter().any(|earlier| earlier.name == input.name) {
            return Err(Status::invalid_argument(format!("input '{}' is given twice", input.name)));
        }
    }
    let raw = !request.raw_input_contents.is_empty();
    if raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(Status::invalid_argument(format!(
            "raw_input_contents has {} entries but the request has {} inputs; send one per input, in order",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut raw_contents = std::mem::take(&mut request.raw_input_contents);
    let mut batch: Option<i64> = None;
    let mut tensors = Vec::with_capacity(config.inputs.len());
    for spec in &config.inputs {
        let (index, input) = request
            .inputs
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == spec.name)
            .ok_or_else(|| Status::invalid_argument(format!("input '{}' is missing", spec.name)))?;
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            Status::invalid_argument(format!("input '{}': unknown datatype '{}'", spec.name, input.datatype))
        })?;
        if datatype != spec.datatype {
            return Err(Status::invalid_argument(format!(
                "input '{}': datatype {} does not match the model's {}",
                spec.name, datatype, spec.datatype
            )));
        }
        check_shape(config, spec, &input.shape)?;
        if config.max_batch_size > 0 {
            match batch {
                Some(b) if b != input.shape[0] => {
                    return Err(Status::invalid_argument(format!(
                        "input '{}': batch size {} differs from the other inputs' {b}",
                        spec.name, input.shape[0]
                    )));
                }
                _ => batch = Some(input.shape[0]),
            }
        }
        if spec.datatype == DataType::Bytes && element_count(&input.shape) > MAX_TEXT_ELEMENTS {
            return Err(Status::invalid_argument(format!(
                "input '{}': shape {:?} holds {} BYTES elements; a request may hold at most {MAX_TEXT_ELEMENTS} \
                 per input: send fewer texts per request",
                spec.name,
                input.shape,
                element_count(&input.shape)
            )));
        }
        let data = if raw {
            if input.contents.as_ref().is_some_and(has_values) {
                return Err(Status::invalid_argument(format!(
                    "input '{}' has both raw_input_contents and typed contents; use one",
                    spec.name
                )));
            }
            std::mem::take(&mut raw_contents[index])
        } else {
            typed_bytes(spec, input)?.into()
        };
        let Some(element_size) = spec.datatype.element_size() else {
            let tensor = Tensor { datatype, shape: input.shape.clone(), data };
            check_texts(&tensor).map_err(|e| Status::invalid_argument(format!("input '{}': {e}", spec.name)))?;
            tensors.push(tensor);
            continue;
        };
        let expected = element_count(&input.shape).saturating_mul(element_size);
        if data.len() != expected {
            return Err(Status::invalid_argument(format!(
                "input '{}': {} bytes of contents, but shape {:?} of {} needs {expected}",
                spec.name,
                data.len(),
                input.shape,
                spec.datatype
            )));
        }
        tensors.push(Tensor { datatype, shape: input.shape.clone(), data });
    }
    Ok(tensors)
}

/// The most elements a `BYTES` input of one request may hold. Each costs about a hundred bytes
/// of memory on its way to ONNX Runtime (the texts' views and checks, ONNX Runtime's own
/// strings) for as little as 4 on the wire, beyond what the memory budget charges a message: this
/// keeps that within a few MiB a request.
pub const MAX_TEXT_ELEMENTS: usize = 65_536;

/// A `BYTES` input must hold as many elements as its shape says, each UTF-8 text without NUL
/// characters (what ONNX string tensors take): checked per request so that one bad request
/// cannot fail a batch it shares with others.
fn check_texts(tensor: &Tensor) -> Result<(), InferenceError> {
    let texts = tensor.texts()?;
    match texts.iter().position(|t| t.contains('\0')) {
        Some(i) => Err(InferenceError::InvalidInput(format!("BYTES element {i} contains a NUL character"))),
        None => Ok(()),
    }
}

fn check_shape(config: &ModelConfig, spec: &TensorSpec, shape: &[i64]) -> Result<(), Status> {
    let mut expected: Vec<i64> = Vec::with_capacity(spec.dims.len() + 1);
    if config.max_batch_size > 0 {
        expected.push(-1);
    }
    expected.extend(&spec.dims);
    let dims_ok = shape.len() == expected.len()
        && shape.iter().zip(&expected).all(|(&got, &want)| got > 0 && (want < 0 || got == want));
    if !dims_ok {
        return Err(Status::invalid_argument(format!(
            "input '{}': shape {shape:?} does not match the model's {expected:?} (-1: any size)",
            spec.name
        )));
    }
    if config.max_batch_size > 0 && shape[0] as usize > config.max_batch_size {
        return Err(Status::invalid_argument(format!(
            "input '{}': batch size {} exceeds the model's max_batch_size {}",
            spec.name, shape[0], config.max_batch_size
        )));
    }
    Ok(())
}

fn has_values(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Little-endian bytes of the typed contents field matching the datatype.
fn typed_bytes(spec: &TensorSpec, input: &InferInputTensor) -> Result<Vec<u8>, Status> {
    let empty = InferTensorContents::default();
    let c = input.contents.as_ref().unwrap_or(&empty);
    let wrong_field = |field: &str| {
        Status::invalid_argument(format!(
            "input '{}': {} values belong in contents.{field} (or raw_input_contents)",
            spec.name, spec.datatype
        ))
    };
    let bytes: Vec<u8> = match spec.datatype {
        DataType::Fp32 => c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Fp64 => c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Int64 => c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Int32 => c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Int16 => narrowed::<_, i16>(spec, &c.int_contents)?.into_iter().flat_map(i16::to_le_bytes).collect(),
        DataType::Int8 => narrowed::<_, i8>(spec, &c.int_contents)?.into_iter().flat_map(i8::to_le_bytes).collect(),
        DataType::Uint64 => c.uint64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Uint32 => c.uint_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Uint16 => {
            narrowed::<_, u16>(spec, &c.uint_contents)?.into_iter().flat_map(u16::to_le_bytes).collect()
        }
        DataType::Uint8 => narrowed::<_, u8>(spec, &c.uint_contents)?,
        DataType::Bool => c.bool_contents.iter().map(|v| *v as u8).collect(),
        DataType::Bytes => vigil_inference::tensor::serialize_bytes_elements(&c.bytes_contents),
        other => {
            return Err(Status::invalid_argument(format!("input '{}': datatype {other} is not supported", spec.name)));
        }
    };
    if bytes.is_empty() && element_count(&input.shape) > 0 && has_values(c) {
        let field = match spec.datatype {
            DataType::Fp32 => "fp32_contents",
            DataType::Fp64 => "fp64_contents",
            DataType::Int64 => "int64_contents",
            DataType::Int32 | DataType::Int16 | DataType::Int8 => "int_contents",
            DataType::Uint64 => "uint64_contents",
            DataType::Uint32 | DataType::Uint16 | DataType::Uint8 => "uint_contents",
            DataType::Bytes => "bytes_contents",
            _ => "bool_contents",
        };
        return Err(wrong_field(field));
    }
    Ok(bytes)
}

/// `values` (the 32-bit typed contents field) as the input's narrower type: a value it cannot
/// hold is refused, naming it and its place, never wrapped into another.
fn narrowed<W, N>(spec: &TensorSpec, values: &[W]) -> Result<Vec<N>, Status>
where
    W: Copy + std::fmt::Display,
    N: TryFrom<W>,
{
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            N::try_from(v).map_err(|_| {
                Status::invalid_argument(format!(
                    "input '{}': element {i} is {v}, out of {}'s range",
                    spec.name, spec.datatype
                ))
            })
        })
        .collect()
}

fn tensor_metadata(config: &ModelConfig, specs: &[TensorSpec]) -> Vec<model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| {
            let mut shape = Vec::with_capacity(s.dims.len() + 1);
            if config.max_batch_size > 0 {
                shape.push(-1);
            }
            shape.extend(&s.dims);
            model_metadata_response::TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.as_str().into(),
                shape,
            }
        })
        .collect()
}

/// Triton's model configuration for a model.
pub fn triton_config(config: &ModelConfig) -> vigil_proto::inference::ModelConfig {
    let input = config
        .inputs
        .iter()
        .map(|s| ModelInput {
            name: s.name.clone(),
            data_type: s.datatype.triton_type(),
            dims: s.dims.clone(),
            ..Default::default()
        })
        .collect();
    let output = config
        .outputs
        .iter()
        .map(|s| ModelOutput {
            name: s.name.clone(),
            data_type: s.datatype.triton_type(),
            dims: s.dims.clone(),
            ..Default::default()
        })
        .collect();
    let scheduling_choice = config.dynamic_batching.map(|b| {
        model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
            max_queue_delay_microseconds: b.max_queue_delay_us,
            preferred_batch_size: vec![b.max_batch_size as i32],
            default_queue_policy: Some(ModelQueuePolicy {
                max_queue_size: b.max_queue_depth as u32,
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    vigil_proto::inference::ModelConfig {
        name: config.name.clone(),
        platform: config.platform.clone(),
        backend: "onnxruntime".into(),
        max_batch_size: config.max_batch_size as i32,
        input,
        output,
        instance_group: vec![ModelInstanceGroup {
            name: format!("{}_cpu", config.name),
            kind: model_instance_group::Kind::Cpu as i32,
            count: config.instances as i32,
            ..Default::default()
        }],
        default_model_filename: "model.onnx".into(),
        scheduling_choice,
        parameters: config_parameters(config),
        ..Default::default()
    }
}

/// The parameter naming a tabular input's columns: `features.<input>` = a JSON array of names.
pub fn feature_parameter_key(input: &str) -> String {
    format!("features.{input}")
}

/// The parameter carrying the model's class names, index-aligned with its scores: a JSON array.
pub const LABELS_PARAMETER: &str = "labels";

/// Vigil's own model settings a client may need, as Triton config parameters: the columns of
/// tabular inputs and the class names.
fn config_parameters(
    config: &ModelConfig,
) -> std::collections::HashMap<String, vigil_proto::inference::ModelParameter> {
    let json = |names: &[String]| vigil_proto::inference::ModelParameter {
        string_value: serde_json::to_string(names).expect("names serialise"),
    };
    let mut parameters: std::collections::HashMap<_, _> = config
        .inputs
        .iter()
        .filter_map(|s| Some((feature_parameter_key(&s.name), json(s.features.as_ref()?))))
        .collect();
    if !config.labels.is_empty() {
        parameters.insert(LABELS_PARAMETER.into(), json(&config.labels));
    }
    parameters
}

fn statistics(name: &str, version: u64, model: &LoadedModel) -> ModelStatistics {
    let s = &model.stats;
    let dur = |d: &vigil_inference::stats::Duration64| {
        let (count, ns) = d.get();
        Some(StatisticDuration { count, ns })
    };
    let batch_stats = s
        .batches
        .lock()
        .iter()
        .map(|(&size, &(count, ns))| InferBatchStatistics {
            batch_size: size as u64,
            compute_infer: Some(StatisticDuration { count, ns }),
            ..Default::default()
        })
        .collect();
    ModelStatistics {
        name: name.into(),
        version: version.to_string(),
        last_inference: s.last_inference_ms.load(Ordering::Relaxed),
        inference_count: s.inference_count.load(Ordering::Relaxed),
        execution_count: s.execution_count.load(Ordering::Relaxed),
        inference_stats: Some(InferStatistics {
            success: dur(&s.success),
            fail: dur(&s.fail),
            queue: dur(&s.queue),
            compute_infer: dur(&s.compute_infer),
            ..Default::default()
        }),
        batch_stats,
        ..Default::default()
    }
}

type InferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.readiness.is_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.described(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: self.server_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.described(&r.name, &r.version)?;
        let entry = self.repository.entry(&r.name).map_err(to_status)?;
        let c = &model.config;
        Ok(Response::new(ModelMetadataResponse {
            name: c.name.clone(),
            versions: entry.versions.keys().map(|v| v.to_string()).collect(),
            platform: c.platform.clone(),
            inputs: tensor_metadata(c, &c.inputs),
            outputs: tensor_metadata(c, &c.outputs),
        }))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let model = self.described(&r.name, &r.version)?;
        Ok(Response::new(ModelConfigResponse { config: Some(triton_config(&model.config)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model_stats = if r.name.is_empty() || r.version.is_empty() {
            // Every version loaded (of the model named), as Triton answers.
            let entries = if r.name.is_empty() {
                self.repository.models()
            } else {
                vec![self.repository.entry(&r.name).map_err(to_status)?]
            };
            entries
                .iter()
                .flat_map(|entry| {
                    entry.versions.iter().map(|(&version, model)| statistics(&entry.name, version, model))
                })
                .collect()
        } else {
            let model = self.repository.get(&r.name, &r.version).map_err(to_status)?;
            vec![statistics(&model.config.name, model.config.version, &model)]
        };
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let tally = Tally::Call(ServedBy::of(&request));
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        self.infer(request.into_inner(), tally, deadline).await.map(Response::new)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let service = self.clone();
        let charges = held_until_answered(&request);
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        let incoming = request.into_inner();
        // Up to 16 requests of one stream run at once; responses keep request order. Each
        // stays charged against the memory budget until its answer is ready.
        let responses = incoming
            .map(move |item| {
                let service = service.clone();
                let charge = charges.take();
                async move {
                    let _charge = charge;
                    let request = match item {
                        Ok(r) => r,
                        Err(status) => return Err(status),
                    };
                    let id = request.id.clone();
                    let tally = Tally::Item(service.metrics.start(Api::ModelInfer, deadline));
                    Ok(match service.infer(request, tally, deadline).await {
                        Ok(r) => ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) },
                        Err(status) => ModelStreamInferResponse {
                            error_message: status.message().to_string(),
                            infer_response: Some(ModelInferResponse { id, ..Default::default() }),
                        },
                    })
                }
            })
            .buffered(16);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        self.check_repository_name(&r.repository_name)?;
        let models = self
            .repository
            .index()
            .into_iter()
            .filter(|row| !r.ready || row.state == VersionState::Ready)
            .map(|row| {
                let (state, reason) = match row.state {
                    VersionState::Ready => ("READY", String::new()),
                    VersionState::Unavailable(reason) => ("UNAVAILABLE", reason),
                };
                repository_index_response::ModelIndex {
                    name: row.name,
                    version: row.version.map(|v| v.to_string()).unwrap_or_default(),
                    state: state.into(),
                    reason,
                }
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let caller = caller_name(&request);
        let r = request.into_inner();
        self.check_repository_name(&r.repository_name)?;
        if let Some(key) = r.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "load parameter '{key}' is not supported: put the model's files in the repository, then load it by name"
            )));
        }
        let repository = self.repository.clone();
        let name = r.model_name.clone();
        let loaded = tokio::task::spawn_blocking(move || repository.load_model(&name))
            .await
            .map_err(|e| Status::internal(format!("loading '{}' panicked: {e}", r.model_name)))?;
        loaded.map_err(|e| match e {
            InferenceError::NotFound(message) => Status::not_found(message),
            InferenceError::InvalidInput(message) => Status::invalid_argument(message),
            other => Status::internal(format!(
                "failed to load '{}': {other}; the versions that were serving still serve",
                r.model_name
            )),
        })?;
        tracing::info!(target: "vigil::audit", action = "model load", model = %r.model_name, by = %caller, "model loaded");
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let caller = caller_name(&request);
        let r = request.into_inner();
        self.check_repository_name(&r.repository_name)?;
        if let Some(key) = r.parameters.keys().find(|k| k.as_str() != "unload_dependents") {
            return Err(Status::invalid_argument(format!("unload parameter '{key}' is not supported")));
        }
        // Waits for a load of the same repository in progress (it holds the repository's change
        // lock while sessions build): on a blocking thread, not a network one.
        let (repository, name) = (self.repository.clone(), r.model_name.clone());
        let removed = tokio::task::spawn_blocking(move || repository.unload_model(&name))
            .await
            .map_err(|e| Status::internal(format!("unloading '{}' panicked: {e}", r.model_name)))?
            .map_err(to_status)?;
        tracing::info!(target: "vigil::audit", action = "model unload", model = %r.model_name, by = %caller, "model unloaded");
        // New requests already get NOT_FOUND; answer once the requests in flight are done.
        if !wait_until_idle(removed, UNLOAD_WAIT).await {
            tracing::warn!(model = %r.model_name, "unloaded with requests still running after {UNLOAD_WAIT:?}");
        }
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

/// Who made a call, as its token says (`anonymous` when the server checks no tokens), for the
/// audit trail of changes to what is served.
fn caller_name<T>(request: &Request<T>) -> String {
    request.extensions().get::<vigil_security::Caller>().map_or_else(|| "anonymous".to_string(), |c| c.name.clone())
}

/// How long an unload waits for the unloaded model's requests in flight before answering.
pub const UNLOAD_WAIT: Duration = Duration::from_secs(30);

impl InferenceService {
    /// Repository calls name the one repository this server has: empty, its path, or its name.
    fn check_repository_name(&self, name: &str) -> Result<(), Status> {
        let root = self.repository.root();
        let matches =
            name.is_empty() || Path::new(name) == root || root.file_name().is_some_and(|n| n.to_string_lossy() == name);
        if matches {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown repository '{name}'; this server has {}", root.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message;

    #[test]
    fn raw_contents_reach_the_tensor_as_views_of_the_received_message() {
        let config: ModelConfig = toml::from_str(
            "name = \"m\"\nversion = 1\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = 4\n\
             [[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3]\n\
             [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n",
        )
        .unwrap();
        let values: Vec<u8> = [1.5f32, -2.0, 3.25, 4.0, 5.0, 6.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let sent = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2, 3],
                ..Default::default()
            }],
            raw_input_contents: vec![values.clone().into()],
            ..Default::default()
        };
        // The message as the server receives it: one buffer, decoded as tonic decodes it.
        let received = Bytes::from(sent.encode_to_vec());
        let mut request = ModelInferRequest::decode(received.clone()).unwrap();
        let tensors = decode_inputs(&config, &mut request).unwrap();
        assert_eq!(&tensors[0].data[..], &values[..]);
        let within = received.as_ptr_range();
        let data = tensors[0].data.as_ptr_range();
        assert!(
            within.start <= data.start && data.end <= within.end,
            "the tensor's bytes were copied out of the received message"
        );
    }

    /// A BYTES input of more elements than a request may hold is refused from its shape, before
    /// its contents are read; one at the limit is read.
    #[test]
    fn bytes_inputs_past_the_element_limit_are_refused_from_their_shape() {
        let config: ModelConfig = toml::from_str(
            "name = \"m\"\nversion = 1\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = 0\n\
             [[inputs]]\nname = \"text\"\ndatatype = \"BYTES\"\ndims = [-1]\n\
             [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n",
        )
        .unwrap();
        let request = |n: usize| ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![n as i64],
                ..Default::default()
            }],
            // Every element an empty text: a 4-byte length of 0.
            raw_input_contents: vec![vec![0u8; 4 * n].into()],
            ..Default::default()
        };
        let at_limit = decode_inputs(&config, &mut request(MAX_TEXT_ELEMENTS)).unwrap();
        assert_eq!(at_limit[0].texts().unwrap().len(), MAX_TEXT_ELEMENTS);
        let refused = decode_inputs(&config, &mut request(MAX_TEXT_ELEMENTS + 1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("at most 65536 per input"), "{refused:?}");
    }

    /// Narrow integer types come in the 32-bit typed fields: each value within the type's
    /// range is its bytes; one outside it is refused, never wrapped (256 as a UINT8 would be 0).
    #[test]
    fn typed_narrow_integers_are_checked_against_their_range() {
        let model = |datatype: &str| -> ModelConfig {
            toml::from_str(&format!(
                "name = \"m\"\nversion = 1\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = 4\n\
                 [[inputs]]\nname = \"x\"\ndatatype = \"{datatype}\"\ndims = [3]\n\
                 [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n"
            ))
            .unwrap()
        };
        let request = |datatype: &str, contents: InferTensorContents| ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: datatype.into(),
                shape: vec![1, 3],
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ints = |v: &[i32]| InferTensorContents { int_contents: v.to_vec(), ..Default::default() };
        let uints = |v: &[u32]| InferTensorContents { uint_contents: v.to_vec(), ..Default::default() };
        let le =
            |v: &[i64], width: usize| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()[..width].to_vec()).collect() };
        let cases = [
            ("INT8", ints(&[-128, 0, 127]), le(&[-128, 0, 127], 1), ints(&[0, 128, 1]), "element 1 is 128"),
            (
                "INT16",
                ints(&[-32768, 5, 32767]),
                le(&[-32768, 5, 32767], 2),
                ints(&[-32769, 0, 0]),
                "element 0 is -32769",
            ),
            ("UINT8", uints(&[0, 7, 255]), le(&[0, 7, 255], 1), uints(&[1, 2, 256]), "element 2 is 256"),
            ("UINT16", uints(&[0, 300, 65535]), le(&[0, 300, 65535], 2), uints(&[65536, 0, 0]), "element 0 is 65536"),
        ];
        for (datatype, within, bytes, outside, why) in cases {
            let config = model(datatype);
            let tensors = decode_inputs(&config, &mut request(datatype, within)).unwrap();
            assert_eq!(&tensors[0].data[..], &bytes[..], "{datatype}");
            let refused = decode_inputs(&config, &mut request(datatype, outside)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{datatype}: {refused:?}");
            assert!(refused.message().contains(why) && refused.message().contains("range"), "{datatype}: {refused:?}");
        }
    }
}
