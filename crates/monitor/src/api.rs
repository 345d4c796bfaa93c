//! `vigil.v1.Monitoring` over gRPC: metrics, drift, alarms and labels.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use vigil_proto::vigil::v1::monitoring_server::Monitoring;
use vigil_proto::vigil::v1::{
    AccuracyWindow as PbAccuracy, Alert, Decision, DriftTest, FeatureSummary, GetDriftRequest, GetDriftResponse,
    GetMetricsRequest, GetMetricsResponse, ListAlertsRequest, ListAlertsResponse, MetricsWindow, RollupWindow,
    Scope as PbScope, SubmitFeedbackRequest, SubmitFeedbackResponse, SubmitLabelsRequest, SubmitLabelsResponse,
    Verdict,
};
use vigil_store::{MonitorStore, PredictionStore};

use crate::query::time;
use crate::sketch;
use crate::views::{Baseline, FeatureDrift, Scope, ViewError, Views, default_range};

/// The gRPC service over the monitor's views.
#[derive(Clone)]
pub struct MonitoringService<S> {
    views: Views<S>,
}

impl<S> MonitoringService<S> {
    pub fn new(views: Views<S>) -> Self {
        Self { views }
    }
}

fn status(e: ViewError) -> Status {
    match e {
        ViewError::InvalidArgument(m) => Status::invalid_argument(m),
        ViewError::NoData(m) => Status::failed_precondition(m),
        ViewError::Store(e) => Status::unavailable(format!("database: {e}")),
    }
}

/// A timestamp for the wire.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn scope(s: &Option<PbScope>) -> Result<Scope, Status> {
    let s = s
        .as_ref()
        .filter(|s| !s.model_name.is_empty())
        .ok_or_else(|| Status::invalid_argument("scope.model_name is required"))?;
    Ok(Scope {
        model: s.model_name.clone(),
        version: (!s.model_version.is_empty()).then(|| s.model_version.clone()),
        variant: (s.variant != 0).then_some(s.variant as i16),
    })
}

/// Lower-case enum names without their prefix: `VERDICT_DEFECT` -> `defect`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

/// One window's figures as the API shows them.
pub fn metrics_window(start: DateTime<Utc>, resolution_s: u32, w: &RollupWindow) -> MetricsWindow {
    let verdicts = w
        .verdicts
        .iter()
        .map(|(k, v)| (Verdict::try_from(*k).map(|x| short(x.as_str_name(), "VERDICT_")).unwrap_or(k.to_string()), *v))
        .collect();
    let decisions = w
        .decisions
        .iter()
        .map(|(k, v)| {
            (Decision::try_from(*k).map(|x| short(x.as_str_name(), "DECISION_")).unwrap_or(k.to_string()), *v)
        })
        .collect();
    let features = w
        .features
        .iter()
        .map(|(name, f)| {
            let n = f.count.max(1) as f64;
            let mean = f.sum / n;
            let var = (f.sum_sq / n - mean * mean).max(0.0);
            (name.clone(), FeatureSummary { count: f.count, missing: f.missing, mean, std: var.sqrt() })
        })
        .collect();
    let q = |p| w.latency_ms.as_ref().and_then(|s| sketch::quantile(s, p)).unwrap_or(f64::NAN);
    MetricsWindow {
        start: Some(timestamp(start)),
        count: w.count,
        errors: w.errors,
        invalid_inputs: w.invalid_inputs,
        nulls: w.nulls,
        throughput_rps: w.count as f64 / f64::from(resolution_s.max(1)),
        latency_p50_ms: q(0.5),
        latency_p99_ms: q(0.99),
        verdicts,
        decisions,
        score_mean: w.score.as_ref().and_then(sketch::mean).unwrap_or(f64::NAN),
        features,
        feedback: Default::default(),
    }
}

/// A drift test for the wire.
pub fn drift_test(d: &FeatureDrift) -> DriftTest {
    DriftTest {
        feature: d.feature.clone(),
        method: serde_json::to_value(d.result.method)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        statistic: d.result.statistic,
        p_value: d.result.p_value,
        threshold: d.result.threshold,
        drifted: d.result.drifted,
        psi: d.result.psi,
        edges: d.edges.clone(),
        reference: d.reference.clone(),
        current: d.current.clone(),
        current_count: d.current_count,
    }
}

#[tonic::async_trait]
impl<S: MonitorStore + PredictionStore> Monitoring for MonitoringService<S> {
    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let r = request.into_inner();
        let scope = scope(&r.scope)?;
        let (since, until) = default_range(time(&r.since, "since")?, time(&r.until, "until")?);
        let res = self
            .views
            .resolution(since, until, r.resolution_seconds, crate::views::MAX_CHART_WINDOWS)
            .map_err(status)?;
        let windows = self.views.windows(&scope, since, until, res).await.map_err(status)?;
        let mut feedback = self.views.feedback(&scope, since, until, res).await.map_err(status)?;
        Ok(Response::new(GetMetricsResponse {
            resolution_seconds: res,
            windows: windows
                .iter()
                .map(|(start, w)| MetricsWindow {
                    feedback: feedback.remove(start).unwrap_or_default().into_iter().collect(),
                    ..metrics_window(*start, res, w)
                })
                .collect(),
        }))
    }

    async fn get_drift(&self, request: Request<GetDriftRequest>) -> Result<Response<GetDriftResponse>, Status> {
        let r = request.into_inner();
        let scope = scope(&r.scope)?;
        let (since, until) = default_range(time(&r.since, "since")?, time(&r.until, "until")?);
        let baseline = match (time(&r.baseline_since, "baseline_since")?, time(&r.baseline_until, "baseline_until")?) {
            (None, None) => Baseline::Training,
            (Some(a), Some(b)) if a < b => Baseline::Window(a, b),
            (Some(_), Some(_)) => return Err(Status::invalid_argument("baseline_since is not before baseline_until")),
            _ => return Err(Status::invalid_argument("give both baseline_since and baseline_until, or neither")),
        };
        let report = self.views.drift(&scope, since, until, &baseline).await.map_err(status)?;
        let res = self.views.resolution(since, until, 0, crate::views::MAX_CHART_WINDOWS).map_err(status)?;
        let (accuracy, coverage) = self.views.accuracy(&scope, since, until, res).await.map_err(status)?;
        Ok(Response::new(GetDriftResponse {
            baseline: report.baseline.clone(),
            features: report.features.iter().map(drift_test).collect(),
            prediction: report.prediction.as_ref().map(drift_test),
            drifted_features: report.dataset.drifted_features as u32,
            total_features: report.dataset.total as u32,
            dataset_drifted: report.dataset.drifted,
            accuracy: accuracy
                .iter()
                .map(|a| PbAccuracy {
                    start: Some(timestamp(a.start)),
                    labeled: a.labeled,
                    accuracy: a.accuracy,
                    precision: a.precision.unwrap_or(f64::NAN),
                    recall: a.recall.unwrap_or(f64::NAN),
                    label_lag_seconds: a.label_lag_s,
                    word_error_rate: a.word_error_rate().unwrap_or(f64::NAN),
                    reference_words: a.reference_words,
                })
                .collect(),
            label_coverage: coverage,
        }))
    }

    async fn list_alerts(&self, request: Request<ListAlertsRequest>) -> Result<Response<ListAlertsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(10_000) } as usize;
        let mut rows = self.views.store.load_alerts().await.map_err(|e| status(e.into()))?;
        rows.retain(|a| a.state == "firing" || a.state == "pending" || (r.include_resolved && a.state == "resolved"));
        let rank = |s: &str| match s {
            "firing" => 0,
            "pending" => 1,
            _ => 2,
        };
        rows.sort_by(|a, b| rank(&a.state).cmp(&rank(&b.state)).then(b.since.cmp(&a.since)));
        rows.truncate(limit);
        Ok(Response::new(ListAlertsResponse {
            alerts: rows
                .into_iter()
                .map(|a| Alert {
                    rule: a.rule,
                    model_name: a.model_name,
                    state: a.state,
                    severity: a.severity,
                    metric: a.metric,
                    value: a.value.unwrap_or(f64::NAN),
                    threshold: a.threshold,
                    since: Some(timestamp(a.since)),
                    message: a.message,
                })
                .collect(),
        }))
    }

    async fn submit_labels(
        &self,
        request: Request<SubmitLabelsRequest>,
    ) -> Result<Response<SubmitLabelsResponse>, Status> {
        let r = request.into_inner();
        crate::labels::submit(&self.views.store, &self.views.catalog.current(), &r.labels).await.map(Response::new)
    }

    async fn submit_feedback(
        &self,
        request: Request<SubmitFeedbackRequest>,
    ) -> Result<Response<SubmitFeedbackResponse>, Status> {
        crate::feedback::submit(&self.views.store, &request.into_inner().events).await.map(Response::new)
    }
}
