//! The human review queue: items a person decides (by the model's automation policy), each once.
//! A reviewer claims the oldest open item with a lease; a decision is accepted from the
//! reviewer holding the claim (or anyone once no live claim is held) and becomes a ground-truth
//! label in the same transaction. One copy of each statement, in the `$N` placeholders both
//! databases take, generated per backend.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use vigil_proto::vigil::v1::PredictionRecord;

use crate::rows::RowError;

/// One item of the queue.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReviewItem {
    pub prediction_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub model_name: String,
    pub model_version: String,
    pub variant: i16,
    pub station_id: String,
    pub part_id: String,
    /// The automation policy that sent it to a person.
    pub policy: String,
    pub reason: String,
    /// The model's label, when the reviewer may see it.
    pub suggestion: Option<String>,
    pub score: Option<f32>,
    /// What `input` is (`image/png`); empty without input.
    pub content_type: String,
    pub input: Option<Vec<u8>>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub decision: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

impl ReviewItem {
    /// The review a prediction record asks for; None when it asks for none.
    pub fn from_record(r: &PredictionRecord) -> Option<Result<Self, RowError>> {
        let review = r.review.as_ref()?;
        Some(crate::rows::PredictionRow::from_record(r).map(|row| {
            let output = r.output.clone().unwrap_or_default();
            let suggestion = (review.show_suggestion && !output.label.is_empty()).then(|| output.label.clone());
            Self {
                prediction_id: row.prediction_id,
                created_at: row.time,
                model_name: row.model_name,
                model_version: row.model_version,
                variant: row.variant,
                station_id: row.station_id,
                part_id: row.part_id,
                policy: review.policy.clone(),
                reason: review.reason.clone(),
                score: suggestion.as_ref().and(row.score),
                suggestion,
                content_type: review.content_type.clone(),
                input: (!review.input.is_empty()).then(|| review.input.clone()),
                claimed_by: None,
                claimed_until: None,
                decided_by: None,
                decision: None,
                decided_at: None,
            }
        }))
    }
}

/// Why a decision was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no review item {0}")]
    NotFound(Uuid),
    #[error("item {id} was already decided by {by} ({decision}); nothing changed")]
    AlreadyDecided { id: Uuid, by: String, decision: String },
    #[error("item {id} is claimed by {by} until {until}; claim it with `vigil review next` after that")]
    ClaimedByOther { id: Uuid, by: String, until: DateTime<Utc> },
    #[error("a decision must not be empty")]
    EmptyDecision,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The queue's state for one model (or all).
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct ReviewStats {
    /// Items not decided yet.
    pub open: i64,
    /// Of those, under a live claim.
    pub claimed: i64,
    /// When the oldest open item was queued.
    pub oldest_open: Option<DateTime<Utc>>,
    pub decided: i64,
}

/// A reviewer's decision beside the model's label for the same prediction.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReviewedPrediction {
    pub decided_at: DateTime<Utc>,
    pub model_version: String,
    pub variant: i16,
    /// The model's label (empty when it was not consulted).
    pub predicted: String,
    pub decision: String,
}

/// The review side of a store.
pub trait ReviewStore: Clone + Send + Sync + 'static {
    /// Queues items; ones already queued are skipped. Returns the new ones.
    fn enqueue_reviews(&self, items: &[ReviewItem]) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Claims the oldest open item (of `model`, when given) not under another reviewer's live
    /// claim, until `now + lease`; the reviewer's own claim is handed back first.
    fn claim_review(
        &self,
        reviewer: &str,
        model: Option<&str>,
        lease: chrono::Duration,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<ReviewItem>, sqlx::Error>> + Send;
    /// Decides an item and stores the decision as its label (source `review:<reviewer>`).
    fn submit_review(
        &self,
        id: Uuid,
        reviewer: &str,
        decision: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), ReviewError>> + Send;
    /// One item, decided or not.
    fn review_item(&self, id: Uuid) -> impl Future<Output = Result<Option<ReviewItem>, sqlx::Error>> + Send;
    /// The queue's state for `model` (or every model) at `now`.
    fn review_stats(
        &self,
        model: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<ReviewStats, sqlx::Error>> + Send;
    /// Decisions of a model's items made in [since, until), with the model's own label.
    fn reviewed_predictions(
        &self,
        model: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<ReviewedPrediction>, sqlx::Error>> + Send;
}

const COLUMNS: &str = "prediction_id, created_at, model_name, model_version, variant, station_id, part_id, policy, \
     reason, suggestion, score, content_type, input, claimed_by, claimed_until, decided_by, decision, decided_at";

/// Implements [`ReviewStore`] for `$store`; `$lock` ends the statement that reads the row a
/// decision then writes, `$claim` the one that picks the item to claim (skipping rows another
/// reviewer is claiming), `$label` reads a prediction's label from its `output`.
macro_rules! review_backend {
    ($backend:ident, $store:ty, $lock:literal, $claim:literal, $label:literal) => {
        mod $backend {
            use super::*;

            impl ReviewStore for $store {
                async fn enqueue_reviews(&self, items: &[ReviewItem]) -> Result<u64, sqlx::Error> {
                    let mut tx = self.pool().begin().await?;
                    let mut inserted = 0;
                    for r in items {
                        inserted += sqlx::query(&format!(
                            "INSERT INTO review_items ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                             $11, $12, $13, NULL, NULL, NULL, NULL, NULL) ON CONFLICT (prediction_id) DO NOTHING"
                        ))
                        .bind(r.prediction_id)
                        .bind(r.created_at)
                        .bind(&r.model_name)
                        .bind(&r.model_version)
                        .bind(r.variant)
                        .bind(&r.station_id)
                        .bind(&r.part_id)
                        .bind(&r.policy)
                        .bind(&r.reason)
                        .bind(&r.suggestion)
                        .bind(r.score)
                        .bind(&r.content_type)
                        .bind(&r.input)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    }
                    tx.commit().await?;
                    Ok(inserted)
                }

                async fn claim_review(
                    &self,
                    reviewer: &str,
                    model: Option<&str>,
                    lease: chrono::Duration,
                    now: DateTime<Utc>,
                ) -> Result<Option<ReviewItem>, sqlx::Error> {
                    sqlx::query_as(&format!(
                        "UPDATE review_items SET claimed_by = $1, claimed_until = $2 WHERE prediction_id = \
                         (SELECT prediction_id FROM review_items WHERE decided_at IS NULL \
                            AND (CAST($4 AS TEXT) IS NULL OR model_name = $4) \
                            AND (claimed_until IS NULL OR claimed_until <= $3 OR claimed_by = $1) \
                          ORDER BY coalesce(claimed_by = $1, false) DESC, created_at LIMIT 1{}) \
                         RETURNING {COLUMNS}",
                        $claim
                    ))
                    .bind(reviewer)
                    .bind(now + lease)
                    .bind(now)
                    .bind(model)
                    .fetch_optional(self.pool())
                    .await
                }

                async fn submit_review(
                    &self,
                    id: Uuid,
                    reviewer: &str,
                    decision: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), ReviewError> {
                    if decision.trim().is_empty() {
                        return Err(ReviewError::EmptyDecision);
                    }
                    let mut tx = self.pool().begin().await?;
                    let item: Option<ReviewItem> = sqlx::query_as(&format!(
                        "SELECT {COLUMNS} FROM review_items WHERE prediction_id = $1{}",
                        $lock
                    ))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(item) = item else { return Err(ReviewError::NotFound(id)) };
                    if let (Some(by), Some(decision)) = (item.decided_by, item.decision) {
                        return Err(ReviewError::AlreadyDecided { id, by, decision });
                    }
                    if let (Some(by), Some(until)) = (item.claimed_by, item.claimed_until)
                        && by != reviewer
                        && until > now
                    {
                        return Err(ReviewError::ClaimedByOther { id, by, until });
                    }
                    sqlx::query(
                        "UPDATE review_items SET decided_by = $2, decision = $3, decided_at = $4 \
                         WHERE prediction_id = $1",
                    )
                    .bind(id)
                    .bind(reviewer)
                    .bind(decision)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO labels (label_id, prediction_id, label, time, source) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(id)
                    .bind(decision)
                    .bind(now)
                    .bind(format!("review:{reviewer}"))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn review_item(&self, id: Uuid) -> Result<Option<ReviewItem>, sqlx::Error> {
                    sqlx::query_as(&format!("SELECT {COLUMNS} FROM review_items WHERE prediction_id = $1"))
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                }

                async fn review_stats(&self, model: Option<&str>, now: DateTime<Utc>) -> Result<ReviewStats, sqlx::Error> {
                    sqlx::query_as(
                        "SELECT \
                           coalesce(sum(CASE WHEN decided_at IS NULL THEN 1 ELSE 0 END), 0) AS open, \
                           coalesce(sum(CASE WHEN decided_at IS NULL AND claimed_until > $2 THEN 1 ELSE 0 END), 0) \
                             AS claimed, \
                           min(CASE WHEN decided_at IS NULL THEN created_at END) AS oldest_open, \
                           coalesce(sum(CASE WHEN decided_at IS NULL THEN 0 ELSE 1 END), 0) AS decided \
                         FROM review_items WHERE CAST($1 AS TEXT) IS NULL OR model_name = $1",
                    )
                    .bind(model)
                    .bind(now)
                    .fetch_one(self.pool())
                    .await
                }

                async fn reviewed_predictions(
                    &self,
                    model: &str,
                    since: DateTime<Utc>,
                    until: DateTime<Utc>,
                ) -> Result<Vec<ReviewedPrediction>, sqlx::Error> {
                    sqlx::query_as(&format!(
                        "SELECT r.decided_at, p.model_version, p.variant, {} AS predicted, r.decision \
                         FROM review_items r JOIN predictions p ON p.prediction_id = r.prediction_id \
                         WHERE r.model_name = $1 AND r.decided_at >= $2 AND r.decided_at < $3 \
                         ORDER BY r.decided_at",
                        $label
                    ))
                    .bind(model)
                    .bind(since)
                    .bind(until)
                    .fetch_all(self.pool())
                    .await
                }
            }
        }
    };
}

review_backend!(postgres, crate::PgStore, " FOR UPDATE", " FOR UPDATE SKIP LOCKED", "coalesce(p.output->>'label', '')");
review_backend!(sqlite, crate::SqliteStore, "", "", "coalesce(json_extract(p.output, '$.label'), '')");
