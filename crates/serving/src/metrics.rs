//! Prometheus metrics of a prediction server.
//!
//! - `vigil_requests_total{model,version,variant,api,status}`: every gRPC call but health checks
//!   and reflection, counted by [`RequestMetricsLayer`](crate::request_metrics::RequestMetricsLayer)
//!   under its method's name in snake case (`inspect`, `model_infer`, `model_metadata`,
//!   `inspect_stream`, ...; a path no service serves is `unknown`), and each item of a stream once more under its unary API's name
//!   (`inspect`, `model_infer`). `status` is the gRPC code as tonic's `Code` spells it (`Ok`,
//!   `InvalidArgument`, `DeadlineExceeded`, ...). `model`, `version` and `variant` (`primary`,
//!   `canary`, `shadow`) name what answered; they are empty when no model version did (not
//!   found, shed by the admission layer, not a prediction API). A call abandoned by its client
//!   counts as `Cancelled`.
//! - `vigil_request_duration_seconds{model,version,variant}`: time to answer those calls and items.
//! - `vigil_queue_duration_seconds{model,version,variant}` and
//!   `vigil_compute_duration_seconds{model,version,variant}`: per run through the serving core,
//!   the wait in the batching queue and the model run of the batch it joined.
//! - `vigil_batch_size{model,version}`: sizes of the batches the dynamic batcher ran, read from
//!   the model statistics at each scrape.
//! - `vigil_pending_requests{model,version}` (admitted to the batching queue, not yet running;
//!   `max_queue_depth` bounds it) and `vigil_running_batches{model,version}`, read at each scrape.
//! - `vigil_inline_runs_total{model,version}`: model runs made inline, on the thread that
//!   received the request (on the model's own inline session or a borrowed idle one).
//! - `vigil_inflight_requests`: requests holding an admission permit now, and
//!   `vigil_request_bytes_in_flight`: the bytes of the memory budget they are charged.
//! - `vigil_records_total{outcome}`: prediction records `produced` (acknowledged by the broker),
//!   `spooled`, `replayed`, `dropped`, `failed` or `spool_refused` (spooled, then refused for good
//!   by the broker at replay), read from the emitter's counters at each scrape, and
//!   `vigil_records_sink_restarts_total`: Kafka producers replaced after a fatal error.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;
use vigil_inference::batcher::BatchOutput;
use vigil_inference::config::ModelConfig;
use vigil_inference::repository::ModelRepository;
use vigil_logbus::EmitterStats;
use vigil_proto::vigil::v1::Variant;

use crate::admission::AdmissionLayer;
use crate::records::RecordEmitter;

/// Upper bounds of the latency buckets: 100 µs doubling to about 13 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-4, 2.0, 18)
}

/// Upper bounds of the batch size buckets: 1, 2, 4, ..., 128.
pub const BATCH_SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The streaming APIs whose items are counted one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `vigil.v1.Inspection/Inspect` and each item of `InspectStream`.
    Inspect,
    /// `inference.GRPCInferenceService/ModelInfer` and each item of `ModelStreamInfer`.
    ModelInfer,
}

impl Api {
    /// The `api` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Inspect => "inspect",
            Api::ModelInfer => "model_infer",
        }
    }
}

/// The `status` label value of a gRPC code: its name as tonic's `Code` Debug prints it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

impl ModelLabels {
    fn of(config: &ModelConfig) -> Self {
        Self { model: config.name.clone(), version: config.version.to_string() }
    }
}

/// The model version and variant that answered a request (empty when none did).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServedLabels {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) variant: &'static str,
}

impl ServedLabels {
    /// The labels of `config` serving as `variant`.
    pub(crate) fn of(config: &ModelConfig, variant: Variant) -> Self {
        Self { model: config.name.clone(), version: config.version.to_string(), variant: variant_label(variant) }
    }
}

/// The `variant` label value: `primary`, `canary`, `shadow` (empty when unspecified).
pub fn variant_label(variant: Variant) -> &'static str {
    match variant {
        Variant::Unspecified => "",
        Variant::Primary => "primary",
        Variant::Canary => "canary",
        Variant::Shadow => "shadow",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    variant: &'static str,
    api: ApiLabel,
    status: &'static str,
}

/// The `api` label: a known API's fixed name, or one derived from a gRPC path.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum ApiLabel {
    Known(&'static str),
    Path(Arc<str>),
}

impl prometheus_client::encoding::EncodeLabelValue for ApiLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            ApiLabel::Known(name) => name,
            ApiLabel::Path(name) => name,
        })
    }
}

type HistogramFamily = Family<ServedLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Request counts and latency histograms. Clones share the metrics; a default instance
/// counts without being exposed anywhere until registered.
#[derive(Clone, Debug)]
pub struct ServingMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily,
    queue_duration: HistogramFamily,
    compute_duration: HistogramFamily,
    /// The admission layer's: a stream item dropped once it fired was ended by the server.
    closing: tokio_util::sync::CancellationToken,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            queue_duration: Family::new_with_constructor(latency_histogram),
            compute_duration: Family::new_with_constructor(latency_histogram),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl ServingMetrics {
    /// Registers the request metrics in `registry`, with collectors that read at each scrape
    /// the batch sizes of every model in `repository`, the requests in flight in `admission`
    /// and, when given, the counters of the prediction `records` emitter.
    pub fn register(
        registry: &mut Registry,
        repository: Arc<ModelRepository>,
        admission: &AdmissionLayer,
        records: Option<&RecordEmitter>,
    ) -> Self {
        let m = Self { closing: admission.closing().clone(), ..Self::default() };
        registry.register("vigil_requests", "Requests by model, API and gRPC status", m.requests.clone());
        registry.register("vigil_request_duration_seconds", "Time to answer a request", m.request_duration.clone());
        registry.register(
            "vigil_queue_duration_seconds",
            "Time a request waited in the batching queue",
            m.queue_duration.clone(),
        );
        registry.register(
            "vigil_compute_duration_seconds",
            "Model run time of the batch a request joined",
            m.compute_duration.clone(),
        );
        registry.register_collector(Box::new(BatchSizeCollector { repository }));
        register_admission(registry, admission);
        if let Some(records) = records {
            registry.register_collector(Box::new(RecordsCollector { stats: records.emitter().stats().clone() }));
        }
        m
    }

    /// Starts timing one item of a stream of `api` (unary calls are timed by
    /// [`RequestMetricsLayer`](crate::request_metrics::RequestMetricsLayer)); `deadline` tells
    /// an abandoned item's status.
    pub fn start(&self, api: Api, deadline: Option<Instant>) -> RequestTimer<'_> {
        RequestTimer { metrics: self, api, started: Instant::now(), deadline, served: None, finished: false }
    }

    /// Counts and times one call of `api` answered with `code` after `elapsed`.
    pub(crate) fn count_call(&self, api: &Arc<str>, served: ServedLabels, code: Code, elapsed: std::time::Duration) {
        self.request_duration.get_or_create(&served).observe(elapsed.as_secs_f64());
        let ServedLabels { model, version, variant } = served;
        let labels =
            RequestLabels { model, version, variant, api: ApiLabel::Path(api.clone()), status: code_name(code) };
        self.requests.get_or_create(&labels).inc();
    }

    /// Observes where a request's time went in the batcher of the version that `served` it.
    pub(crate) fn batched(&self, served: &ServedLabels, out: &BatchOutput) {
        self.queue_duration.get_or_create(served).observe(out.queue_time.as_secs_f64());
        self.compute_duration.get_or_create(served).observe(out.compute_time.as_secs_f64());
    }
}

/// How a handler reports the model version that answers a request: a unary call through its
/// [`ServedBy`](crate::request_metrics::ServedBy) slot (the metrics layer counts the call), a
/// stream item through a timer of its own.
pub enum Tally<'a> {
    /// A unary call; no slot when no metrics layer runs.
    Call(Option<crate::request_metrics::ServedBy>),
    /// One item of a stream.
    Item(RequestTimer<'a>),
}

impl Tally<'_> {
    /// Names the model version, and the variant, answering the request.
    pub fn routed(&mut self, config: &ModelConfig, variant: Variant) {
        match self {
            Tally::Call(Some(slot)) => slot.set(config, variant),
            Tally::Call(None) => {}
            Tally::Item(timer) => timer.model(config, variant),
        }
    }

    /// The request was answered with `code`.
    pub fn finish(self, code: Code) {
        if let Tally::Item(timer) = self {
            timer.finish(code);
        }
    }
}

/// One item of a stream being answered: counted and timed when finished, or when dropped
/// unfinished.
pub struct RequestTimer<'a> {
    metrics: &'a ServingMetrics,
    api: Api,
    started: Instant,
    deadline: Option<Instant>,
    served: Option<ServedLabels>,
    finished: bool,
}

impl RequestTimer<'_> {
    /// Names the model version (and its variant) answering the item.
    pub fn model(&mut self, config: &ModelConfig, variant: Variant) {
        self.served = Some(ServedLabels::of(config, variant));
    }

    /// Counts and times the item as answered with `code`.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        self.finished = true;
        let served = self.served.take().unwrap_or_default();
        self.metrics.request_duration.get_or_create(&served).observe(self.started.elapsed().as_secs_f64());
        let ServedLabels { model, version, variant } = served;
        let api = ApiLabel::Known(self.api.as_str());
        self.metrics
            .requests
            .get_or_create(&RequestLabels { model, version, variant, api, status: code_name(code) })
            .inc();
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // The same rule as the item's record (`UntilAnswered`), so that the two agree.
            let expired = self.deadline.is_some_and(|d| Instant::now() + crate::records::DEADLINE_SLACK >= d);
            let code = if expired {
                Code::DeadlineExceeded
            } else if self.metrics.closing.is_cancelled() {
                // Ended by the server at the end of its drain (its record says UNAVAILABLE too).
                Code::Unavailable
            } else {
                Code::Cancelled
            };
            self.record(code);
        }
    }
}

/// Reads one counter of a model's statistics.
type ReadStat = fn(&vigil_inference::stats::ModelStats) -> u64;

/// `vigil_batch_size`, `vigil_pending_requests`, `vigil_running_batches` and
/// `vigil_inline_runs_total` from each loaded model's statistics.
struct BatchSizeCollector {
    repository: Arc<ModelRepository>,
}

impl std::fmt::Debug for BatchSizeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSizeCollector").finish_non_exhaustive()
    }
}

impl Collector for BatchSizeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "vigil_batch_size",
            "Items in each batch the dynamic batcher ran",
            None,
            MetricType::Histogram,
        )?;
        for entry in self.repository.models() {
            for model in entry.versions.values() {
                let runs: Vec<(usize, u64)> =
                    model.stats.batches.lock().iter().map(|(&size, &(count, _))| (size, count)).collect();
                let (sum, count, buckets) = batch_size_histogram(&runs);
                let labels = ModelLabels::of(&model.config);
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        let counts: [(&str, &str, MetricType, ReadStat); 3] = [
            (
                "vigil_pending_requests",
                "Requests admitted to the batching queue and not yet running",
                MetricType::Gauge,
                |s| s.pending.load(Ordering::Relaxed),
            ),
            ("vigil_running_batches", "Batches running now", MetricType::Gauge, |s| s.running.load(Ordering::Relaxed)),
            (
                "vigil_inline_runs",
                "Model runs made inline, on the thread that received the request, instead of a batching thread",
                MetricType::Counter,
                |s| s.inline_runs.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, read) in counts {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for entry in self.repository.models() {
                for model in entry.versions.values() {
                    let labels = ModelLabels::of(&model.config);
                    let value = read(&model.stats);
                    match kind {
                        MetricType::Counter => ConstCounter::new(value).encode(family.encode_family(&labels)?)?,
                        _ => ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sum, count and per-bucket counts (the last bucket unbounded) of (batch size, runs) pairs.
fn batch_size_histogram(runs: &[(usize, u64)]) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets: Vec<(f64, u64)> =
        BATCH_SIZE_BUCKETS.iter().chain(std::iter::once(&f64::MAX)).map(|&b| (b, 0)).collect();
    let (mut sum, mut count) = (0.0, 0);
    for &(size, runs) in runs {
        sum += size as f64 * runs as f64;
        count += runs;
        if let Some(bucket) = buckets.iter_mut().find(|(bound, _)| size as f64 <= *bound) {
            bucket.1 += runs;
        }
    }
    (sum, count, buckets)
}

/// Exports `admission`'s calls and bytes in flight, budget waits and unread answers
/// (`vigil_inflight_requests`, `vigil_request_bytes_in_flight`, `vigil_stream_budget_waits_total`,
/// `vigil_unread_answers_total`).
pub fn register_admission(registry: &mut Registry, admission: &AdmissionLayer) {
    registry.register_collector(Box::new(InflightCollector { admission: admission.clone() }));
}

/// `vigil_inflight_requests` from the admission layer's permits.
struct InflightCollector {
    admission: AdmissionLayer,
}

impl std::fmt::Debug for InflightCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightCollector").finish_non_exhaustive()
    }
}

impl Collector for InflightCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.admission.in_flight() as i64);
        gauge.encode(encoder.encode_descriptor(
            "vigil_inflight_requests",
            "Requests being answered (health checks and reflection excluded)",
            None,
            gauge.metric_type(),
        )?)?;
        let bytes = ConstGauge::new(self.admission.bytes_in_flight() as i64);
        bytes.encode(encoder.encode_descriptor(
            "vigil_request_bytes_in_flight",
            "Bytes of the memory budget (limits.max_request_bytes_in_flight) charged to requests being answered",
            None,
            bytes.metric_type(),
        )?)?;
        let waits = ConstCounter::new(self.admission.budget_waits());
        waits.encode(encoder.encode_descriptor(
            "vigil_stream_budget_waits",
            "Stream messages that waited for room in the memory budget while their stream's earlier messages were answered",
            None,
            waits.metric_type(),
        )?)?;
        let unread = ConstCounter::new(self.admission.unread_answers());
        unread.encode(encoder.encode_descriptor(
            "vigil_unread_answers",
            "Calls past their deadline whose client stopped reading the answer (its HTTP/2 window shut): their admission was given back",
            None,
            unread.metric_type(),
        )?)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Exports a shadow lane's counters as `vigil_shadow_copies_total{outcome}`: `started`,
/// `skipped` (the lane was full, or no room to prepare its own inputs) and `failed` (among the started).
pub fn register_shadow_lane(registry: &mut Registry, lane: Arc<crate::infer::ShadowLane>) {
    registry.register_collector(Box::new(ShadowLaneCollector { lane }));
}

#[derive(Debug)]
struct ShadowLaneCollector {
    lane: Arc<crate::infer::ShadowLane>,
}

impl Collector for ShadowLaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "vigil_shadow_copies",
            "Requests copied to shadow versions, by outcome",
            None,
            MetricType::Counter,
        )?;
        let lane = &self.lane;
        for (outcome, value) in [("started", lane.started()), ("skipped", lane.skipped()), ("failed", lane.failed())] {
            ConstCounter::new(value).encode(family.encode_family(&OutcomeLabels { outcome })?)?;
        }
        Ok(())
    }
}

/// `vigil_records_total` from the emitter's counters.
#[derive(Debug)]
struct RecordsCollector {
    stats: Arc<EmitterStats>,
}

impl Collector for RecordsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let mut family =
            encoder.encode_descriptor("vigil_records", "Prediction records by outcome", None, MetricType::Counter)?;
        for (outcome, value) in [
            ("produced", &s.delivered),
            ("spooled", &s.spooled),
            ("replayed", &s.replayed),
            ("dropped", &s.dropped),
            ("failed", &s.failed),
            ("spool_refused", &s.spool_refused),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(family.encode_family(&OutcomeLabels { outcome })?)?;
        }
        let restarts = encoder.encode_descriptor(
            "vigil_records_sink_restarts",
            "Kafka producers replaced after a fatal error (the records they held were spooled and sent again)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.sink_restarts.load(Ordering::Relaxed)).encode(restarts)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn batch_sizes_fall_into_power_of_two_buckets() {
        let (sum, count, buckets) = batch_size_histogram(&[(1, 5), (3, 2), (8, 1), (200, 1)]);
        assert_eq!((sum, count), (5.0 + 6.0 + 8.0 + 200.0, 9));
        let counts: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, vec![5, 0, 2, 1, 0, 0, 0, 0, 1]);
        assert_eq!(buckets.last().unwrap().0, f64::MAX);
    }

    #[test]
    fn finished_and_abandoned_requests_are_counted_with_their_status() {
        let mut registry = Registry::default();
        let m = ServingMetrics::default();
        registry.register("vigil_requests", "", m.requests.clone());
        registry.register("vigil_request_duration_seconds", "", m.request_duration.clone());
        let mut t = m.start(Api::Inspect, None);
        let served = ServedLabels { model: "m".into(), version: "3".into(), variant: variant_label(Variant::Canary) };
        t.served = Some(served.clone());
        t.finish(Code::Ok);
        m.start(Api::ModelInfer, None).finish(Code::NotFound);
        drop(m.start(Api::Inspect, Some(Instant::now())));
        drop(m.start(Api::Inspect, None));
        // Ended by the server at the end of its drain.
        m.closing.cancel();
        drop(m.start(Api::ModelInfer, None));
        m.count_call(&"model_metadata".into(), served, Code::Ok, std::time::Duration::from_millis(1));
        m.count_call(&"model_infer".into(), ServedLabels::default(), Code::ResourceExhausted, Default::default());
        let text = encode(&registry);
        for line in [
            r#"vigil_requests_total{model="m",version="3",variant="canary",api="inspect",status="Ok"} 1"#,
            r#"vigil_requests_total{model="",version="",variant="",api="model_infer",status="NotFound"} 1"#,
            r#"vigil_requests_total{model="",version="",variant="",api="inspect",status="DeadlineExceeded"} 1"#,
            r#"vigil_requests_total{model="",version="",variant="",api="inspect",status="Cancelled"} 1"#,
            r#"vigil_requests_total{model="",version="",variant="",api="model_infer",status="Unavailable"} 1"#,
            r#"vigil_requests_total{model="m",version="3",variant="canary",api="model_metadata",status="Ok"} 1"#,
            r#"vigil_requests_total{model="",version="",variant="",api="model_infer",status="ResourceExhausted"} 1"#,
            r#"vigil_request_duration_seconds_count{model="m",version="3",variant="canary"} 2"#,
            r#"vigil_request_duration_seconds_bucket{le="0.0001",model="m",version="3",variant="canary"}"#,
            r#"vigil_request_duration_seconds_bucket{le="13.1072",model="m",version="3",variant="canary"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn record_outcomes_are_read_from_the_emitter() {
        let stats = Arc::new(EmitterStats::default());
        stats.delivered.store(7, Ordering::Relaxed);
        stats.dropped.store(2, Ordering::Relaxed);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RecordsCollector { stats: stats.clone() }));
        let text = encode(&registry);
        assert!(text.contains("# TYPE vigil_records counter"), "{text}");
        assert!(text.contains(r#"vigil_records_total{outcome="produced"} 7"#), "{text}");
        assert!(text.contains(r#"vigil_records_total{outcome="dropped"} 2"#), "{text}");
        assert!(text.contains(r#"vigil_records_total{outcome="replayed"} 0"#), "{text}");
        assert!(text.contains("vigil_records_sink_restarts_total 0"), "{text}");
        stats.delivered.store(9, Ordering::Relaxed);
        assert!(encode(&registry).contains(r#"vigil_records_total{outcome="produced"} 9"#));
    }
}
