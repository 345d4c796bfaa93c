//! Monitoring statements for SQLite (the embedded default). One writer commits at a time, so
//! rowids grow in commit order and serve as the rollup cursor.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{
    AlertEvent, AlertRow, AlertStore, Delivery, FeedbackCount, LabeledCount, Lease, LeaseStore, MergeFn, OutcomeQuery,
    OutcomeStore, PredictionRef, RollupBatch, RollupInput, RollupQuery, RollupStore, ShadowCount, StoredRollup,
    bind_alert,
};
use crate::SqliteStore;

const CURSOR: &str = "predictions";

const EVENT_COLUMNS: &str =
    "event_id, alert_key, rule, model_name, severity, state, value, threshold, time, message, attempts";

impl RollupStore for SqliteStore {
    async fn rollup_cursor(&self) -> Result<i64, sqlx::Error> {
        let c: Option<i64> = sqlx::query_scalar("SELECT cursor FROM rollup_cursor WHERE name = ?")
            .bind(CURSOR)
            .fetch_optional(self.pool())
            .await?;
        Ok(c.unwrap_or(0))
    }

    async fn read_for_rollup(&self, cursor: i64, max_rows: usize) -> Result<RollupBatch, sqlx::Error> {
        let fetched = sqlx::query_as::<_, RowWithId>(
            "SELECT rowid AS row_id, model_name, model_version, variant, time, request_time, features, score, \
               output_null, verdict, decision, queue_time_us, compute_time_us, status, stage, \
               coalesce(json_extract(output, '$.label'), '') AS label \
             FROM predictions WHERE rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind(cursor)
        .bind(max_rows as i64)
        .fetch_all(self.pool())
        .await?;
        let next_cursor = fetched.last().map_or(cursor, |r| r.row_id);
        Ok(RollupBatch { rows: fetched.into_iter().map(|r| r.input).collect(), next_cursor })
    }

    async fn apply_rollups(
        &self,
        cursor: i64,
        next_cursor: i64,
        deltas: Vec<StoredRollup>,
        merge: &MergeFn,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.write_transaction().await?;
        let stored: Option<i64> = sqlx::query_scalar("SELECT cursor FROM rollup_cursor WHERE name = ?")
            .bind(CURSOR)
            .fetch_optional(&mut *tx)
            .await?;
        if stored.unwrap_or(0) != cursor {
            return Ok(false);
        }
        for d in deltas {
            let k = &d.key;
            let existing: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT body FROM rollups WHERE model_name = ? AND resolution_s = ? AND window_start = ? \
                 AND model_version = ? AND variant = ?",
            )
            .bind(&k.model_name)
            .bind(k.resolution_s)
            .bind(k.window_start)
            .bind(&k.model_version)
            .bind(k.variant)
            .fetch_optional(&mut *tx)
            .await?;
            let body = match existing {
                Some(mut body) => {
                    merge(&mut body, &d.body);
                    body
                }
                None => d.body,
            };
            sqlx::query(
                "INSERT OR REPLACE INTO rollups (model_name, resolution_s, window_start, model_version, variant, body) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.model_name)
            .bind(k.resolution_s)
            .bind(k.window_start)
            .bind(&k.model_version)
            .bind(k.variant)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("INSERT OR REPLACE INTO rollup_cursor (name, cursor) VALUES (?, ?)")
            .bind(CURSOR)
            .bind(next_cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn read_rollups(&self, q: &RollupQuery) -> Result<Vec<StoredRollup>, sqlx::Error> {
        let mut b: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT window_start, model_version, variant, body FROM rollups WHERE model_name = ");
        b.push_bind(&q.model_name).push(" AND resolution_s = ").push_bind(q.resolution_s);
        b.push(" AND window_start >= ").push_bind(q.since).push(" AND window_start < ").push_bind(q.until);
        if let Some(v) = &q.model_version {
            b.push(" AND model_version = ").push_bind(v);
        }
        if let Some(v) = q.variant {
            b.push(" AND variant = ").push_bind(v);
        }
        b.push(" ORDER BY window_start");
        let rows: Vec<super::RollupRow> = b.build_query_as().fetch_all(self.pool()).await?;
        Ok(super::stored_rollups(q, rows))
    }

    async fn rollup_models(
        &self,
        resolution_s: u32,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(super::ROLLUP_MODELS).bind(i64::from(resolution_s)).bind(since).fetch_all(self.pool()).await
    }
}

impl OutcomeStore for SqliteStore {
    async fn shadow_counts(&self, q: &OutcomeQuery) -> Result<Vec<ShadowCount>, sqlx::Error> {
        let sql = shadow_counts_sql(&window_sqlite("c.time", "$6"));
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn labeled_counts(&self, q: &OutcomeQuery) -> Result<Vec<LabeledCount>, sqlx::Error> {
        // Times are stored as sqlx writes them (fixed-width UTC text), so text order is time
        // order and the window is compared in SQL.
        let sql = format!(
            "SELECT {window} AS window_s, r.predicted, r.actual, r.text_output, count(*) AS count, \
               coalesce(sum((julianday(r.label_time) - julianday(r.time)) * 86400.0), 0.0) AS lag_s \
             FROM (SELECT p.time, \
                     coalesce(nullif(json_extract(p.output, '$.label'), ''), json_extract(p.output, '$.text'), '') \
                       AS predicted, l.label AS actual, l.time AS label_time, \
                     (json_type(p.output, '$.text') IS NOT NULL \
                      OR (coalesce(json_extract(p.output, '$.label'), '') = '' AND p.status = 1)) AS text_output \
                   FROM predictions p JOIN labels l ON l.prediction_id = p.prediction_id \
                   WHERE p.model_name = $1 AND p.time >= $2 AND p.time < $3 \
                     AND ($4 IS NULL OR p.model_version = $4) AND ($5 IS NULL OR p.variant = $5) \
                     AND l.label_id = (SELECT l2.label_id FROM labels l2 WHERE l2.prediction_id = p.prediction_id \
                                       AND ($7 IS NULL OR julianday(l2.time) < julianday($7)) \
                                       ORDER BY l2.time DESC, l2.label_id DESC LIMIT 1) \
                     AND julianday(l.time) >= julianday($2) - {skew} / 86400.0) r \
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            window = window_sqlite("r.time", "$6"),
            skew = super::LATE_CLOCK_ALLOWANCE_S,
        );
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn feedback_counts(&self, q: &OutcomeQuery) -> Result<Vec<FeedbackCount>, sqlx::Error> {
        let sql = format!(
            "SELECT {window} AS window_s, f.kind, count(*) AS count \
             FROM feedback f JOIN predictions p ON p.prediction_id = f.prediction_id \
             WHERE julianday(f.time) >= julianday($2) - {skew} / 86400.0 \
               AND ($7 IS NULL OR julianday(f.time) < julianday($7)) \
               AND p.model_name = $1 AND p.time >= $2 AND p.time < $3 \
               AND ($4 IS NULL OR p.model_version = $4) AND ($5 IS NULL OR p.variant = $5) \
             GROUP BY 1, 2 ORDER BY 1, 2",
            window = window_sqlite("p.time", "$6"),
            skew = super::LATE_CLOCK_ALLOWANCE_S,
        );
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn prediction_refs(&self, ids: &[Uuid]) -> Result<Vec<PredictionRef>, sqlx::Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT p.prediction_id, p.model_name, p.model_version, \
                   (SELECT label FROM labels l WHERE l.prediction_id = p.prediction_id ORDER BY l.time DESC, l.label_id DESC LIMIT 1) \
                     AS latest_label FROM predictions p WHERE p.prediction_id IN (",
            );
            let mut sep = b.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            b.push(")");
            out.extend(b.build_query_as::<PredictionRef>().fetch_all(self.pool()).await?);
        }
        Ok(out)
    }
}

impl AlertStore for SqliteStore {
    async fn load_alerts(&self) -> Result<Vec<AlertRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT alert_key, rule, model_name, metric, severity, state, value, threshold, since, message \
             FROM alerts ORDER BY alert_key",
        )
        .fetch_all(self.pool())
        .await
    }

    async fn save_alert(&self, a: &AlertRow, notify: bool) -> Result<(), sqlx::Error> {
        let mut tx = self.write_transaction().await?;
        let columns = "alert_key, rule, model_name, metric, severity, state, value, threshold";
        bind_alert!(
            sqlx::query(&format!(
                "INSERT OR REPLACE INTO alerts ({columns}, since, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )),
            a
        )
        .execute(&mut *tx)
        .await?;
        bind_alert!(
            sqlx::query(&format!(
                "INSERT INTO alert_events ({columns}, time, message, notify) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )),
            a
        )
        .bind(notify)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn unsent_alert_events(&self, limit: i64) -> Result<Vec<AlertEvent>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events WHERE notify AND notified_at IS NULL ORDER BY event_id LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    async fn mark_alert_event(&self, event_id: i64, outcome: Delivery) -> Result<(), sqlx::Error> {
        let (sent, abandoned, error) = outcome.columns();
        sqlx::query(
            "UPDATE alert_events SET attempts = attempts + 1, last_error = ?, notified_at = ?, \
               notify = notify AND NOT ? WHERE event_id = ?",
        )
        .bind(error)
        .bind(sent.then(Utc::now))
        .bind(abandoned)
        .bind(event_id)
        .execute(self.pool())
        .await
        .map(drop)
    }

    async fn alert_history(&self, limit: i64) -> Result<Vec<AlertEvent>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM alert_events ORDER BY event_id DESC LIMIT ?"))
            .bind(limit)
            .fetch_all(self.pool())
            .await
    }
}

impl LeaseStore for SqliteStore {
    /// A lock on `<database file>.lease-<role>`, held by one open file in all the processes
    /// sharing the database (the monitor, `vigil retrain work`); a database in memory serves
    /// one process, which always holds it.
    async fn try_lease(&self, role: &str) -> Result<Option<Lease>, sqlx::Error> {
        let Some(database) = self.file() else { return Ok(Some(Lease::Local)) };
        let mut path = database.as_os_str().to_owned();
        path.push(format!(".lease-{role}"));
        // Created by the first process; one that may not write it (another user's, a
        // read-only mount) locks it read-only: a lock needs no write access.
        let file = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(30) => {
                std::fs::File::open(&path)?
            }
            Err(e) => return Err(e.into()),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(Lease::File(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

#[derive(sqlx::FromRow)]
struct RowWithId {
    row_id: i64,
    #[sqlx(flatten)]
    input: RollupInput,
}

/// The start of the window of `resolution` seconds (an SQL parameter) holding `time`, in seconds
/// since the epoch (floored, before 1970 too). The fraction is cut off first: SQLite rounds a
/// time to the millisecond, which would move the last half millisecond of a window into the
/// next (times are written `YYYY-MM-DDTHH:MM:SS.f+00:00`).
fn window_sqlite(time: &str, resolution: &str) -> String {
    let seconds = format!("CAST(strftime('%s', substr({time}, 1, 19)) AS INTEGER)");
    format!("({seconds} - (({seconds} % {resolution}) + {resolution}) % {resolution})")
}

/// Shadow predictions ($1 model, [$2, $3), version $4 when given; $5 is not used) paired with the primary's by trace id and item rank,
/// with the latest label of the primary's prediction, counted by `window` and shadow version.
fn shadow_counts_sql(window: &str) -> String {
    format!(
        "WITH s AS (SELECT trace_id, model_version, time, status, {answer} AS label, \
                      row_number() OVER (PARTITION BY trace_id, model_version ORDER BY prediction_id) AS item \
                    FROM predictions \
                    WHERE model_name = $1 AND variant = 3 AND trace_id <> '' AND time >= $2 AND time < $3 \
                      AND ($4 IS NULL OR model_version = $4)), \
              p AS (SELECT prediction_id, trace_id, status, {answer} AS label, \
                      (json_type(output, '$.text') IS NOT NULL \
                       OR coalesce(json_extract(output, '$.label'), '') = '') AS text_output, \
                      row_number() OVER (PARTITION BY trace_id ORDER BY prediction_id) AS item \
                    FROM predictions WHERE model_name = $1 AND variant <> 3 AND trace_id IN (SELECT trace_id FROM s)), \
              c AS (SELECT s.time, s.model_version AS shadow_version, s.status = 1 AS shadow_ok, \
                      (s.status = 1 AND s.label = p.label) AS agreed, s.label AS shadow_label, \
                      p.text_output, p.label AS primary_label, \
                      (SELECT l.label FROM labels l WHERE l.prediction_id = p.prediction_id \
                         AND ($7 IS NULL OR julianday(l.time) < julianday($7)) \
                       ORDER BY l.time DESC, l.label_id DESC LIMIT 1) AS actual \
                    FROM s JOIN p ON p.trace_id = s.trace_id AND p.item = s.item WHERE p.status = 1) \
         SELECT {window} AS window_s, c.shadow_version, \
           CASE WHEN {apart} THEN c.shadow_label END AS shadow_text, \
           CASE WHEN {apart} THEN c.primary_label END AS primary_text, \
           CASE WHEN {apart} THEN c.actual END AS actual_text, count(*) AS compared, \
           sum(CASE WHEN c.agreed THEN 1 ELSE 0 END) AS agreed, \
           sum(CASE WHEN c.shadow_ok THEN 0 ELSE 1 END) AS shadow_failed, count(c.actual) AS labeled, \
           sum(CASE WHEN c.shadow_ok AND c.shadow_label = c.actual THEN 1 ELSE 0 END) AS shadow_correct \
         FROM c GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
        // A text model (speech recognition) answers in `text`, its label left empty.
        answer = "coalesce(nullif(json_extract(output, '$.label'), ''), json_extract(output, '$.text'), '')",
        apart = super::postgres::TEXT_PAIRS_APART,
    )
}
