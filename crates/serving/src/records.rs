//! Turns every prediction into a `PredictionRecord` and hands it to the emitter, off the
//! request's critical path (a full queue drops and counts; the answer never waits).

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use vigil_logbus::{Emitter, Envelope, topics};

use crate::log_policy::LogPolicy;
use vigil_proto::vigil::v1::{
    ClassScore, Feature, InspectResponse, PredictionOutput, PredictionRecord, RecordStatus, ReviewRequest, Variant,
};

/// The scores by class name: index-aligned with `labels`, or, for a binary model with one score
/// (the last label's), both classes; empty when the labels do not name the scores.
pub fn class_scores(labels: &[String], scores: &[f32]) -> Vec<ClassScore> {
    match (labels, scores) {
        ([negative, positive], [score]) => vec![
            ClassScore { name: negative.clone(), score: 1.0 - score },
            ClassScore { name: positive.clone(), score: *score },
        ],
        _ if labels.len() == scores.len() => {
            labels.iter().zip(scores).map(|(name, &score)| ClassScore { name: name.clone(), score }).collect()
        }
        _ => Vec::new(),
    }
}

/// Schema version written into every record body.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a server's prediction records go.
#[derive(Clone)]
pub struct RecordEmitter {
    emitter: Emitter,
    server_id: String,
    policy: Arc<LogPolicy>,
    /// Cancelled when the server ends the calls it stopped waiting for at the end of its drain.
    closing: tokio_util::sync::CancellationToken,
}

/// What a request was, for its records.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub station_id: String,
    pub part_id: String,
    pub request_id: String,
    pub capture_time: Option<prost_types::Timestamp>,
    pub request_time: SystemTime,
    pub model_name: String,
    /// The API that answered: `inspect`, `model_infer`.
    pub api: &'static str,
    /// What the version that answered is in its deployment, and the deployment (from the route).
    pub variant: Variant,
    pub deployment: String,
    /// Shared by every record of the request: the primary's and its shadows'.
    pub trace_id: String,
    /// The pipeline step the request is (e.g. `profile`); empty for a single-model request.
    pub stage: String,
}

impl RequestContext {
    /// The same request as seen by a shadow version: same trace id, variant `SHADOW`.
    pub fn for_shadow(&self) -> Self {
        Self { variant: Variant::Shadow, ..self.clone() }
    }
}

/// A new trace id (UUIDv7, time-ordered).
pub fn new_trace_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One item of a ModelInfer request, for its record.
pub struct InferredItem {
    pub prediction_id: String,
    /// Summaries of the item's inputs (see [`summarise_inputs`]).
    pub features: Vec<Feature>,
    /// The item's values of the model's first FP32 output.
    pub scores: Vec<f32>,
    pub label: String,
    /// Under a model with thresholds: its verdict and decision (`vigil.v1` enum values; 0 without).
    pub verdict: i32,
    pub decision: i32,
    /// When the item goes to a person.
    pub review: Option<ReviewRequest>,
    /// The captured input's object key (empty: not captured).
    pub capture: String,
}

impl RecordEmitter {
    /// Records from this server carry `server_id`.
    pub fn new(emitter: Emitter, server_id: impl Into<String>) -> Self {
        Self {
            emitter,
            server_id: server_id.into(),
            policy: Arc::new(LogPolicy::default()),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Requests dropped unanswered once `closing` is cancelled (the server ended them at the
    /// end of its drain) are logged as the version's failures (UNAVAILABLE).
    pub fn with_closing(self, closing: tokio_util::sync::CancellationToken) -> Self {
        Self { closing, ..self }
    }

    /// Records pass `policy` (what each model's records may carry) before they leave.
    pub fn with_policy(self, policy: LogPolicy) -> Self {
        Self { policy: Arc::new(policy), ..self }
    }

    /// The emitter's counters.
    pub fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// Records an answered inspection; `review` when the item goes to a person.
    pub fn inspected(
        &self,
        ctx: &RequestContext,
        r: &InspectResponse,
        label: &str,
        labels: &[String],
        review: Option<ReviewRequest>,
        capture: String,
    ) {
        let consulted = r.verdict != vigil_proto::vigil::v1::Verdict::Unspecified as i32;
        let features = r
            .features
            .as_ref()
            .map(|f| {
                vec![
                    feature("brightness", f.brightness),
                    feature("contrast", f.contrast),
                    feature("sharpness", f.sharpness),
                    feature("width", f.width as f64),
                    feature("height", f.height as f64),
                ]
            })
            .unwrap_or_default();
        let record = PredictionRecord {
            prediction_id: r.prediction_id.clone(),
            model_name: r.model_name.clone(),
            model_version: r.model_version.clone(),
            features,
            // Without a verdict the model was not consulted (policy human_only): no scores.
            output: Some(PredictionOutput {
                label: label.to_string(),
                scores: if consulted { vec![r.defect_probability] } else { Vec::new() },
                is_null: false,
                verdict: r.verdict,
                class_scores: if consulted { class_scores(labels, &[r.defect_probability]) } else { Vec::new() },
                text: String::new(),
            }),
            decision: r.decision,
            queue_time_us: r.queue_time_us,
            compute_time_us: r.compute_time_us,
            status: RecordStatus::Ok as i32,
            review,
            capture,
            ..self.base(ctx)
        };
        self.send(record);
    }

    /// Records each item of an answered ModelInfer request.
    pub fn inferred(
        &self,
        ctx: &RequestContext,
        model_version: &str,
        labels: &[String],
        items: Vec<InferredItem>,
        queue_time_us: u64,
        compute_time_us: u64,
    ) {
        for item in items {
            let record = PredictionRecord {
                prediction_id: item.prediction_id,
                model_name: ctx.model_name.to_string(),
                model_version: model_version.to_string(),
                features: item.features,
                output: Some(PredictionOutput {
                    class_scores: class_scores(labels, &item.scores),
                    label: item.label,
                    scores: item.scores,
                    verdict: item.verdict,
                    ..Default::default()
                }),
                decision: item.decision,
                review: item.review,
                capture: item.capture,
                queue_time_us,
                compute_time_us,
                status: RecordStatus::Ok as i32,
                ..self.base(ctx)
            };
            self.send(record);
        }
    }

    /// Records a refused or failed request of `model_version` (empty when none was chosen):
    /// the input counts as missing.
    pub fn failed(&self, ctx: &RequestContext, model_version: &str, prediction_id: String, status: &tonic::Status) {
        let invalid = status.code() == tonic::Code::InvalidArgument;
        let input = if ctx.api == "inspect" { "image" } else { "inputs" };
        let record = PredictionRecord {
            prediction_id,
            model_name: ctx.model_name.to_string(),
            model_version: model_version.to_string(),
            features: vec![Feature { name: input.into(), missing: true, ..Default::default() }],
            output: Some(PredictionOutput { is_null: true, ..Default::default() }),
            status: if invalid { RecordStatus::InvalidInput } else { RecordStatus::Error } as i32,
            error: format!("{:?}: {}", status.code(), status.message()),
            ..self.base(ctx)
        };
        self.send(record);
    }

    /// Records a prediction of an API with its own outputs (e.g. a voice search's transcript):
    /// the context's fields (times, server, trace, station, request, variant, deployment, api)
    /// over `record`'s.
    pub fn record(&self, ctx: &RequestContext, record: PredictionRecord) {
        let base = self.base(ctx);
        let record = PredictionRecord {
            schema_version: base.schema_version,
            request_time: base.request_time,
            response_time: base.response_time,
            capture_time: base.capture_time,
            server_id: base.server_id,
            trace_id: base.trace_id,
            station_id: base.station_id,
            part_id: base.part_id,
            request_id: base.request_id,
            variant: base.variant,
            deployment_id: base.deployment_id,
            api: base.api,
            ..record
        };
        self.send(record);
    }

    /// Logs what a user did after a prediction, keyed by the prediction it follows.
    pub fn feedback(&self, event: &vigil_proto::vigil::v1::FeedbackEvent) {
        let mut event = event.clone();
        self.policy.apply_feedback(&mut event);
        self.emitter.emit(Envelope {
            topic: topics::FEEDBACK.to_string(),
            key: event.prediction_id.clone(),
            payload: event.encode_to_vec(),
        });
    }

    fn base(&self, ctx: &RequestContext) -> PredictionRecord {
        PredictionRecord {
            schema_version: SCHEMA_VERSION,
            request_time: Some(ctx.request_time.into()),
            response_time: Some(SystemTime::now().into()),
            capture_time: ctx.capture_time,
            server_id: self.server_id.clone(),
            trace_id: ctx.trace_id.clone(),
            station_id: ctx.station_id.clone(),
            part_id: ctx.part_id.clone(),
            request_id: ctx.request_id.clone(),
            variant: ctx.variant as i32,
            deployment_id: ctx.deployment.clone(),
            api: ctx.api.to_string(),
            stage: ctx.stage.clone(),
            ..Default::default()
        }
    }

    /// Sends `record` keyed by its station (as the policy logs it: hashed ids keep one
    /// station's records in one partition, in order).
    fn send(&self, record: PredictionRecord) {
        let mut record = record;
        if !self.policy.is_passthrough() {
            self.policy.apply(&mut record);
        }
        self.emitter.emit(Envelope {
            topic: topics::PREDICTIONS.to_string(),
            key: record.station_id.clone(),
            payload: record.encode_to_vec(),
        });
    }
}

fn feature(name: &str, value: f64) -> Feature {
    Feature { name: name.into(), value, missing: !value.is_finite(), category: String::new() }
}

/// Per-item summaries of a batch's inputs: for an input whose spec names its columns
/// (`features`), each column under its name (missing when NaN); else `<input>.mean`, `.std`,
/// `.min` and `.max` over each item's values for numeric tensors (NaN counts as missing); for
/// text (`BYTES`) inputs the text metrics of [`vigil_inference::text::text_metrics`] as
/// `<input>.chars`, `.words`, `.oov_share`, `.lang.<code>`; `<input>.bytes` for the others.
/// `batched`: the first dimension is the batch.
pub fn summarise_inputs(
    inputs: &[(&vigil_inference::config::TensorSpec, &vigil_inference::tensor::Tensor)],
    batched: bool,
) -> Vec<Vec<Feature>> {
    let items = |t: &vigil_inference::tensor::Tensor| {
        if batched { t.shape.first().copied().unwrap_or(1).max(1) as usize } else { 1 }
    };
    let n = inputs.first().map_or(0, |(_, t)| items(t));
    let mut per_item: Vec<Vec<Feature>> = vec![Vec::new(); n];
    for (spec, tensor) in inputs {
        let name = &spec.name;
        if let Ok(texts) = tensor.texts() {
            let per = texts.len() / n.max(1);
            for (i, features) in per_item.iter_mut().enumerate() {
                let text = texts.get(i * per..(i + 1) * per).unwrap_or_default().join("\n");
                let metrics = vigil_inference::text::text_metrics(&text, spec.text.as_ref());
                features.extend(metrics.into_iter().map(|(metric, value)| feature(&format!("{name}.{metric}"), value)));
            }
            continue;
        }
        // Read in place, a value at a time: a copy of the values as f64 would take up to eight
        // times the tensor's bytes, outside the memory budget the request was charged against.
        let reader = tensor.f64_reader();
        let chunk = tensor.data.len() / n.max(1);
        for (i, features) in per_item.iter_mut().enumerate() {
            match (reader, &spec.features) {
                (Some((width, read)), Some(columns)) if tensor.data.len() / width == n * columns.len() => {
                    let item = &tensor.data[i * columns.len() * width..(i + 1) * columns.len() * width];
                    features.extend(columns.iter().zip(item.chunks_exact(width)).map(|(c, v)| feature(c, read(v))));
                }
                (Some((width, read)), _) => {
                    let per = tensor.data.len() / width / n.max(1);
                    let item = &tensor.data[i * per * width..(i + 1) * per * width];
                    let finite = || item.chunks_exact(width).map(read).filter(|x| x.is_finite());
                    let count = finite().count() as f64;
                    let mean = finite().sum::<f64>() / count;
                    let std = (finite().map(|x| (x - mean).powi(2)).sum::<f64>() / count).sqrt();
                    let min = finite().fold(f64::INFINITY, f64::min);
                    let max = finite().fold(f64::NEG_INFINITY, f64::max);
                    for (stat, value) in [("mean", mean), ("std", std), ("min", min), ("max", max)] {
                        features.push(feature(&format!("{name}.{stat}"), value));
                    }
                }
                (None, _) => features.push(feature(&format!("{name}.bytes"), chunk as f64)),
            }
        }
    }
    per_item
}

/// A request's failure record, sent if the request is dropped unanswered once its deadline has
/// passed (the admission layer ends it there): a request timed out is the server's failure and
/// counts against the version that was too slow. The same when the server ended it at the end
/// of its drain (UNAVAILABLE). One the client left before its deadline gets no record: nobody
/// was answered. [`UntilAnswered::answered`] disarms it once the request's
/// own records are sent.
pub struct UntilAnswered<'a> {
    pending: Option<(&'a RecordEmitter, &'a RequestContext, String)>,
    deadline: Option<std::time::Instant>,
}

impl<'a> UntilAnswered<'a> {
    /// Armed for a request recorded through `recording`, answered by `version`.
    pub fn new(
        recording: Option<(&'a RecordEmitter, &'a RequestContext)>,
        version: String,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        Self { pending: recording.map(|(records, ctx)| (records, ctx, version)), deadline }
    }

    /// The request's records went out (or it needs none).
    pub fn answered(mut self) {
        self.pending = None;
    }
}

/// How close to its deadline a request may be dropped and still count as timed out: a client
/// that set the deadline sends its cancel when its own clock (started before the server's)
/// reaches it, which can be a little before the server's.
pub(crate) const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(20);

impl RecordEmitter {
    /// Why a request given up on unanswered now was the server's failure: its `deadline` passed
    /// (the admission layer ends it there), or the server ended it at the end of its drain.
    /// None when the client left before either: nobody was answered, nothing to log.
    pub fn why_unanswered(&self, deadline: Option<std::time::Instant>) -> Option<tonic::Status> {
        if let Some(timed_out) = past_deadline(deadline) {
            Some(timed_out)
        } else if self.closing.is_cancelled() {
            Some(tonic::Status::unavailable("the server shut down before answering"))
        } else {
            None
        }
    }
}

/// DEADLINE_EXCEEDED when a request given up on now had reached its `deadline` (within the
/// slack a client's own clock takes).
pub fn past_deadline(deadline: Option<std::time::Instant>) -> Option<tonic::Status> {
    deadline
        .is_some_and(|deadline| std::time::Instant::now() + DEADLINE_SLACK >= deadline)
        .then(|| tonic::Status::deadline_exceeded("the request's deadline passed before it was answered"))
}

impl Drop for UntilAnswered<'_> {
    fn drop(&mut self) {
        let Some((records, ctx, version)) = self.pending.take() else { return };
        let Some(status) = records.why_unanswered(self.deadline) else { return };
        records.failed(ctx, &version, uuid::Uuid::now_v7().to_string(), &status);
    }
}
