//! The human review page and its JSON API: claim the next item, fetch its input, decide it.
//! A decision goes through the store's review queue, which accepts it once (from the reviewer
//! holding the claim) and stores it as the item's ground-truth label.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use vigil_security::Caller;
use vigil_store::{MonitorStore, ReviewError, ReviewItem, ReviewOutcome};

use crate::views::Views;

const PAGE: &str = include_str!("../assets/review.html");
const SCRIPT: &str = include_str!("../assets/review.js");

/// How long a claim from the page holds when the request does not say, in seconds.
pub const DEFAULT_LEASE_S: u32 = 300;
/// The longest claim a reviewer may ask for, in seconds.
pub const MAX_LEASE_S: u32 = 3_600;

/// `/review`, `/review.js` and `/api/review/...`.
pub fn routes<S: MonitorStore>() -> Router<Views<S>> {
    Router::new()
        .route("/review", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route("/review.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }))
        .route("/api/review/next", post(next::<S>))
        .route("/api/review/{id}/input", get(input::<S>))
        .route("/api/review/{id}", post(submit::<S>))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

fn database(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

/// The reviewer a decision is recorded with: the token's holder when the monitor checks tokens
/// (a different name in the request is refused), else the name the request gives.
fn reviewer(caller: Option<Extension<Caller>>, given: &str) -> Result<String, (StatusCode, String)> {
    let given = given.trim();
    match caller {
        Some(Extension(caller)) if given.is_empty() || given == caller.name => Ok(caller.name),
        Some(Extension(caller)) => Err((
            StatusCode::FORBIDDEN,
            format!("reviewer '{given}' is not the holder of this token ('{}')", caller.name),
        )),
        None if given.is_empty() => {
            Err((StatusCode::BAD_REQUEST, "reviewer is required: each decision is recorded with it".into()))
        }
        None => Ok(given.to_string()),
    }
}

#[derive(Deserialize)]
struct NextRequest {
    #[serde(default)]
    reviewer: String,
    model: Option<String>,
    lease_s: Option<u32>,
}

/// The item as the reviewer sees it: no input bytes (fetched from `input_url`).
fn item_json(item: &ReviewItem) -> serde_json::Value {
    json!({
        "prediction_id": item.prediction_id, "model_name": item.model_name, "model_version": item.model_version,
        "station_id": item.station_id, "part_id": item.part_id, "created_at": item.created_at.to_rfc3339(),
        "policy": item.policy, "reason": item.reason, "suggestion": item.suggestion, "score": item.score,
        "input_url": item.input.as_ref().map(|_| format!("/api/review/{}/input", item.prediction_id)),
        "claimed_by": item.claimed_by, "claimed_until": item.claimed_until.map(|t| t.to_rfc3339()),
        "content_type": item.content_type, "reviews_required": item.reviews_required,
    })
}

async fn next<S: MonitorStore>(
    State(views): State<Views<S>>,
    caller: Option<Extension<Caller>>,
    Json(request): Json<NextRequest>,
) -> Response {
    let reviewer = match reviewer(caller, &request.reviewer) {
        Ok(reviewer) => reviewer,
        Err((code, message)) => return error(code, message),
    };
    let reviewer = reviewer.as_str();
    let lease_s = request.lease_s.unwrap_or(DEFAULT_LEASE_S);
    if !(1..=MAX_LEASE_S).contains(&lease_s) {
        return error(StatusCode::BAD_REQUEST, format!("lease_s must be 1..={MAX_LEASE_S}"));
    }
    let model = request.model.as_deref().filter(|m| !m.is_empty());
    let lease = chrono::Duration::seconds(i64::from(lease_s));
    // The database's clock, as for `vigil review` on any machine: a claim's lease is read by
    // every reviewer against one clock.
    let now = match views.store.clock().await {
        Ok(now) => now,
        Err(e) => return database(e),
    };
    match views.store.claim_review(reviewer, model, lease, now).await {
        Ok(Some(item)) => {
            // The buttons: the model's labels, from its model card.
            let labels =
                views.catalog.current().get(&item.model_name, Some(&item.model_version)).map(|m| m.labels.clone());
            Json(json!({ "item": item_json(&item), "labels": labels.unwrap_or_default() })).into_response()
        }
        Ok(None) => Json(json!({ "item": null, "labels": [] })).into_response(),
        Err(e) => database(e),
    }
}

async fn input<S: MonitorStore>(State(views): State<Views<S>>, Path(id): Path<Uuid>) -> Response {
    match views.store.review_item(id).await {
        Ok(Some(ReviewItem { input: Some(bytes), content_type, .. })) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Ok(_) => error(StatusCode::NOT_FOUND, format!("no input for review item {id}")),
        Err(e) => database(e),
    }
}

#[derive(Deserialize)]
struct Decision {
    #[serde(default)]
    reviewer: String,
    label: String,
}

async fn submit<S: MonitorStore>(
    State(views): State<Views<S>>,
    Path(id): Path<Uuid>,
    caller: Option<Extension<Caller>>,
    Json(decision): Json<Decision>,
) -> Response {
    let reviewer = match reviewer(caller, &decision.reviewer) {
        Ok(reviewer) => reviewer,
        Err((code, message)) => return error(code, message),
    };
    let (reviewer, label) = (reviewer.as_str(), decision.label.trim());
    let now = match views.store.clock().await {
        Ok(now) => now,
        Err(e) => return database(e),
    };
    match views.store.submit_review(id, reviewer, label, now).await {
        Ok(outcome) => {
            // A panel's item is decided once its majority is in; until then it awaits the others.
            let (decided, decision, decisions, required) = match outcome {
                ReviewOutcome::Decided { decision } => (true, Some(decision), None, None),
                ReviewOutcome::Awaiting { decisions, required } => (false, None, Some(decisions), Some(required)),
            };
            Json(json!({ "prediction_id": id, "label": label, "reviewer": reviewer, "decided": decided,
                         "decision": decision, "decisions": decisions, "required": required }))
            .into_response()
        }
        Err(e @ ReviewError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(
            e @ (ReviewError::AlreadyDecided { .. }
            | ReviewError::AlreadyDecidedByYou { .. }
            | ReviewError::ClaimedByOther { .. }),
        ) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ReviewError::EmptyDecision) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(ReviewError::Database(e)) => database(e),
    }
}
