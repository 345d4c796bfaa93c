//! The dashboard (a page and its JSON API) and `/metrics`, over HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{Value, json};
use vigil_store::MonitorStore;
use vigil_telemetry::prometheus_client::registry::Registry;

use crate::api::metrics_window;
use crate::views::{Baseline, MAX_CHART_WINDOWS, Scope, ViewError, Views};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
/// Token handling shared by the dashboard and the review page.
const AUTH_SCRIPT: &str = include_str!("../assets/auth.js");

/// Audit events read for the dashboard (the newest, of every model; the model's are shown).
const AUDIT_ROWS: i64 = 200;
/// Rollouts of a model shown on its dashboard, newest first.
const ROLLOUT_ROWS: usize = 5;

/// Longest range the dashboard shows: 30 days.
pub const MAX_RANGE_SECONDS: i64 = 30 * 86_400;

/// The dashboard routes plus `/metrics`.
pub fn router<S: MonitorStore>(views: Views<S>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX) }))
        .route("/auth.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], AUTH_SCRIPT) }))
        .route("/dashboard.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }))
        .route("/dashboard.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .route("/api/models", get(models::<S>))
        .route("/api/dashboard", get(dashboard::<S>))
        .merge(crate::review::routes::<S>())
        .with_state(views)
        .merge(vigil_telemetry::metrics_router(registry))
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

fn view_error(e: ViewError) -> Response {
    match e {
        ViewError::InvalidArgument(m) => error(StatusCode::BAD_REQUEST, m),
        ViewError::NoData(m) => error(StatusCode::NOT_FOUND, m),
        ViewError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    }
}

async fn models<S: MonitorStore>(State(views): State<Views<S>>) -> Response {
    let models = match views.models().await {
        Ok(m) => m,
        Err(e) => return view_error(e),
    };
    // The pipeline stage each model served in the last day ("vad", "asr", ...), from rollups.
    let until = Utc::now();
    let since = until - ChronoDuration::days(1);
    let mut out = Vec::with_capacity(models.len());
    for (model, versions) in models {
        let scope = Scope { model: model.clone(), version: None, variant: None };
        let stages: Vec<String> = match views.total(&scope, since, until).await {
            Ok(total) => total.stages.into_keys().collect(),
            Err(e) => return view_error(e),
        };
        out.push(json!({ "model": model, "versions": versions, "stages": stages }));
    }
    Json(json!({ "models": out })).into_response()
}

fn nan_to_null(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

async fn dashboard<S: MonitorStore>(
    State(views): State<Views<S>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(model) = q.get("model").filter(|m| !m.is_empty()).cloned() else {
        return error(StatusCode::BAD_REQUEST, "model is required".into());
    };
    let range: i64 = match q.get("range").map(|r| r.parse::<i64>()) {
        None => 3600,
        Some(Ok(r)) if (1..=MAX_RANGE_SECONDS).contains(&r) => r,
        _ => return error(StatusCode::BAD_REQUEST, format!("range must be 1..={MAX_RANGE_SECONDS} seconds")),
    };
    let version = q.get("version").filter(|v| !v.is_empty()).cloned();
    let scope = Scope { model: model.clone(), version: version.clone(), variant: None };
    let until = Utc::now();
    let since = until - ChronoDuration::seconds(range);
    let res = match views.resolution(since, until, 0, MAX_CHART_WINDOWS) {
        Ok(r) => r,
        Err(e) => return view_error(e),
    };
    let windows = match views.windows(&scope, since, until, res).await {
        Ok(w) => w,
        Err(e) => return view_error(e),
    };
    let mut feedback = match views.feedback(&scope, since, until, res).await {
        Ok(f) => f,
        Err(e) => return view_error(e),
    };
    let stages: BTreeMap<String, u64> = windows.iter().fold(BTreeMap::new(), |mut all, (_, w)| {
        for (stage, n) in &w.stages {
            *all.entry(stage.clone()).or_default() += n;
        }
        all
    });
    let windows: Vec<Value> = windows
        .iter()
        .map(|(start, w)| {
            let m = metrics_window(*start, res, w);
            let feedback = feedback.remove(start).unwrap_or_default();
            json!({
                "start": start.to_rfc3339(),
                "count": m.count, "errors": m.errors, "invalid_inputs": m.invalid_inputs, "nulls": m.nulls,
                "throughput_rps": m.throughput_rps,
                "latency_p50_ms": nan_to_null(m.latency_p50_ms), "latency_p99_ms": nan_to_null(m.latency_p99_ms),
                "verdicts": m.verdicts, "decisions": m.decisions,
                "score_mean": nan_to_null(m.score_mean),
                "feedback": feedback,
                "features": m.features.iter().map(|(k, f)| (k.clone(), json!({
                    "count": f.count, "missing": f.missing, "mean": nan_to_null(f.mean), "std": nan_to_null(f.std)
                }))).collect::<serde_json::Map<String, Value>>(),
            })
        })
        .collect();
    // Against the training reference; a model shipped without one (fetched speech models) is
    // compared with the range before this one, so its features still show drift.
    let has_reference = views.catalog.current().get(&model, version.as_deref()).is_some_and(|m| m.reference.is_some());
    let baseline = if has_reference { Baseline::Training } else { Baseline::Window(since - (until - since), since) };
    let drift = match views.drift(&scope, since, until, &baseline).await {
        Ok(r) => json!({
            "baseline": r.baseline, "dataset": r.dataset, "features": r.features, "prediction": r.prediction, "error": null
        }),
        Err(ViewError::Store(e)) => return view_error(ViewError::Store(e)),
        Err(e) => {
            json!({ "baseline": null, "dataset": null, "features": [], "prediction": null, "error": e.to_string() })
        }
    };
    let (accuracy, coverage) = match views.accuracy(&scope, since, until, res).await {
        Ok(a) => a,
        Err(e) => return view_error(e),
    };
    let agreement = match views.shadow_agreement(&scope, since, until, res).await {
        Ok(a) => a,
        Err(e) => return view_error(e),
    };
    let review = match views.review_summary(&model, since, until).await {
        Ok(r) => r,
        Err(e) => return view_error(e),
    };
    let audit = match views.store.audit_events(AUDIT_ROWS).await {
        Ok(events) => events
            .into_iter()
            .filter(|e| {
                e.subject == model
                    || e.subject.starts_with(&format!("{model}/"))
                    || e.subject.starts_with(&format!("{model} ("))
            })
            .map(|e| {
                json!({ "time": e.time.to_rfc3339(), "actor": e.actor, "action": e.action, "subject": e.subject,
                        "from": e.from_state, "to": e.to_state, "reason": e.reason })
            })
            .collect::<Vec<Value>>(),
        Err(e) => return view_error(e.into()),
    };
    // The model's rollouts, newest first: plan, state and every decision with its checks.
    let rollouts = match views.store.rollouts(Some(&model)).await {
        Ok(rows) => rows
            .iter()
            .take(ROLLOUT_ROWS)
            .map(|r| {
                json!({ "rollout_id": r.rollout_id, "primary_version": r.primary_version,
                        "candidate_version": r.candidate_version, "state": r.state, "step": r.step,
                        "step_started_at": r.step_started_at.to_rfc3339(), "created_by": r.created_by,
                        "plan": r.steps().unwrap_or_default(), "history": r.decisions() })
            })
            .collect::<Vec<Value>>(),
        Err(e) => return view_error(e.into()),
    };
    let alerts = match views.store.load_alerts().await {
        Ok(a) => a,
        Err(e) => return view_error(e.into()),
    };
    let alerts: Vec<Value> = alerts
        .into_iter()
        .filter(|a| a.model_name == model && a.state != "inactive")
        .map(|a| {
            json!({ "rule": a.rule, "state": a.state, "severity": a.severity, "metric": a.metric,
                    "value": a.value, "threshold": a.threshold, "since": a.since.to_rfc3339(), "message": a.message })
        })
        .collect();
    Json(json!({
        "model": model, "version": version.unwrap_or_default(), "stages": stages,
        "from": since.to_rfc3339(), "to": until.to_rfc3339(), "resolution_s": res,
        "windows": windows, "drift": drift, "accuracy": accuracy, "label_coverage": coverage,
        "shadow_agreement": agreement, "review": review, "audit": audit, "alerts": alerts,
        "rollouts": rollouts,
    }))
    .into_response()
}
