//! `SubmitLabels`: ground truth for logged predictions. Each label is accepted, a duplicate of
//! the prediction's latest label, or rejected with a reason; nothing is half-stored.

use std::collections::HashMap;

use chrono::Utc;
use tonic::Status;
use uuid::Uuid;
use vigil_proto::vigil::v1::{LabelEvent, LabelRejection, SubmitLabelsResponse};
use vigil_store::{LabelRow, MonitorStore, PredictionStore};

use crate::catalog::Catalog;

/// How far in the future a label's time may be (clock skew) before it is refused: a future
/// label would stay the latest one forever.
pub const MAX_CLOCK_SKEW_MINUTES: i64 = 5;

/// Most labels in one request.
pub const MAX_LABELS_PER_REQUEST: usize = 10_000;

/// Checks, stores and counts a request's labels.
pub async fn submit<S: MonitorStore + PredictionStore>(
    store: &S,
    catalog: &Catalog,
    labels: &[LabelEvent],
) -> Result<SubmitLabelsResponse, Status> {
    if labels.is_empty() {
        return Err(Status::invalid_argument("labels is empty"));
    }
    if labels.len() > MAX_LABELS_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "{} labels exceed the limit of {MAX_LABELS_PER_REQUEST} per request; split them",
            labels.len()
        )));
    }
    let mut out = SubmitLabelsResponse::default();
    let reject = |out: &mut SubmitLabelsResponse, i: usize, e: &LabelEvent, reason: String| {
        out.rejected.push(LabelRejection { index: i as u32, prediction_id: e.prediction_id.clone(), reason });
    };
    let ids: Vec<Option<Uuid>> = labels.iter().map(|e| Uuid::parse_str(&e.prediction_id).ok()).collect();
    let known: Vec<Uuid> = ids.iter().flatten().copied().collect();
    let refs = store.prediction_refs(&known).await.map_err(|e| Status::unavailable(format!("database: {e}")))?;
    let mut latest: HashMap<Uuid, (String, String, Option<String>)> =
        refs.into_iter().map(|r| (r.prediction_id, (r.model_name, r.model_version, r.latest_label))).collect();
    let mut rows = Vec::new();
    for (i, (e, id)) in labels.iter().zip(&ids).enumerate() {
        let Some(id) = id else {
            reject(&mut out, i, e, format!("prediction_id '{}' is not a UUID", e.prediction_id));
            continue;
        };
        let label = e.label.trim();
        if label.is_empty() {
            reject(&mut out, i, e, "label is empty".into());
            continue;
        }
        let Some((model, version, last)) = latest.get_mut(id) else {
            reject(&mut out, i, e, "unknown prediction_id: no such prediction is logged (yet); retry later".into());
            continue;
        };
        if let Some(info) = catalog.get(model, Some(version.as_str())).filter(|m| !m.labels.is_empty())
            && !info.labels.iter().any(|l| l == label)
        {
            reject(&mut out, i, e, format!("label '{label}' is not one of {:?} of model {model}", info.labels));
            continue;
        }
        if last.as_deref() == Some(label) {
            out.duplicates += 1;
            continue;
        }
        let label_id = if e.label_id.is_empty() {
            Uuid::now_v7()
        } else {
            match Uuid::parse_str(&e.label_id) {
                Ok(u) => u,
                Err(_) => {
                    reject(&mut out, i, e, format!("label_id '{}' is not a UUID", e.label_id));
                    continue;
                }
            }
        };
        let time = e
            .time
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32))
            .unwrap_or_else(Utc::now);
        if time > Utc::now() + chrono::Duration::minutes(MAX_CLOCK_SKEW_MINUTES) {
            reject(&mut out, i, e, format!("label time {time} is in the future; check the sender's clock"));
            continue;
        }
        *last = Some(label.to_string());
        rows.push(LabelRow {
            label_id,
            prediction_id: *id,
            label: label.to_string(),
            time,
            source: if e.source.is_empty() { "api".into() } else { e.source.clone() },
        });
    }
    if !rows.is_empty() {
        let (_, inserted) =
            store.insert_batch(&[], &rows).await.map_err(|e| Status::unavailable(format!("database: {e}")))?;
        out.accepted = rows.len() as u32;
        // A label_id seen before (a retried request) is stored once; count it as a duplicate.
        out.duplicates += rows.len() as u32 - inserted as u32;
        out.accepted = inserted as u32;
    }
    Ok(out)
}
