//! Keeping records no longer than needed: rows older than a cut-off deleted in bounded
//! batches (each a short statement of its own, so that the loggers' inserts never wait for
//! more than one batch), fine rollups dropped after a while, and everything one subject (a
//! station, a device, a part) left in the log deleted on request, with an audit entry. One copy
//! of each statement serves both stores.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::postgres::PgStore;
use crate::registry::{AuditEvent, Change};

use crate::sqlite::SqliteStore;

/// A table whose rows expire by their own time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiring {
    /// `predictions`, by response time.
    Predictions,
    /// `labels`, by the time the label was given.
    Labels,
    /// `feedback`, by the event's time.
    Feedback,
    /// `dead_letters` (records no logger could decode, kept with their payload), by the time
    /// they were set aside.
    DeadLetters,
}

impl Expiring {
    /// The prediction log's tables.
    pub const LOG: [Expiring; 3] = [Expiring::Predictions, Expiring::Labels, Expiring::Feedback];

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Expiring::Predictions => "predictions",
            Expiring::Labels => "labels",
            Expiring::Feedback => "feedback",
            Expiring::DeadLetters => "dead_letters",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Expiring::Predictions => "prediction_id",
            Expiring::Labels => "label_id",
            Expiring::Feedback => "event_id",
            Expiring::DeadLetters => "id",
        }
    }
}

/// Whose records to delete: a column of the prediction log and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Station(String),
    Device(String),
    Part(String),
}

impl Subject {
    fn column(&self) -> &'static str {
        match self {
            Subject::Station(_) => "station_id",
            Subject::Device(_) => "device_id",
            Subject::Part(_) => "part_id",
        }
    }

    fn value(&self) -> &str {
        match self {
            Subject::Station(v) | Subject::Device(v) | Subject::Part(v) => v,
        }
    }

    /// The same kind of subject with its id changed by `f` (e.g. to the id's logged hash).
    pub fn map_id(&self, f: impl FnOnce(&str) -> String) -> Subject {
        match self {
            Subject::Station(v) => Subject::Station(f(v)),
            Subject::Device(v) => Subject::Device(f(v)),
            Subject::Part(v) => Subject::Part(f(v)),
        }
    }

    /// `device:cam-7`, as the audit log names it.
    pub fn describe(&self) -> String {
        let kind = self.column().trim_end_matches("_id");
        format!("{kind}:{}", self.value())
    }
}

/// What deleting a subject removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub predictions: u64,
    pub labels: u64,
    pub feedback: u64,
    pub review_items: u64,
    /// The subject's captured inputs, to delete from the capture store.
    pub captures: Vec<CapturedInput>,
}

impl Forgotten {
    /// Adds what another deletion removed.
    pub fn merge(&mut self, other: Forgotten) {
        self.predictions += other.predictions;
        self.labels += other.labels;
        self.feedback += other.feedback;
        self.review_items += other.review_items;
        self.captures.extend(other.captures);
    }
}

/// A captured input a deleted prediction named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedInput {
    pub prediction_id: Uuid,
    pub model_name: String,
    /// The object key of its bytes (`<model>/<sha256>`).
    pub key: String,
    /// Predictions of other subjects name the same bytes (captures are stored by content): only
    /// this prediction's metadata may go, the bytes stay for them.
    pub shared: bool,
}

/// Retention on a store.
pub trait RetentionStore: Clone + Send + Sync + 'static {
    /// Deletes at most `limit` rows of `table` older than `before`; the number deleted (fewer
    /// than `limit`: nothing older is left).
    fn expire(
        &self,
        table: Expiring,
        before: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Drops the raw input of at most `limit` review items decided before `before` (the
    /// decision, its reviewers and the label stay); returns how many it dropped.
    fn expire_review_inputs(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Deletes the rollups of `resolution_s` whose window started before `before` and, where
    /// `from` is given, at or after it, but those of the models in `keep_models`.
    fn expire_rollups(
        &self,
        resolution_s: i32,
        from: Option<DateTime<Utc>>,
        before: DateTime<Utc>,
        keep_models: &[String],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Deletes every prediction of `subject` with its labels, feedback and review items, in one
    /// transaction that also writes the audit event (`forget`, by `change.actor`).
    fn forget(
        &self,
        subject: &Subject,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<Forgotten, sqlx::Error>> + Send;
}

/// SQLite gives a new row the largest rowid in the table plus one, so the rowids of deleted
/// newest rows would come back, at or below the rollup cursor (or a batch in flight), where
/// rollups never read them. Before predictions are deleted, the floor new rows are numbered
/// above is raised to the largest rowid (see the SQLite store's `insert_batch`).
const SQLITE_RAISE_ROWID_FLOOR: &str = "UPDATE prediction_rowid_floor SET floor = \
     max(floor, (SELECT coalesce(max(rowid), 0) FROM predictions))";

/// A forget reads what it deletes (the captured inputs to delete after it) in several statements:
/// on Postgres they share one snapshot, so a batch the logger commits meanwhile is either wholly
/// seen (deleted, its captures listed) or not at all (kept, as if it came after). SQLite's
/// write transaction holds off every other writer already.
const POSTGRES_ONE_SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ";

/// How often a forget is tried when other transactions keep changing its rows.
const FORGET_ATTEMPTS: u32 = 5;

/// Postgres's "could not serialize access" (SQLSTATE 40001).
fn serialization_failure(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "40001")
}

macro_rules! retention_backend {
    ($store:ty, $audit:path, $before_deleting_predictions:expr, $forget_first:expr) => {
        impl RetentionStore for $store {
            async fn expire(&self, table: Expiring, before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
                let (name, key) = (table.table(), table.key());
                let mut tx = self.write_transaction().await?;
                let first: Option<&str> = $before_deleting_predictions;
                if let (Expiring::Predictions, Some(statement)) = (table, first) {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                let deleted = sqlx::query(&format!(
                    "DELETE FROM {name} WHERE {key} IN (SELECT {key} FROM {name} WHERE time < $1 LIMIT $2)"
                ))
                .bind(before)
                .bind(limit)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(deleted.rows_affected())
            }

            async fn expire_review_inputs(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
                let dropped = sqlx::query(
                    "UPDATE review_items SET input = NULL, content_type = '' WHERE prediction_id IN \
                     (SELECT prediction_id FROM review_items WHERE decided_at < $1 AND input IS NOT NULL LIMIT $2)",
                )
                .bind(before)
                .bind(limit)
                .execute(self.pool())
                .await?;
                Ok(dropped.rows_affected())
            }

            async fn expire_rollups(
                &self,
                resolution_s: i32,
                from: Option<DateTime<Utc>>,
                before: DateTime<Utc>,
                keep_models: &[String],
            ) -> Result<u64, sqlx::Error> {
                let range = match from {
                    None => "resolution_s = $1 AND window_start < $2",
                    Some(_) => "resolution_s = $1 AND window_start < $2 AND window_start >= $3",
                };
                // Every model's rollups at once, or each model's but those kept.
                let mut models = vec![None];
                if !keep_models.is_empty() {
                    let present = format!("SELECT DISTINCT model_name FROM rollups WHERE {range}");
                    let query = sqlx::query_scalar::<_, String>(&present).bind(resolution_s).bind(before);
                    let query = match from {
                        Some(from) => query.bind(from),
                        None => query,
                    };
                    let present = query.fetch_all(self.pool()).await?;
                    models = present.into_iter().filter(|m| !keep_models.contains(m)).map(Some).collect();
                }
                let mut deleted = 0;
                for model in models {
                    let next = if from.is_some() { 4 } else { 3 };
                    let sql = match model {
                        None => format!("DELETE FROM rollups WHERE {range}"),
                        Some(_) => format!("DELETE FROM rollups WHERE {range} AND model_name = ${next}"),
                    };
                    let query = sqlx::query(&sql).bind(resolution_s).bind(before);
                    let query = match from {
                        Some(from) => query.bind(from),
                        None => query,
                    };
                    let query = match model {
                        Some(model) => query.bind(model),
                        None => query,
                    };
                    deleted += query.execute(self.pool()).await?.rows_affected();
                }
                Ok(deleted)
            }

            async fn forget(&self, subject: &Subject, change: &Change<'_>) -> Result<Forgotten, sqlx::Error> {
                // Postgres refuses a forget whose rows another transaction changed after its
                // snapshot (a claim, an expiry): it is run again on a fresh one.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let outcome: Result<Forgotten, sqlx::Error> = async {
                        let column = subject.column();
                        let of_subject = format!("SELECT prediction_id FROM predictions WHERE {column} = $1");
                        let mut tx = self.write_transaction().await?;
                        let isolation: Option<&str> = $forget_first;
                        if let Some(statement) = isolation {
                            sqlx::query(statement).execute(&mut *tx).await?;
                        }
                        let captures: Vec<(Uuid, String, String)> = sqlx::query_as(&format!(
                            "SELECT prediction_id, model_name, capture FROM predictions WHERE {column} = $1 AND capture <> ''"
                        ))
                        .bind(subject.value())
                        .fetch_all(&mut *tx)
                        .await?;
                        // Bytes other subjects' predictions name as well, in the same transaction.
                        let shared: Vec<(String,)> = sqlx::query_as(&format!(
                            "SELECT DISTINCT capture FROM predictions WHERE {column} <> $1 AND capture IN \
                             (SELECT capture FROM predictions WHERE {column} = $1 AND capture <> '')"
                        ))
                        .bind(subject.value())
                        .fetch_all(&mut *tx)
                        .await?;
                        let shared: std::collections::HashSet<String> = shared.into_iter().map(|(key,)| key).collect();
                        let first: Option<&str> = $before_deleting_predictions;
                        if let Some(statement) = first {
                            sqlx::query(statement).execute(&mut *tx).await?;
                        }
                        let mut delete = async |statement: String| -> Result<u64, sqlx::Error> {
                            let done = sqlx::query(&statement).bind(subject.value()).execute(&mut *tx).await?;
                            Ok(done.rows_affected())
                        };
                        let labels = delete(format!("DELETE FROM labels WHERE prediction_id IN ({of_subject})")).await?;
                        let feedback = delete(format!("DELETE FROM feedback WHERE prediction_id IN ({of_subject})")).await?;
                        for table in ["review_decisions", "review_claims"] {
                            delete(format!("DELETE FROM {table} WHERE prediction_id IN ({of_subject})")).await?;
                        }
                        let review_items =
                            delete(format!("DELETE FROM review_items WHERE prediction_id IN ({of_subject})")).await?;
                        let predictions = delete(format!("DELETE FROM predictions WHERE {column} = $1")).await?;
                        let reason = format!(
                            "{}; {predictions} predictions, {labels} labels, {feedback} feedback events, {review_items} review items",
                            change.reason
                        );
                        let event = AuditEvent {
                            id: Uuid::now_v7(),
                            time: change.at,
                            actor: change.actor.to_string(),
                            action: "forget".into(),
                            subject: subject.describe(),
                            from_state: String::new(),
                            to_state: String::new(),
                            reason,
                        };
                        $audit(&mut tx, &event).await?;
                        tx.commit().await?;
                        let captures = captures
                            .into_iter()
                            .map(|(prediction_id, model_name, key)| CapturedInput {
                                prediction_id,
                                model_name,
                                shared: shared.contains(&key),
                                key,
                            })
                            .collect();
                        Ok(Forgotten { predictions, labels, feedback, review_items, captures })
                    }
                    .await;
                    match outcome {
                        Err(e) if attempts < FORGET_ATTEMPTS && serialization_failure(&e) => continue,
                        outcome => return outcome,
                    }
                }
            }
        }
    };
}

// Postgres reads rollups by transaction id, which never comes back.
retention_backend!(PgStore, crate::registry::backends::postgres::audit, None, Some(POSTGRES_ONE_SNAPSHOT));
retention_backend!(SqliteStore, crate::registry::backends::sqlite::audit, Some(SQLITE_RAISE_ROWID_FLOOR), None);
