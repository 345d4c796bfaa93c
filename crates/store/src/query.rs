//! Analyst queries over the prediction log: the filter and the row shape, shared by every store.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Filters of an analyst query over the prediction log. Results come in prediction-id order
/// (UUIDv7: time order); `after` continues from the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct PredictionFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub variant: Option<i16>,
    pub station_id: Option<String>,
    pub verdict: Option<i16>,
    pub decision: Option<i16>,
    pub min_score: Option<f32>,
    pub max_score: Option<f32>,
    pub has_label: Option<bool>,
    pub after: Option<Uuid>,
    /// Rows per page; capped at [`MAX_QUERY_ROWS`].
    pub limit: u32,
}

/// The most rows one query returns.
pub const MAX_QUERY_ROWS: u32 = 10_000;

/// One row of an analyst query.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct PredictionSummary {
    pub prediction_id: Uuid,
    pub time: DateTime<Utc>,
    pub station_id: String,
    pub model_name: String,
    pub model_version: String,
    pub score: Option<f32>,
    pub verdict: i16,
    pub decision: i16,
    pub status: i16,
    pub features: serde_json::Value,
    pub label: Option<String>,
    /// The captured raw input's object key; empty when not captured.
    pub capture: String,
}
