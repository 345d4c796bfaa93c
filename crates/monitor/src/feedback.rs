//! `SubmitFeedback`: what users did after predictions (clicks, repeated searches), for the
//! output metrics (click-through) and the rollouts' business checks. Each event is accepted, a
//! duplicate of a stored event id, or rejected with a reason.

use chrono::Utc;
use tonic::Status;
use uuid::Uuid;
use vigil_proto::vigil::v1::{FeedbackEvent, LabelRejection, SubmitFeedbackResponse};
use vigil_store::{FeedbackRow, OutcomeStore, PredictionStore};

/// Most events in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Longest feedback kind, in characters.
pub const MAX_KIND_CHARS: usize = 32;

/// Checks, stores and counts a request's feedback events.
pub async fn submit<S: PredictionStore + OutcomeStore>(
    store: &S,
    events: &[FeedbackEvent],
) -> Result<SubmitFeedbackResponse, Status> {
    if events.is_empty() {
        return Err(Status::invalid_argument("events is empty"));
    }
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "{} events exceed the limit of {MAX_EVENTS_PER_REQUEST} per request; split them",
            events.len()
        )));
    }
    let ids: Vec<Option<Uuid>> = events.iter().map(|e| Uuid::parse_str(&e.prediction_id).ok()).collect();
    let known: Vec<Uuid> = ids.iter().flatten().copied().collect();
    let refs = store.prediction_refs(&known).await.map_err(|e| Status::unavailable(format!("database: {e}")))?;
    let logged: std::collections::HashSet<Uuid> = refs.into_iter().map(|r| r.prediction_id).collect();
    let now = Utc::now();
    let mut out = SubmitFeedbackResponse::default();
    let mut rows = Vec::new();
    for (i, (e, id)) in events.iter().zip(&ids).enumerate() {
        let reason = match id {
            None => Some(format!("prediction_id '{}' is not a UUID", e.prediction_id)),
            Some(id) if !logged.contains(id) => {
                Some("unknown prediction_id: no such prediction is logged (yet); retry later".to_string())
            }
            Some(_) if !valid_kind(&e.kind) => Some(format!(
                "kind '{}' must be 1 to {MAX_KIND_CHARS} lower-case letters, digits or '_' (e.g. click)",
                e.kind
            )),
            Some(_) => None,
        };
        let event = FeedbackEvent {
            schema_version: vigil_store::rows::SUPPORTED_SCHEMA_VERSION,
            event_id: if e.event_id.is_empty() { Uuid::now_v7().to_string() } else { e.event_id.clone() },
            time: Some(e.time.unwrap_or_else(|| std::time::SystemTime::from(now).into())),
            ..e.clone()
        };
        let row = match reason {
            Some(reason) => Err(reason),
            None => FeedbackRow::from_event(&event).map_err(|e| e.to_string()),
        };
        match row {
            Ok(row) if row.time > now + chrono::Duration::minutes(crate::labels::MAX_CLOCK_SKEW_MINUTES) => {
                out.rejected.push(rejection(i, e, "time is in the future".into()))
            }
            Ok(row) => rows.push(row),
            Err(reason) => out.rejected.push(rejection(i, e, reason)),
        }
    }
    if !rows.is_empty() {
        let stored = store.insert_feedback(&rows).await.map_err(|e| Status::unavailable(format!("database: {e}")))?;
        out.accepted = stored as u32;
        out.duplicates = (rows.len() as u64 - stored) as u32;
    }
    Ok(out)
}

fn rejection(index: usize, e: &FeedbackEvent, reason: String) -> LabelRejection {
    LabelRejection { index: index as u32, prediction_id: e.prediction_id.clone(), reason }
}

fn valid_kind(kind: &str) -> bool {
    (1..=MAX_KIND_CHARS).contains(&kind.len())
        && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
