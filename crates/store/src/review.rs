//! The human review queue: items people decide (by the model's automation policy). An item
//! needs one decision, or a panel's: `reviews_required` people deciding it independently. A
//! reviewer claims the oldest open item they have not decided yet, with a lease; an item admits
//! as many live claims as decisions are still missing. A decision is accepted once per reviewer,
//! from one holding a claim or while a slot is free; when the decisions required are in and one
//! answer has a strict majority, the item is decided and that answer becomes its ground-truth
//! label in the same transaction (a tie asks one more reviewer). One copy of each statement, in
//! the `$N` placeholders both databases take, generated per backend.

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
    /// The reviewer who claimed it last, and until when.
    pub claimed_by: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
    /// Once decided: the reviewer, or a panel's reviewers (comma-separated), and the answer.
    pub decided_by: Option<String>,
    pub decision: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    /// How many people decide it independently (1: one person).
    pub reviews_required: i16,
}

impl ReviewItem {
    /// The review a prediction record asks for; None when it asks for none.
    pub fn from_record(r: &PredictionRecord) -> Option<Result<Self, RowError>> {
        let review = r.review.as_ref()?;
        let checked = [
            ("review.policy", &review.policy),
            ("review.reason", &review.reason),
            ("review.content_type", &review.content_type),
        ]
        .into_iter()
        .try_for_each(|(field, value)| crate::rows::text(field, value));
        Some(checked.and_then(|()| crate::rows::PredictionRow::from_record(r)).map(|row| {
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
                reviews_required: review.reviewers.clamp(1, MAX_REVIEWERS) as i16,
            }
        }))
    }
}

/// The most people one item may need (a panel's size).
pub const MAX_REVIEWERS: u32 = 15;

/// What an accepted decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The item is decided (by this decision, or its panel's majority) and labelled.
    Decided { decision: String },
    /// More of the panel must decide: `decisions` of `required` are in (a tie raises `required`).
    Awaiting { decisions: u32, required: u32 },
}

/// One reviewer's decision on an item of a panel or not, with the model's label and the
/// item's final decision (None while open).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReviewerDecision {
    pub prediction_id: Uuid,
    pub reviewer: String,
    pub decision: String,
    pub decided_at: DateTime<Utc>,
    pub reviews_required: i16,
    /// The model's label (empty when it was not consulted).
    pub predicted: String,
    pub final_decision: Option<String>,
}

/// Why a decision was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no review item {0}")]
    NotFound(Uuid),
    #[error("item {id} was already decided by {by} ({decision}); nothing changed")]
    AlreadyDecided { id: Uuid, by: String, decision: String },
    #[error("{by} already decided item {id} ({decision}); each reviewer decides an item once")]
    AlreadyDecidedByYou { id: Uuid, by: String, decision: String },
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
    /// Records `reviewer`'s decision on an item; when it completes the item (one reviewer, or a
    /// panel's majority), stores the answer as its label (source `review:<reviewers>`).
    fn submit_review(
        &self,
        id: Uuid,
        reviewer: &str,
        decision: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<ReviewOutcome, ReviewError>> + Send;
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
    /// Every reviewer's decision on a model's items made in [since, until).
    fn reviewer_decisions(
        &self,
        model: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<ReviewerDecision>, sqlx::Error>> + Send;
}

/// The answer with a strict majority of `decisions`, if one has it.
pub fn majority<'a>(decisions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut total = 0;
    for d in decisions {
        total += 1;
        match counts.iter_mut().find(|(answer, _)| *answer == d) {
            Some((_, n)) => *n += 1,
            None => counts.push((d, 1)),
        }
    }
    counts.into_iter().find(|&(_, n)| 2 * n > total).map(|(answer, _)| answer)
}

const COLUMNS: &str = "prediction_id, created_at, model_name, model_version, variant, station_id, part_id, policy, \
     reason, suggestion, score, content_type, input, claimed_by, claimed_until, decided_by, decision, decided_at, \
     reviews_required";

/// Open items `$1` may claim at `$2` (of model `$3`, when given): not decided by them, and
/// either under their live claim or with a slot free (live claims of others plus decisions fewer than
/// required); their own claims first, then the oldest.
const CLAIMABLE: &str = "FROM review_items r WHERE r.decided_at IS NULL \
       AND (CAST($3 AS TEXT) IS NULL OR r.model_name = $3) \
       AND NOT EXISTS (SELECT 1 FROM review_decisions d WHERE d.prediction_id = r.prediction_id AND d.reviewer = $1) \
       AND (EXISTS (SELECT 1 FROM review_claims c \
                    WHERE c.prediction_id = r.prediction_id AND c.reviewer = $1 AND c.claimed_until > $2) \
            OR (SELECT count(*) FROM review_claims c \
                WHERE c.prediction_id = r.prediction_id AND c.reviewer <> $1 AND c.claimed_until > $2) \
             + (SELECT count(*) FROM review_decisions d WHERE d.prediction_id = r.prediction_id) \
             < r.reviews_required) \
     ORDER BY EXISTS (SELECT 1 FROM review_claims c \
                      WHERE c.prediction_id = r.prediction_id AND c.reviewer = $1 AND c.claimed_until > $2) \
       DESC, r.created_at LIMIT 1";

/// What one attempt to claim an item came to.
enum Claim {
    /// The item claimed, or None when nothing is left to claim.
    Held(Option<Box<ReviewItem>>),
    /// The item picked was full once counted again: another reviewer's claim went in meanwhile.
    Taken,
}

/// Implements [`ReviewStore`] for `$store`; `$lock` ends the statement that reads the row a
/// decision then writes, `$claim` the one that picks the item to claim (skipping rows another
/// reviewer is claiming), `$label` reads a prediction's label from its `output`.
macro_rules! review_backend {
    ($backend:ident, $store:ty, $lock:literal, $claim:literal, $label:literal) => {
        mod $backend {
            use super::*;

            /// Claims the first item `reviewer` may claim, in one transaction. Postgres picks
            /// it under the statement's snapshot, which does not count a claim another reviewer
            /// committed after the statement began (though it waits for that claim's lock on
            /// the item's row): the item's claims are counted again in a statement of their own,
            /// a fresh snapshot with the row still locked, and an item found full is not taken.
            async fn claim_once(
                store: &$store,
                reviewer: &str,
                model: Option<&str>,
                lease: chrono::Duration,
                now: DateTime<Utc>,
            ) -> Result<Claim, sqlx::Error> {
                let mut tx = store.write_transaction().await?;
                // Items the reviewer holds already: theirs whatever the count.
                let held: Vec<(Uuid,)> =
                    sqlx::query_as("SELECT prediction_id FROM review_claims WHERE reviewer = $1 AND claimed_until > $2")
                        .bind(reviewer)
                        .bind(now)
                        .fetch_all(&mut *tx)
                        .await?;
                let claimed: Option<(Uuid,)> = sqlx::query_as(&format!(
                    "INSERT INTO review_claims (prediction_id, reviewer, claimed_until) \
                     SELECT r.prediction_id, $1, $4 {CLAIMABLE}{} \
                     ON CONFLICT (prediction_id, reviewer) DO UPDATE SET claimed_until = excluded.claimed_until \
                     RETURNING prediction_id",
                    $claim
                ))
                .bind(reviewer)
                .bind(now)
                .bind(model)
                .bind(now + lease)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((id,)) = claimed else { return Ok(Claim::Held(None)) };
                let renewed = held.contains(&(id,));
                let (full,): (bool,) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM review_claims c \
                             WHERE c.prediction_id = r.prediction_id AND c.reviewer <> $2 AND c.claimed_until > $3) \
                          + (SELECT count(*) FROM review_decisions d WHERE d.prediction_id = r.prediction_id) \
                          >= r.reviews_required \
                     FROM review_items r WHERE r.prediction_id = $1",
                )
                .bind(id)
                .bind(reviewer)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                if full && !renewed {
                    tx.rollback().await?;
                    return Ok(Claim::Taken);
                }
                let item = sqlx::query_as(&format!(
                    "UPDATE review_items SET claimed_by = $2, claimed_until = $3 WHERE prediction_id = $1 \
                     RETURNING {COLUMNS}"
                ))
                .bind(id)
                .bind(reviewer)
                .bind(now + lease)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Claim::Held(Some(Box::new(item))))
            }

            impl ReviewStore for $store {
                async fn enqueue_reviews(&self, items: &[ReviewItem]) -> Result<u64, sqlx::Error> {
                    let mut tx = self.write_transaction().await?;
                    let mut inserted = 0;
                    for r in items {
                        inserted += sqlx::query(&format!(
                            "INSERT INTO review_items ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                             $11, $12, $13, NULL, NULL, NULL, NULL, NULL, $14) ON CONFLICT (prediction_id) DO NOTHING"
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
                        .bind(r.reviews_required.max(1))
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
                    // An item found taken meanwhile is given up for the next one: each such
                    // round means another reviewer's claim went in.
                    loop {
                        if let Claim::Held(item) = claim_once(self, reviewer, model, lease, now).await? {
                            return Ok(item.map(|item| *item));
                        }
                    }
                }

                async fn submit_review(
                    &self,
                    id: Uuid,
                    reviewer: &str,
                    decision: &str,
                    now: DateTime<Utc>,
                ) -> Result<ReviewOutcome, ReviewError> {
                    if decision.trim().is_empty() {
                        return Err(ReviewError::EmptyDecision);
                    }
                    let mut tx = self.write_transaction().await?;
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
                    let decided: Vec<(String, String)> = sqlx::query_as(
                        "SELECT reviewer, decision FROM review_decisions WHERE prediction_id = $1 \
                         ORDER BY decided_at, reviewer",
                    )
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                    if let Some((_, earlier)) = decided.iter().find(|(by, _)| by == reviewer) {
                        let (by, decision) = (reviewer.to_string(), earlier.clone());
                        return Err(ReviewError::AlreadyDecidedByYou { id, by, decision });
                    }
                    let claims: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
                        "SELECT reviewer, claimed_until FROM review_claims \
                         WHERE prediction_id = $1 AND claimed_until > $2 ORDER BY claimed_until",
                    )
                    .bind(id)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                    let others: Vec<&(String, DateTime<Utc>)> = claims.iter().filter(|(by, _)| by != reviewer).collect();
                    let holds_claim = others.len() < claims.len();
                    if !holds_claim && others.len() + decided.len() >= item.reviews_required.max(1) as usize {
                        let (by, until) = others.first().map(|c| (*c).clone()).unwrap_or_else(|| ("(a panel)".into(), now));
                        return Err(ReviewError::ClaimedByOther { id, by, until });
                    }
                    sqlx::query(
                        "INSERT INTO review_decisions (prediction_id, reviewer, decision, decided_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(reviewer)
                    .bind(decision)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM review_claims WHERE prediction_id = $1 AND reviewer = $2")
                        .bind(id)
                        .bind(reviewer)
                        .execute(&mut *tx)
                        .await?;
                    let mut all = decided;
                    all.push((reviewer.to_string(), decision.to_string()));
                    let required = item.reviews_required.max(1) as usize;
                    let outcome = match majority(all.iter().map(|(_, d)| d.as_str())) {
                        Some(answer) if all.len() >= required => {
                            let by = all.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(",");
                            sqlx::query(
                                "UPDATE review_items SET decided_by = $2, decision = $3, decided_at = $4 \
                                 WHERE prediction_id = $1",
                            )
                            .bind(id)
                            .bind(&by)
                            .bind(answer)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "INSERT INTO labels (label_id, prediction_id, label, time, source) \
                                 VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(Uuid::now_v7())
                            .bind(id)
                            .bind(answer)
                            .bind(now)
                            .bind(format!("review:{by}"))
                            .execute(&mut *tx)
                            .await?;
                            ReviewOutcome::Decided { decision: answer.to_string() }
                        }
                        majority => {
                            // All in without a strict majority: one more reviewer breaks the tie
                            // (up to MAX_REVIEWERS; an item still tied then stays open, counted
                            // in the queue's open items, for a person to settle).
                            let required = if majority.is_none() && all.len() >= required {
                                (all.len() + 1).min(MAX_REVIEWERS as usize)
                            } else {
                                required
                            };
                            sqlx::query("UPDATE review_items SET reviews_required = $2 WHERE prediction_id = $1")
                                .bind(id)
                                .bind(required as i16)
                                .execute(&mut *tx)
                                .await?;
                            ReviewOutcome::Awaiting { decisions: all.len() as u32, required: required as u32 }
                        }
                    };
                    tx.commit().await?;
                    Ok(outcome)
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
                           coalesce(sum(CASE WHEN decided_at IS NULL AND EXISTS (SELECT 1 FROM review_claims c \
                             WHERE c.prediction_id = review_items.prediction_id AND c.claimed_until > $2) \
                             THEN 1 ELSE 0 END), 0) AS claimed, \
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

                async fn reviewer_decisions(
                    &self,
                    model: &str,
                    since: DateTime<Utc>,
                    until: DateTime<Utc>,
                ) -> Result<Vec<ReviewerDecision>, sqlx::Error> {
                    sqlx::query_as(&format!(
                        "SELECT d.prediction_id, d.reviewer, d.decision, d.decided_at, r.reviews_required, \
                           {} AS predicted, r.decision AS final_decision \
                         FROM review_decisions d JOIN review_items r ON r.prediction_id = d.prediction_id \
                         JOIN predictions p ON p.prediction_id = d.prediction_id \
                         WHERE r.model_name = $1 AND d.decided_at >= $2 AND d.decided_at < $3 \
                         ORDER BY d.decided_at, d.reviewer",
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

#[cfg(test)]
mod tests {
    use super::majority;

    #[test]
    fn a_majority_is_strict() {
        assert_eq!(majority(["refer", "refer", "home"]), Some("refer"));
        assert_eq!(majority(["refer"]), Some("refer"));
        assert_eq!(majority(["refer", "home"]), None, "a tie");
        assert_eq!(majority(["a", "b", "c"]), None);
        assert_eq!(majority(["a", "b", "a", "b", "b"]), Some("b"));
        assert_eq!(majority(Vec::<&str>::new()), None);
    }
}

review_backend!(postgres, crate::PgStore, " FOR UPDATE", " FOR UPDATE SKIP LOCKED", "coalesce(p.output->>'label', '')");
review_backend!(sqlite, crate::SqliteStore, "", "", "coalesce(json_extract(p.output, '$.label'), '')");
