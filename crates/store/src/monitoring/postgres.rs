//! Monitoring statements for Postgres.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    AlertEvent, AlertRow, AlertStore, Delivery, FeedbackCount, LEASE_CHECK_TIMEOUT, LEASE_SILENCE_RELEASE,
    LabeledCount, Lease, LeaseStore, MergeFn, OutcomeQuery, OutcomeStore, PredictionRef, RollupBatch, RollupInput,
    RollupKey, RollupQuery, RollupStore, ShadowCount, StoredRollup, bind_alert,
};
use crate::PgStore;

const CURSOR: &str = "predictions";

const ROLLUP_COLUMNS: &str = "model_name, model_version, variant, time, request_time, features, score, output_null, \
     verdict, decision, queue_time_us, compute_time_us, status, stage, coalesce(output->>'label', '') AS label";

/// The oldest transaction id that may still add predictions: the oldest transaction running in
/// this database (`pg_stat_activity`, read after the snapshot, and prepared two-phase ones), or
/// else the snapshot's xmax. Rows below it are final. Transactions in other databases never hold
/// it back; any long transaction in this one that has written does. `backend_xid` is 32 bits: it
/// takes xmax's epoch, or the one before when it would lie more than 2^31 above xmax (running
/// transactions may be above xmax, which is one past the latest completed). `backend_xid` is
/// shown to every role, also for sessions whose query is hidden from it (tested with a monitor
/// role of its own).
const HORIZON: &str = "WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax), \
     running AS ( \
       SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity \
        WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
       UNION ALL SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database = current_database()), \
     widened AS (SELECT ((s.xmax >> 32) << 32) | r.xid AS xid, s.xmax FROM s, running r) \
     SELECT LEAST((SELECT xmax FROM s), \
       coalesce((SELECT min(CASE WHEN xid > xmax + 2147483648 THEN xid - 4294967296 ELSE xid END) FROM widened), \
                (SELECT xmax FROM s)))";

const EVENT_COLUMNS: &str =
    "event_id, alert_key, rule, model_name, severity, state, value, threshold, time, message, attempts";

impl RollupStore for PgStore {
    async fn rollup_cursor(&self) -> Result<i64, sqlx::Error> {
        let c: Option<i64> = sqlx::query_scalar("SELECT cursor FROM rollup_cursor WHERE name = $1")
            .bind(CURSOR)
            .fetch_optional(self.pool())
            .await?;
        Ok(c.unwrap_or(0))
    }

    async fn read_for_rollup(&self, cursor: i64, max_rows: usize) -> Result<RollupBatch, sqlx::Error> {
        let mut tx = self.write_transaction().await?;
        let horizon: i64 = sqlx::query_scalar(HORIZON).fetch_one(&mut *tx).await?;
        if horizon <= cursor {
            return Ok(RollupBatch { rows: Vec::new(), next_cursor: cursor });
        }
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT min(ingest_xid)::text::bigint FROM predictions \
             WHERE ingest_xid >= $1::text::xid8 AND ingest_xid < $2::text::xid8",
        )
        .bind(cursor.to_string())
        .bind(horizon.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let Some(first) = first else {
            return Ok(RollupBatch { rows: Vec::new(), next_cursor: horizon });
        };
        let cut: Option<i64> = sqlx::query_scalar(
            "SELECT ingest_xid::text::bigint FROM predictions \
             WHERE ingest_xid >= $1::text::xid8 AND ingest_xid < $2::text::xid8 \
             ORDER BY ingest_xid OFFSET $3 LIMIT 1",
        )
        .bind(first.to_string())
        .bind(horizon.to_string())
        .bind(max_rows as i64)
        .fetch_optional(&mut *tx)
        .await?;
        // A batch ends at a transaction boundary, never splitting one transaction's rows; a
        // transaction larger than max_rows is taken whole.
        let upper = match cut {
            Some(x) if x == first => x + 1,
            Some(x) => x,
            None => horizon,
        };
        let rows = sqlx::query_as::<_, RollupInput>(&format!(
            "SELECT {ROLLUP_COLUMNS} FROM predictions \
             WHERE ingest_xid >= $1::text::xid8 AND ingest_xid < $2::text::xid8"
        ))
        .bind(cursor.to_string())
        .bind(upper.to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RollupBatch { rows, next_cursor: upper })
    }

    async fn apply_rollups(
        &self,
        cursor: i64,
        next_cursor: i64,
        deltas: Vec<StoredRollup>,
        merge: &MergeFn,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("INSERT INTO rollup_cursor (name, cursor) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
            .bind(CURSOR)
            .execute(&mut *tx)
            .await?;
        let stored: i64 = sqlx::query_scalar("SELECT cursor FROM rollup_cursor WHERE name = $1 FOR UPDATE")
            .bind(CURSOR)
            .fetch_one(&mut *tx)
            .await?;
        if stored != cursor {
            return Ok(false);
        }
        let mut deltas = deltas;
        deltas.sort_by(|a, b| a.key.cmp(&b.key));
        let cols = key_columns(&deltas);
        let existing: Vec<KeyedBody> = sqlx::query_as(
            "SELECT r.model_name, r.resolution_s, r.window_start, r.model_version, r.variant, r.body FROM rollups r \
             JOIN UNNEST($1::text[], $2::int[], $3::timestamptz[], $4::text[], $5::int2[]) \
               AS k(model_name, resolution_s, window_start, model_version, variant) \
             USING (model_name, resolution_s, window_start, model_version, variant) FOR UPDATE OF r",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored: HashMap<RollupKey, Vec<u8>> = existing
            .into_iter()
            .map(|(model_name, resolution_s, window_start, model_version, variant, body)| {
                (RollupKey { model_name, resolution_s, window_start, model_version, variant }, body)
            })
            .collect();
        let bodies: Vec<Vec<u8>> = deltas
            .iter()
            .map(|d| match stored.remove(&d.key) {
                Some(mut body) => {
                    merge(&mut body, &d.body);
                    body
                }
                None => d.body.clone(),
            })
            .collect();
        sqlx::query(
            "INSERT INTO rollups (model_name, resolution_s, window_start, model_version, variant, body) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::timestamptz[], $4::text[], $5::int2[], $6::bytea[]) \
             ON CONFLICT (model_name, resolution_s, window_start, model_version, variant) \
             DO UPDATE SET body = excluded.body, updated_at = now()",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE rollup_cursor SET cursor = $2 WHERE name = $1")
            .bind(CURSOR)
            .bind(next_cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn read_rollups(&self, q: &RollupQuery) -> Result<Vec<StoredRollup>, sqlx::Error> {
        let rows: Vec<super::RollupRow> = sqlx::query_as(
            "SELECT window_start, model_version, variant, body FROM rollups \
             WHERE model_name = $1 AND resolution_s = $2 AND window_start >= $3 AND window_start < $4 \
               AND ($5::text IS NULL OR model_version = $5) AND ($6::int2 IS NULL OR variant = $6) \
             ORDER BY window_start",
        )
        .bind(&q.model_name)
        .bind(q.resolution_s)
        .bind(q.since)
        .bind(q.until)
        .bind(q.model_version.as_deref())
        .bind(q.variant)
        .fetch_all(self.pool())
        .await?;
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

impl OutcomeStore for PgStore {
    async fn shadow_counts(&self, q: &OutcomeQuery) -> Result<Vec<ShadowCount>, sqlx::Error> {
        let sql = shadow_counts_sql(&window_pg("c.time", "$6"));
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn labeled_counts(&self, q: &OutcomeQuery) -> Result<Vec<LabeledCount>, sqlx::Error> {
        // Labels come after their predictions, so only labels since `since` (less the clock skew
        // allowed) can match.
        let sql = format!(
            "SELECT {window} AS window_s, r.predicted, r.actual, r.text_output, count(*) AS count, \
               coalesce(sum(extract(epoch FROM r.label_time - r.time)), 0)::float8 AS lag_s \
             FROM (SELECT p.time, coalesce(nullif(p.output->>'label', ''), p.output->>'text', '') AS predicted, \
                     l.label AS actual, l.time AS label_time, \
                     (p.output ? 'text' OR (coalesce(p.output->>'label', '') = '' AND p.status = 1)) AS text_output \
                   FROM (SELECT DISTINCT ON (prediction_id) prediction_id, label, time FROM labels \
                         WHERE time >= $2 - interval '{skew} seconds' \
                           AND ($7::timestamptz IS NULL OR time < $7) \
                         ORDER BY prediction_id, time DESC, label_id DESC) l \
                   JOIN predictions p ON p.prediction_id = l.prediction_id \
                   WHERE p.model_name = $1 AND p.time >= $2 AND p.time < $3 \
                     AND ($4::text IS NULL OR p.model_version = $4) AND ($5::smallint IS NULL OR p.variant = $5)) r \
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            window = window_pg("r.time", "$6"),
            skew = super::LATE_CLOCK_ALLOWANCE_S,
        );
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn feedback_counts(&self, q: &OutcomeQuery) -> Result<Vec<FeedbackCount>, sqlx::Error> {
        // Feedback follows its prediction, so only events since `since` (less the clock skew
        // allowed) can match.
        let sql = format!(
            "SELECT {window} AS window_s, f.kind, count(*) AS count \
             FROM feedback f JOIN predictions p ON p.prediction_id = f.prediction_id \
             WHERE f.time >= $2 - interval '{skew} seconds' AND ($7::timestamptz IS NULL OR f.time < $7) \
               AND p.model_name = $1 AND p.time >= $2 AND p.time < $3 \
               AND ($4::text IS NULL OR p.model_version = $4) AND ($5::smallint IS NULL OR p.variant = $5) \
             GROUP BY 1, 2 ORDER BY 1, 2",
            window = window_pg("p.time", "$6"),
            skew = super::LATE_CLOCK_ALLOWANCE_S,
        );
        super::bind_outcomes(sqlx::query_as(&sql), q).fetch_all(self.pool()).await
    }

    async fn prediction_refs(&self, ids: &[Uuid]) -> Result<Vec<PredictionRef>, sqlx::Error> {
        sqlx::query_as(
            "SELECT p.prediction_id, p.model_name, p.model_version, \
               (SELECT label FROM labels l WHERE l.prediction_id = p.prediction_id ORDER BY l.time DESC, l.label_id DESC LIMIT 1) \
                 AS latest_label \
             FROM predictions p WHERE p.prediction_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await
    }
}

impl AlertStore for PgStore {
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
        bind_alert!(
            sqlx::query(
                "INSERT INTO alerts (alert_key, rule, model_name, metric, severity, state, value, threshold, since, \
                   message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (alert_key) DO UPDATE SET rule = $2, model_name = $3, metric = $4, severity = $5, \
                   state = $6, value = $7, threshold = $8, since = $9, message = $10, updated_at = now()",
            ),
            a
        )
        .execute(&mut *tx)
        .await?;
        bind_alert!(
            sqlx::query(
                "INSERT INTO alert_events (alert_key, rule, model_name, metric, severity, state, value, threshold, \
                   time, message, notify) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            ),
            a
        )
        .bind(notify)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn unsent_alert_events(&self, limit: i64) -> Result<Vec<AlertEvent>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events WHERE notify AND notified_at IS NULL \
             ORDER BY event_id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    async fn mark_alert_event(&self, event_id: i64, outcome: Delivery) -> Result<(), sqlx::Error> {
        let (sent, abandoned, error) = outcome.columns();
        sqlx::query(
            "UPDATE alert_events SET attempts = attempts + 1, last_error = $3, \
               notified_at = CASE WHEN $2 THEN now() ELSE NULL END, notify = notify AND NOT $4 \
             WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(sent)
        .bind(error)
        .bind(abandoned)
        .execute(self.pool())
        .await
        .map(drop)
    }

    async fn alert_history(&self, limit: i64) -> Result<Vec<AlertEvent>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM alert_events ORDER BY event_id DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(self.pool())
            .await
    }
}

impl LeaseStore for PgStore {
    /// A session-level advisory lock on a connection of its own. The session asks the server
    /// to end it once its holder has been silent for [`LEASE_SILENCE_RELEASE`] (TCP keepalives
    /// and user timeout), so a holder cut off by the network frees the lease for another in
    /// bounded time. Bounded by [`LEASE_CHECK_TIMEOUT`].
    async fn try_lease(&self, role: &str) -> Result<Option<Lease>, sqlx::Error> {
        super::answered_within(LEASE_CHECK_TIMEOUT, " when taking a lease", take_lease(self.pool(), role)).await
    }
}

/// [`LeaseStore::try_lease`], unbounded. The connection is out of the pool from the start: a
/// lock lives as long as its session, which must close when the lease is dropped (releasing
/// it), or when this attempt is (cut off by its timeout, maybe after the lock was granted), and
/// never go back to the pool holding the lock.
async fn take_lease(pool: &sqlx::PgPool, role: &str) -> Result<Option<Lease>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let silence = LEASE_SILENCE_RELEASE.as_secs();
    // Silent 30 s, then a probe every 10 s: ended after 90 s without an answer. Not ended
    // earlier for being idle between checks (`idle_session_timeout`, PostgreSQL 14 and later).
    let (idle, interval) = (30, 10);
    sqlx::query(
        "SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', $2, false), \
         set_config('tcp_keepalives_count', $3, false), set_config('tcp_user_timeout', $4, false), \
         (SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'idle_session_timeout')",
    )
    .bind(idle.to_string())
    .bind(interval.to_string())
    .bind(((silence - idle) / interval).to_string())
    .bind((silence * 1000).to_string())
    .execute(&mut conn)
    .await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("vigil.lease.{role}"))
        .fetch_one(&mut conn)
        .await?;
    Ok(taken.then_some(Lease::Postgres(conn)))
}

/// A stored rollup's key columns and body.
type KeyedBody = (String, i32, DateTime<Utc>, String, i16, Vec<u8>);

type KeyColumns = (Vec<String>, Vec<i32>, Vec<DateTime<Utc>>, Vec<String>, Vec<i16>);

fn key_columns(deltas: &[StoredRollup]) -> KeyColumns {
    let mut cols: KeyColumns = Default::default();
    for d in deltas {
        cols.0.push(d.key.model_name.clone());
        cols.1.push(d.key.resolution_s);
        cols.2.push(d.key.window_start);
        cols.3.push(d.key.model_version.clone());
        cols.4.push(d.key.variant);
    }
    cols
}

/// The start of the window of `resolution` seconds (an SQL parameter) holding `time`, in seconds
/// since the epoch.
fn window_pg(time: &str, resolution: &str) -> String {
    format!("(floor(extract(epoch FROM {time}) / {resolution}) * {resolution})::bigint")
}

/// The text pairs whose transcripts the caller compares itself: a shadow's answer that is not
/// byte for byte the primary's or the label's (byte-equal ones are counted here, as equal once
/// normalised too), so a recogniser's pairs come apart only where they differ.
pub(super) const TEXT_PAIRS_APART: &str = "c.text_output AND c.shadow_ok \
     AND (c.shadow_label <> c.primary_label OR (c.actual IS NOT NULL AND c.shadow_label <> c.actual))";

/// Shadow predictions ($1 model, [$2, $3), version $4 when given; $5 is not used) paired with the primary's by trace id and item rank,
/// with the latest label of the primary's prediction, counted by `window` and shadow version.
fn shadow_counts_sql(window: &str) -> String {
    format!(
        "WITH s AS (SELECT trace_id, model_version, time, status, {answer} AS label, \
                      row_number() OVER (PARTITION BY trace_id, model_version ORDER BY prediction_id) AS item \
                    FROM predictions \
                    WHERE model_name = $1 AND variant = 3 AND trace_id <> '' AND time >= $2 AND time < $3 \
                      AND ($4::text IS NULL OR model_version = $4)), \
              p AS (SELECT prediction_id, trace_id, status, {answer} AS label, \
                      (output ? 'text' OR coalesce(output->>'label', '') = '') AS text_output, \
                      row_number() OVER (PARTITION BY trace_id ORDER BY prediction_id) AS item \
                    FROM predictions WHERE model_name = $1 AND variant <> 3 AND trace_id IN (SELECT trace_id FROM s)), \
              c AS (SELECT s.time, s.model_version AS shadow_version, s.status = 1 AS shadow_ok, \
                      (s.status = 1 AND s.label = p.label) AS agreed, s.label AS shadow_label, \
                      p.text_output, p.label AS primary_label, \
                      (SELECT l.label FROM labels l WHERE l.prediction_id = p.prediction_id \
                         AND ($7::timestamptz IS NULL OR l.time < $7) \
                       ORDER BY l.time DESC, l.label_id DESC LIMIT 1) AS actual \
                    FROM s JOIN p ON p.trace_id = s.trace_id AND p.item = s.item WHERE p.status = 1) \
         SELECT {window} AS window_s, c.shadow_version, \
           CASE WHEN {apart} THEN c.shadow_label END AS shadow_text, \
           CASE WHEN {apart} THEN c.primary_label END AS primary_text, \
           CASE WHEN {apart} THEN c.actual END AS actual_text, count(*) AS compared, \
           count(*) FILTER (WHERE c.agreed) AS agreed, count(*) FILTER (WHERE NOT c.shadow_ok) AS shadow_failed, \
           count(c.actual) AS labeled, count(*) FILTER (WHERE c.shadow_ok AND c.shadow_label = c.actual) AS shadow_correct \
         FROM c GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
        // A text model (speech recognition) answers in `text`, its label left empty.
        answer = "coalesce(nullif(output->>'label', ''), output->>'text', '')",
        apart = TEXT_PAIRS_APART,
    )
}
