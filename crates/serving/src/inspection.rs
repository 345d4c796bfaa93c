//! The inspection API (`vigil.v1.Inspection`): image in, verdict and decision out.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;
use vigil_inference::batcher::BatchOutput;
use vigil_inference::config::ModelConfig;
use vigil_inference::image::{ImageLimits, is_quick_to_prepare, prepare, preparing_bytes};
use vigil_inference::repository::{LoadedModel, ModelRepository};
use vigil_proto::vigil::v1::inspection_server::Inspection;
use vigil_proto::vigil::v1::{
    Decision, ImageFeatures, InspectError, InspectRequest, InspectResponse, InspectStreamResponse, ReviewRequest,
    Verdict,
};

use crate::admission::{Deadline, held_until_answered};
use crate::decision::{Automation, Policy};
use crate::ids::{check_id, check_time};
use crate::infer::{Infer, Route, ShadowInputs, ShadowObserver, ShadowPlan, ShadowRun};
use crate::metrics::{Api, ServingMetrics, Tally};
use crate::records::{RecordEmitter, RequestContext, UntilAnswered, new_trace_id};
use crate::request_metrics::ServedBy;
use crate::status::to_status;

/// Most images of one stream processed at once (responses keep request order).
pub const STREAM_PIPELINE_DEPTH: usize = 8;

/// The inspection service over a model repository.
#[derive(Clone)]
pub struct InspectionService {
    infer: Infer,
    default_model: String,
    limits: ImageLimits,
    preparing: PreparingBudget,
    records: Option<RecordEmitter>,
    capturer: Option<vigil_capture::Capturer>,
    metrics: ServingMetrics,
}

/// The memory of the images being prepared at once ([`ImageLimits::max_preparing_bytes_in_flight`]),
/// counted in KiB: each image reserves what its header says preparing it takes, and waits (within
/// its call's deadline) until there is room.
#[derive(Clone)]
struct PreparingBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl PreparingBudget {
    fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        Self { kib: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)), total_kib }
    }

    /// Room for an image that takes `bytes` to prepare, held until the permit is dropped;
    /// RESOURCE_EXHAUSTED when the whole budget could not hold it.
    async fn reserve(&self, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let kib = bytes.div_ceil(1024);
        if kib > u64::from(self.total_kib) {
            return Err(Status::resource_exhausted(format!(
                "preparing this image takes about {bytes} bytes, more than images.max_preparing_bytes_in_flight \
                 ({} bytes) allows; send a smaller image",
                u64::from(self.total_kib) * 1024
            )));
        }
        self.kib.clone().acquire_many_owned(kib as u32).await.map_err(|_| Status::unavailable("the server is stopping"))
    }

    /// Room for an image that takes `bytes` to prepare if there is room now; None otherwise.
    fn try_reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }
}

impl InspectionService {
    /// Serves `default_model` (when a request names none) with image `limits`.
    pub fn new(repository: Arc<ModelRepository>, default_model: impl Into<String>, limits: ImageLimits) -> Self {
        let infer = Infer::over(repository);
        let default_model = default_model.into();
        let preparing = PreparingBudget::new(limits.max_preparing_bytes_in_flight);
        Self { infer, default_model, limits, preparing, records: None, capturer: None, metrics: Default::default() }
    }

    /// Routes and runs requests through `infer` (a custom router, shadows).
    pub fn with_infer(mut self, infer: Infer) -> Self {
        self.infer = infer.with_metrics(self.metrics.clone());
        self
    }

    /// Logs every prediction (answered or refused) through `records`.
    pub fn with_records(mut self, records: RecordEmitter) -> Self {
        self.records = Some(records);
        self
    }

    /// Captures images for retraining through `capturer` (its policy decides which); their
    /// records name the captured object.
    pub fn with_capture(mut self, capturer: vigil_capture::Capturer) -> Self {
        self.capturer = Some(capturer);
        self
    }

    /// Counts and times every inspection in `metrics`.
    pub fn with_metrics(mut self, metrics: ServingMetrics) -> Self {
        self.infer = self.infer.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Inspects one image.
    pub async fn inspect_one(&self, request: InspectRequest) -> Result<InspectResponse, Status> {
        self.inspect_tallied(request, Tally::Call(None), None).await
    }

    /// Inspects one image, reporting what answered it to `tally`.
    async fn inspect_tallied(
        &self,
        request: InspectRequest,
        mut tally: Tally<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<InspectResponse, Status> {
        let result = self.inspect_model(request, &mut tally, deadline).await;
        tally.finish(result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        result
    }

    async fn inspect_model(
        &self,
        request: InspectRequest,
        tally: &mut Tally<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<InspectResponse, Status> {
        let request_time = SystemTime::now();
        check_id("station_id", &request.station_id)?;
        check_id("part_id", &request.part_id)?;
        check_id("request_id", &request.request_id)?;
        check_time("capture_time", &request.capture_time)?;
        let name = if request.model_name.is_empty() { self.default_model.clone() } else { request.model_name.clone() };
        // The station keeps one version under a canary.
        let route = self.infer.route(&name, &request.model_version, &request.station_id).map_err(to_status)?;
        let model = route.primary.clone();
        tally.routed(&model.config, route.variant);
        let ctx = self.records.as_ref().map(|_| RequestContext {
            station_id: request.station_id.clone(),
            part_id: request.part_id.clone(),
            request_id: request.request_id.clone(),
            capture_time: request.capture_time,
            request_time,
            model_name: name,
            api: "inspect",
            variant: route.variant,
            deployment: route.deployment.clone(),
            trace_id: new_trace_id(),
            stage: String::new(),
        });
        let accounting = self.infer.accounting(&route, deadline);
        let recording = self.records.as_ref().zip(ctx.as_ref());
        let unanswered = UntilAnswered::new(recording, model.config.version.to_string(), deadline);
        let result = self.run(&route, request, ctx.as_ref()).await;
        unanswered.answered();
        accounting.finish(&result);
        if let (Some(records), Some(ctx)) = (&self.records, &ctx) {
            let (result, review, capture) = match &result {
                Ok((response, review, capture)) => (Ok(response), review.clone(), capture.clone()),
                Err(status) => (Err(status), None, String::new()),
            };
            record(records, ctx, &model.config, result, review, capture);
        }
        result.map(|(response, _, _)| response)
    }

    async fn run(
        &self,
        route: &Route,
        request: InspectRequest,
        ctx: Option<&RequestContext>,
    ) -> Result<(InspectResponse, Option<ReviewRequest>, String), Status> {
        let config = &route.primary.config;
        let (Some(pre), Some(_)) = (config.preprocess.clone(), config.thresholds) else {
            return Err(not_an_inspection_model(config));
        };
        let limits = self.limits;
        let InspectRequest { image, station_id, part_id, request_id, .. } = request;
        // Decoding is CPU work: a small image is prepared here (a hand-off would cost more than
        // the work), a larger one on a blocking thread, once the memory it takes is free. The
        // image comes back for a reviewer, without a copy.
        let (prepared, image) = if is_quick_to_prepare(&image, &pre) {
            (prepare(&image, &pre, &limits), image)
        } else {
            let room = match preparing_bytes(&image, &limits) {
                Some(bytes) => Some(self.preparing.reserve(bytes).await?),
                None => None,
            };
            // Held by the work itself: a call that ends early does not free memory still in use.
            tokio::task::spawn_blocking(move || {
                let prepared = prepare(&image, &pre, &limits);
                drop(room);
                (prepared, image)
            })
            .await
            .map_err(|e| Status::internal(format!("image preparation failed: {e}")))?
        };
        let prepared = prepared.map_err(to_status)?;
        let f = prepared.features;
        let features = ImageFeatures {
            brightness: f.brightness,
            contrast: f.contrast,
            sharpness: f.sharpness,
            width: prepared.width,
            height: prepared.height,
            missing: false,
        };
        let station = station_id.clone();
        let ids = Ids { station_id, part_id, request_id };
        let automation = route.automation;
        let out = if automation.policy.consults_model() {
            let on_shadow = match (&self.records, ctx) {
                (Some(records), Some(ctx)) if !route.shadows.is_empty() => {
                    // A shadow's decision is not acted on: it is logged as the model alone would decide.
                    let automation = Automation { policy: Policy::Partial, band: automation.band };
                    Some(shadow_recorder(records.clone(), ctx.for_shadow(), automation, features, ids.clone()))
                }
                _ => None,
            };
            // A shadow that prepares images differently sees the image as it would prepare it.
            let differs = route.shadows.iter().any(|s| s.config.preprocess.as_ref() != config.preprocess.as_ref());
            // Its preparation takes room in the same memory budget as the requests', when there
            // is room now: a shadow never waits for it, nor makes a request wait.
            let shadow_inputs: Option<ShadowInputs> = (differs && on_shadow.is_some()).then(|| {
                let (image, primary, budget) = (image.clone(), config.preprocess.clone(), self.preparing.clone());
                Arc::new(move |shadow: &LoadedModel| {
                    let Some(pre) = shadow.config.preprocess.clone().filter(|pre| Some(pre) != primary.as_ref()) else {
                        return ShadowPlan::Primary;
                    };
                    let room = match preparing_bytes(&image, &limits) {
                        Some(bytes) => match budget.try_reserve(bytes) {
                            Some(room) => Some(room),
                            None => return ShadowPlan::Skip,
                        },
                        None => None,
                    };
                    let image = image.clone();
                    ShadowPlan::Own(Box::new(move || {
                        let prepared = prepare(&image, &pre, &limits).map(|p| vec![p.tensor]);
                        drop(room);
                        prepared
                    }))
                }) as ShadowInputs
            });
            let run = self.infer.run_with(route, vec![prepared.tensor], on_shadow, shadow_inputs);
            Some(run.await.map_err(to_status)?.output)
        } else {
            None
        };
        let (response, reason) = answer(config, automation, out.as_ref(), features, ids)?;
        let captured = self.capturer.as_ref().and_then(|c| {
            c.capture(vigil_capture::Input {
                model: &config.name,
                version: &config.version.to_string(),
                prediction_id: &response.prediction_id,
                station_id: &station,
                device_id: "",
                content_type: image_type(&image),
                bytes: &image,
                review: reason.is_some(),
                min_rate: route.capture_rate,
            })
        });
        let review = match (reason, &self.records) {
            (Some(reason), Some(_)) => {
                let reviewers = config.thresholds.map_or(1, |t| t.reviewers);
                Some(review_request(automation.policy, reason, image, reviewers))
            }
            _ => None,
        };
        Ok((response, review, captured.unwrap_or_default()))
    }
}

/// The media type of an image by its first bytes.
fn image_type(image: &[u8]) -> &'static str {
    if image.starts_with(b"\x89PNG") {
        "image/png"
    } else if image.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else {
        "application/octet-stream"
    }
}

/// The largest image carried to the review queue in a prediction record (records travel as one
/// Kafka message, at most 1 MB by default); a larger one is queued without it, saying so.
pub const MAX_REVIEW_IMAGE_BYTES: usize = 768 * 1024;

fn review_request(policy: Policy, reason: String, image: Vec<u8>, reviewers: u32) -> ReviewRequest {
    let content_type = match image.as_slice() {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        _ => "application/octet-stream",
    };
    if image.len() > MAX_REVIEW_IMAGE_BYTES {
        return ReviewRequest {
            policy: policy.as_str().into(),
            reason: format!(
                "{reason}; the image ({} bytes) is over {MAX_REVIEW_IMAGE_BYTES} and not carried",
                image.len()
            ),
            show_suggestion: policy.shows_suggestion(),
            content_type: String::new(),
            input: Vec::new(),
            reviewers,
        };
    }
    ReviewRequest {
        policy: policy.as_str().into(),
        reason,
        show_suggestion: policy.shows_suggestion(),
        content_type: content_type.into(),
        input: image,
        reviewers,
    }
}

/// The caller's ids, echoed in the answer.
#[derive(Clone)]
struct Ids {
    station_id: String,
    part_id: String,
    request_id: String,
}

fn not_an_inspection_model(config: &ModelConfig) -> Status {
    Status::failed_precondition(format!(
        "model '{}' is not an image inspection model (its model.toml has no [preprocess] and [thresholds])",
        config.name
    ))
}

/// The inspection answer from a model's output (None: the model was not consulted) under
/// `automation`, and why the item goes to a person, when it does.
fn answer(
    config: &ModelConfig,
    automation: Automation,
    out: Option<&BatchOutput>,
    features: ImageFeatures,
    ids: Ids,
) -> Result<(InspectResponse, Option<String>), Status> {
    let thresholds = config.thresholds.ok_or_else(|| not_an_inspection_model(config))?;
    let response = |score: f32, verdict: Verdict, decision: Decision| InspectResponse {
        prediction_id: Uuid::now_v7().to_string(),
        defect_probability: score,
        verdict: verdict as i32,
        decision: decision as i32,
        model_name: config.name.clone(),
        model_version: config.version.to_string(),
        queue_time_us: out.map_or(0, |o| o.queue_time.as_micros() as u64),
        compute_time_us: out.map_or(0, |o| o.compute_time.as_micros() as u64),
        features: Some(features),
        station_id: ids.station_id.clone(),
        part_id: ids.part_id.clone(),
        request_id: ids.request_id.clone(),
        batch_size: out.map_or(0, |o| o.batch_size as u32),
    };
    let Some(out) = out else {
        let reason = Automation::HUMAN_ONLY_REASON.to_string();
        return Ok((response(0.0, Verdict::Unspecified, Decision::HumanReview), Some(reason)));
    };
    let score = out
        .outputs
        .first()
        .and_then(|t| t.to_f32().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| Status::internal("model returned no score"))?;
    if !score.is_finite() {
        return Err(Status::internal(format!("model returned a non-finite score ({score})")));
    }
    let (verdict, decision, reason) = automation.decide(score, &thresholds);
    Ok((response(score, verdict, decision), reason))
}

/// Logs an inspection's outcome as the version `config` saw it.
fn record(
    records: &RecordEmitter,
    ctx: &RequestContext,
    config: &ModelConfig,
    result: Result<&InspectResponse, &Status>,
    review: Option<ReviewRequest>,
    capture: String,
) {
    match result {
        Ok(r) => {
            let label = match Verdict::try_from(r.verdict) {
                Ok(Verdict::Defect) => config.labels.get(1),
                Ok(Verdict::Ok) => config.labels.first(),
                _ => None,
            };
            records.inspected(ctx, r, label.map_or("", String::as_str), &config.labels, review, capture);
        }
        Err(status) => records.failed(ctx, &config.version.to_string(), Uuid::now_v7().to_string(), status),
    }
}

/// Logs each shadow's answer to the same image as a `SHADOW` record with the request's trace id.
fn shadow_recorder(
    records: RecordEmitter,
    ctx: RequestContext,
    automation: Automation,
    features: ImageFeatures,
    ids: Ids,
) -> ShadowObserver {
    Arc::new(move |run: ShadowRun| {
        let config = &run.model.config;
        let mut ctx = ctx.clone();
        ctx.deployment = run.deployment.clone();
        let result = run
            .result
            .map_err(to_status)
            .and_then(|out| answer(config, automation, Some(&out), features, ids.clone()).map(|(r, _)| r));
        record(&records, &ctx, config, result.as_ref(), None, String::new());
    })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<InspectStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inspection for InspectionService {
    async fn inspect(&self, request: Request<InspectRequest>) -> Result<Response<InspectResponse>, Status> {
        let tally = Tally::Call(ServedBy::of(&request));
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        self.inspect_tallied(request.into_inner(), tally, deadline).await.map(Response::new)
    }

    type InspectStreamStream = ResponseStream;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<InspectRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let service = self.clone();
        let charges = held_until_answered(&request);
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        // Each message stays charged against the memory budget until its answer is ready.
        let responses = request
            .into_inner()
            .map(move |item| {
                let service = service.clone();
                let charge = charges.take();
                async move {
                    let _charge = charge;
                    let request = item?;
                    let request_id = request.request_id.clone();
                    let tally = Tally::Item(service.metrics.start(Api::Inspect, deadline));
                    Ok(match service.inspect_tallied(request, tally, deadline).await {
                        Ok(result) => InspectStreamResponse { result: Some(result), error: None },
                        Err(status) => InspectStreamResponse {
                            result: None,
                            error: Some(InspectError {
                                code: status.code() as i32,
                                message: status.message().to_string(),
                                request_id,
                            }),
                        },
                    })
                }
            })
            .buffered(STREAM_PIPELINE_DEPTH);
        Ok(Response::new(Box::pin(responses)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn images_wait_for_room_to_be_prepared_and_one_too_large_for_all_of_it_is_refused() {
        let budget = PreparingBudget::new(10 << 20);
        let first = budget.reserve(6 << 20).await.unwrap();
        let second = budget.reserve(4 << 20).await.unwrap();
        // Full: the next waits until room is given back.
        let mut third = std::pin::pin!(budget.reserve(1));
        assert!(futures::poll!(third.as_mut()).is_pending());
        drop(second);
        assert!(futures::poll!(third.as_mut()).is_ready());
        drop(first);
        let refused = budget.reserve((10 << 20) + 1).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("images.max_preparing_bytes_in_flight (10485760 bytes)"),
            "{}",
            refused.message()
        );
    }
}
