//! The SQLite store of the embedded default (`vigil up`): the same rows and queries as
//! Postgres, in one file, no server.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use crate::query::{MAX_QUERY_ROWS, PredictionFilter, PredictionSummary};
use crate::rows::{DeadLetterRow, FeedbackRow, LabelRow, PredictionRow};
use crate::store::PredictionStore;

/// The embedded schema, from `migrations/sqlite/`.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Rows per INSERT statement (SQLite allows 32,766 bound values; a row binds 25).
const ROWS_PER_STATEMENT: usize = 1_000;

/// A SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file (None in memory): leases are locks on files beside it.
    file: Option<std::path::PathBuf>,
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let filename = options.get_filename();
        // sqlx names an in-memory database `file:sqlx-in-memory-<n>`; `?mode=memory` leaves
        // the name empty.
        let in_memory = filename.as_os_str().is_empty()
            || filename.as_os_str() == ":memory:"
            || filename.to_string_lossy().starts_with("file:")
            || url.contains("mode=memory");
        let file = (!in_memory).then(|| filename.to_path_buf());
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        Ok(Self { pool, file })
    }

    /// The database file; None for a database in memory.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Opens the database file at `path`, creating its folder.
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Self::connect(&format!("sqlite://{}", path.display())).await
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that will write: it takes SQLite's write lock at `BEGIN IMMEDIATE`, so
    /// concurrent writers wait (up to the busy timeout) instead of failing with "database is
    /// locked" when a read would turn into a write.
    pub async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl PredictionStore for SqliteStore {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        SQLITE_MIGRATOR.run(&self.pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }

    /// Inserts predictions and labels in one transaction; existing ids are skipped.
    async fn insert_batch(
        &self,
        predictions: &[PredictionRow],
        labels: &[LabelRow],
    ) -> Result<(u64, u64), sqlx::Error> {
        let mut tx = self.write_transaction().await?;
        let mut inserted_predictions = 0;
        // Numbered above every rowid ever handed out, deleted ones included (see the migration
        // `prediction_rowid_floor`): the rollups read by rowid and must never see one again.
        let mut next_rowid: i64 = sqlx::query_scalar(
            "SELECT max((SELECT coalesce(max(rowid), 0) FROM predictions), \
                        (SELECT coalesce(max(floor), 0) FROM prediction_rowid_floor)) + 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        for chunk in predictions.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO predictions (rowid, prediction_id, time, request_time, capture_time, trace_id, server_id, \
                 station_id, device_id, part_id, request_id, api, model_name, model_version, variant, deployment_id, features, \
                 output, score, output_null, verdict, decision, queue_time_us, compute_time_us, status, error, stage, capture) ",
            );
            q.push_values(chunk, |mut b, r| {
                next_rowid += 1;
                b.push_bind(next_rowid - 1)
                    .push_bind(r.prediction_id)
                    .push_bind(r.time)
                    .push_bind(r.request_time)
                    .push_bind(r.capture_time)
                    .push_bind(r.trace_id.clone())
                    .push_bind(r.server_id.clone())
                    .push_bind(r.station_id.clone())
                    .push_bind(r.device_id.clone())
                    .push_bind(r.part_id.clone())
                    .push_bind(r.request_id.clone())
                    .push_bind(r.api.clone())
                    .push_bind(r.model_name.clone())
                    .push_bind(r.model_version.clone())
                    .push_bind(r.variant)
                    .push_bind(r.deployment_id.clone())
                    .push_bind(r.features.to_string())
                    .push_bind(r.output.to_string())
                    .push_bind(r.score)
                    .push_bind(r.output_null)
                    .push_bind(r.verdict)
                    .push_bind(r.decision)
                    .push_bind(r.queue_time_us)
                    .push_bind(r.compute_time_us)
                    .push_bind(r.status)
                    .push_bind(r.error.clone())
                    .push_bind(r.stage.clone())
                    .push_bind(r.capture.clone());
            });
            inserted_predictions += q.build().execute(&mut *tx).await?.rows_affected();
        }
        let mut inserted_labels = 0;
        for chunk in labels.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT OR IGNORE INTO labels (label_id, prediction_id, label, time, source) ");
            q.push_values(chunk, |mut b, l| {
                b.push_bind(l.label_id)
                    .push_bind(l.prediction_id)
                    .push_bind(l.label.clone())
                    .push_bind(l.time)
                    .push_bind(l.source.clone());
            });
            inserted_labels += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok((inserted_predictions, inserted_labels))
    }

    /// Inserts feedback events; events whose id exists are skipped. Returns the new rows.
    async fn insert_feedback(&self, rows: &[FeedbackRow]) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO feedback (event_id, prediction_id, kind, value, session_id, time) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.event_id)
                    .push_bind(r.prediction_id)
                    .push_bind(r.kind.clone())
                    .push_bind(r.value.clone())
                    .push_bind(r.session_id.clone())
                    .push_bind(r.time);
            });
            inserted += q.build().execute(&self.pool).await?.rows_affected();
        }
        Ok(inserted)
    }

    /// Inserts dead letters; ids already stored are skipped. Returns the new rows.
    async fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for r in rows {
            inserted += sqlx::query(
                "INSERT OR IGNORE INTO dead_letters (id, time, topic, source, reason, key, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.id)
            .bind(r.time)
            .bind(&r.topic)
            .bind(&r.source)
            .bind(&r.reason)
            .bind(&r.key)
            .bind(&r.payload)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(inserted)
    }

    /// The latest `limit` dead letters, newest first.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, time, topic, source, reason, key, payload FROM dead_letters ORDER BY time DESC, id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    /// Number of stored feedback events.
    async fn count_feedback(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM feedback").fetch_one(&self.pool).await
    }

    /// Number of logged predictions.
    async fn count_predictions(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM predictions").fetch_one(&self.pool).await
    }

    /// Every prediction id, in id order.
    async fn prediction_ids(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT prediction_id FROM predictions ORDER BY prediction_id").fetch_all(&self.pool).await
    }

    /// Runs an analyst query (keyset-paginated, at most [`MAX_QUERY_ROWS`] rows).
    async fn query_predictions(&self, f: &PredictionFilter) -> Result<Vec<PredictionSummary>, sqlx::Error> {
        predictions_page("", f).build_query_as::<PredictionSummary>().fetch_all(&self.pool).await
    }
}

/// One keyset page of an analyst query, after `prefix` (empty, or `EXPLAIN QUERY PLAN `).
fn predictions_page<'a>(prefix: &str, f: &'a PredictionFilter) -> QueryBuilder<'a, Sqlite> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(prefix);
    q.push(
        "SELECT p.prediction_id, p.time, p.station_id, p.model_name, p.model_version, p.score, p.verdict, \
         p.decision, p.status, p.features, \
         (SELECT label FROM labels l WHERE l.prediction_id = p.prediction_id ORDER BY l.time DESC, l.label_id DESC LIMIT 1) AS label, \
         p.capture FROM predictions p WHERE 1 = 1",
    );
    crate::push_filters!(q, f, "EXISTS (SELECT 1 FROM labels l WHERE l.prediction_id = p.prediction_id)");
    let limit = f.limit.clamp(1, MAX_QUERY_ROWS) as i64;
    q.push(" ORDER BY p.prediction_id LIMIT ").push_bind(limit);
    q
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// What SQLite plans for one page of `f`, a line per step.
    async fn plan(store: &SqliteStore, f: &PredictionFilter) -> Vec<String> {
        let steps: Vec<(i64, i64, i64, String)> =
            predictions_page("EXPLAIN QUERY PLAN ", f).build_query_as().fetch_all(&store.pool).await.unwrap();
        steps.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// A dataset export reads a model's window a page at a time in id order: each page must
    /// start at the last id read and stop after its rows, not read and sort the whole window
    /// (which made an export's time grow with the square of its rows).
    #[tokio::test]
    async fn a_models_pages_are_read_in_id_order_without_sorting_the_window() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let now = chrono::Utc::now();
        let page = PredictionFilter {
            since: Some(now - chrono::Duration::days(30)),
            until: Some(now),
            model_name: Some("scratch-detector".into()),
            variant: Some(0),
            after: Some(Uuid::now_v7()),
            limit: MAX_QUERY_ROWS,
            ..Default::default()
        };
        let labelled = PredictionFilter { has_label: Some(true), ..page.clone() };
        let one_version = PredictionFilter { model_version: Some("3".into()), ..page.clone() };
        for f in [page.clone(), labelled, one_version] {
            let steps = plan(&store, &f).await;
            assert!(
                steps.iter().any(|s| s.contains("predictions_model_id") && s.contains("prediction_id>?")),
                "the page starts at the last id read, within the model: {steps:?}"
            );
            assert!(!steps.iter().any(|s| s.contains("FOR ORDER BY")), "the window is sorted: {steps:?}");
        }
    }
}
