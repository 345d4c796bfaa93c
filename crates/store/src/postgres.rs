//! The Postgres store (sqlx).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::query::{MAX_QUERY_ROWS, PredictionFilter, PredictionSummary};
use crate::rows::{DeadLetterRow, FeedbackRow, LabelRow, PredictionRow};
use crate::store::PredictionStore;

/// A pool of connections to the Vigil database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// Why a connection to a database beyond this machine would go without a TLS choice: neither
/// the URL nor `PGSSLMODE` names an `sslmode`, so sqlx's default `prefer` applies, which
/// encrypts without checking the server's certificate and falls back to plaintext unannounced.
/// None for loopback, a Unix socket, or a mode chosen.
pub fn tls_unchosen(url: &str, options: &PgConnectOptions, env_mode: Option<&str>) -> Option<String> {
    let named = url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| pair.split_once('=').is_some_and(|(key, _)| key == "sslmode" || key == "ssl-mode"))
    });
    if named || env_mode.is_some_and(|m| !m.is_empty()) || options.get_socket().is_some() {
        return None;
    }
    let host = options.get_host().trim_start_matches('[').trim_end_matches(']');
    let local = host == "localhost"
        || host.starts_with('/')
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback());
    (!local).then(|| {
        format!(
            "the database URL for {host} names no sslmode: the connection is encrypted only if the server offers \
             TLS, its certificate is not checked, and it falls back to plaintext silently; add \
             sslmode=verify-full&sslrootcert=<CA file> (or sslmode=require, or sslmode=disable on a private \
             network) to the URL"
        )
    })
}

fn warn_if_tls_unchosen(url: &str, options: &PgConnectOptions) {
    if let Some(why) = tls_unchosen(url, options, std::env::var("PGSSLMODE").ok().as_deref()) {
        tracing::warn!("{why}");
    }
}

/// The database role analysts read as: SELECT on the prediction log and the monitoring tables,
/// nothing else (created by the migrations, `NOLOGIN`: grant it to analysts' own users).
pub const ANALYST_ROLE: &str = "vigil_analyst";

impl PgStore {
    /// Connects lazily: the first statement opens the first connection, so a database that is
    /// down at start-up is waited for by the caller's retry loop rather than failing start-up.
    /// A URL reaching beyond this machine without an `sslmode` is warned about ([`tls_unchosen`]).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        warn_if_tls_unchosen(url, &options);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// A pool whose sessions run as `role` in read-only transactions (`vigil query` uses the
    /// analyst role, [`ANALYST_ROLE`]): the user in `url` must be a member of `role`, and
    /// nothing it runs can write, whatever the user may otherwise do.
    pub fn connect_read_only_as(url: &str, role: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        warn_if_tls_unchosen(url, &options);
        let options = options.options([("role", role), ("default_transaction_read_only", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction that will write (the same call as on [`crate::SqliteStore`]).
    pub async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Inserts predictions (one statement); rows whose id exists are skipped.
    pub async fn insert_predictions(&self, rows: &[PredictionRow]) -> Result<u64, sqlx::Error> {
        insert_predictions(&self.pool, rows).await
    }

    /// Inserts labels; labels whose id exists are skipped.
    pub async fn insert_labels(&self, rows: &[LabelRow]) -> Result<u64, sqlx::Error> {
        insert_labels(&self.pool, rows).await
    }

    /// One stored prediction's features, output and score, when present.
    pub async fn prediction(
        &self,
        id: Uuid,
    ) -> Result<Option<(serde_json::Value, serde_json::Value, Option<f32>, String)>, sqlx::Error> {
        sqlx::query_as("SELECT features, output, score, station_id FROM predictions WHERE prediction_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }
}

async fn insert_predictions<'e>(exec: impl PgExecutor<'e>, rows: &[PredictionRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let features: Vec<String> = rows.iter().map(|r| r.features.to_string()).collect();
    let outputs: Vec<String> = rows.iter().map(|r| r.output.to_string()).collect();
    let result = sqlx::query(
            "INSERT INTO predictions (prediction_id, time, request_time, capture_time, trace_id, server_id, station_id,
                 device_id, part_id, request_id, api, model_name, model_version, variant, deployment_id, features, output,
                 score, output_null, verdict, decision, queue_time_us, compute_time_us, status, error, stage, capture)
             SELECT id, t, rt, ct, tr, sv, st, dv, pt, rq, api, mn, mv, va, dp, f::jsonb, o::jsonb, sc, onull, vd, dc, qt, cpt, stt, er, sg, cap
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
                 $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int2[], $15::text[], $16::text[],
                 $17::text[], $18::real[], $19::bool[], $20::int2[], $21::int2[], $22::int8[], $23::int8[], $24::int2[], $25::text[], $26::text[], $27::text[])
               AS u(id, t, rt, ct, tr, sv, st, dv, pt, rq, api, mn, mv, va, dp, f, o, sc, onull, vd, dc, qt, cpt, stt, er, sg, cap)
             ON CONFLICT (prediction_id) DO NOTHING",
        )
        .bind(column!(prediction_id))
        .bind(column!(time))
        .bind(column!(request_time))
        .bind(column!(capture_time))
        .bind(column!(trace_id))
        .bind(column!(server_id))
        .bind(column!(station_id))
        .bind(column!(device_id))
        .bind(column!(part_id))
        .bind(column!(request_id))
        .bind(column!(api))
        .bind(column!(model_name))
        .bind(column!(model_version))
        .bind(column!(variant))
        .bind(column!(deployment_id))
        .bind(features)
        .bind(outputs)
        .bind(column!(score))
        .bind(column!(output_null))
        .bind(column!(verdict))
        .bind(column!(decision))
        .bind(column!(queue_time_us))
        .bind(column!(compute_time_us))
        .bind(column!(status))
        .bind(column!(error))
        .bind(column!(stage))
        .bind(column!(capture))
        .execute(exec)
        .await?;
    Ok(result.rows_affected())
}

async fn insert_labels<'e>(exec: impl PgExecutor<'e>, rows: &[LabelRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.label_id).collect();
    let predictions: Vec<Uuid> = rows.iter().map(|r| r.prediction_id).collect();
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.time).collect();
    let sources: Vec<String> = rows.iter().map(|r| r.source.clone()).collect();
    let result = sqlx::query(
        "INSERT INTO labels (label_id, prediction_id, label, time, source)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[])
             ON CONFLICT (label_id) DO NOTHING",
    )
    .bind(ids)
    .bind(predictions)
    .bind(labels)
    .bind(times)
    .bind(sources)
    .execute(exec)
    .await?;
    Ok(result.rows_affected())
}

impl PredictionStore for PgStore {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        crate::MIGRATOR.run(&self.pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }

    /// Inserts predictions and labels in one transaction; rows whose id exists are skipped.
    /// Returns the numbers of new prediction and label rows.
    async fn insert_batch(
        &self,
        predictions: &[PredictionRow],
        labels: &[LabelRow],
    ) -> Result<(u64, u64), sqlx::Error> {
        // Nothing to write (a batch of dead letters only): no transaction to wait on.
        if predictions.is_empty() && labels.is_empty() {
            return Ok((0, 0));
        }
        let mut tx = self.write_transaction().await?;
        let p = insert_predictions(&mut *tx, predictions).await?;
        let l = insert_labels(&mut *tx, labels).await?;
        tx.commit().await?;
        Ok((p, l))
    }

    /// Inserts feedback events; events whose id exists are skipped. Returns the new rows.
    async fn insert_feedback(&self, rows: &[FeedbackRow]) -> Result<u64, sqlx::Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let result = sqlx::query(
            "INSERT INTO feedback (event_id, prediction_id, kind, value, session_id, time)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.prediction_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.kind.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.value.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.session_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.time).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Inserts dead letters; ids already stored are skipped. Returns the new rows.
    async fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for r in rows {
            inserted += sqlx::query(
                "INSERT INTO dead_letters (id, time, topic, source, reason, key, payload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
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
        sqlx::query_as("SELECT id, time, topic, source, reason, key, payload FROM dead_letters ORDER BY time DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    /// Number of stored feedback events.
    async fn count_feedback(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM feedback").fetch_one(&self.pool).await
    }

    /// Every prediction id with its features and score, in id order (for checks and exports).
    async fn prediction_ids(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT prediction_id FROM predictions ORDER BY prediction_id").fetch_all(&self.pool).await
    }

    /// Number of logged predictions.
    async fn count_predictions(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM predictions").fetch_one(&self.pool).await
    }

    /// Runs an analyst query (keyset-paginated, at most [`MAX_QUERY_ROWS`] rows).
    async fn query_predictions(&self, f: &PredictionFilter) -> Result<Vec<PredictionSummary>, sqlx::Error> {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT p.prediction_id, p.time, p.station_id, p.model_name, p.model_version, p.score, p.verdict, \
             p.decision, p.status, p.features, l.label, p.capture \
             FROM predictions p LEFT JOIN LATERAL (SELECT label FROM labels WHERE labels.prediction_id = p.prediction_id \
             ORDER BY time DESC, label_id DESC LIMIT 1) l ON true WHERE true",
        );
        crate::push_filters!(q, f, "l.label IS NOT NULL");
        let limit = f.limit.clamp(1, MAX_QUERY_ROWS) as i64;
        q.push(" ORDER BY p.prediction_id LIMIT ").push_bind(limit);
        q.build_query_as::<PredictionSummary>().fetch_all(&self.pool).await
    }
}

#[cfg(test)]
mod tls_choice_tests {
    use super::tls_unchosen;

    fn check(url: &str, env: Option<&str>) -> Option<String> {
        tls_unchosen(url, &url.parse().unwrap(), env)
    }

    #[test]
    fn a_remote_database_without_an_sslmode_is_named() {
        let why = check("postgres://vigil:secret@db.plant.example:5432/vigil", None).expect("a warning");
        assert!(why.contains("db.plant.example") && why.contains("sslmode=verify-full"), "{why}");
        assert!(!why.contains("secret"), "{why}");
        assert!(check("postgres://vigil@10.0.0.7/vigil?application_name=x", None).is_some());
        // Chosen in the URL or the environment, or local: nothing to say.
        assert_eq!(check("postgres://db.plant.example/vigil?sslmode=require", None), None);
        assert_eq!(check("postgres://db.plant.example/vigil?application_name=x&sslmode=disable", None), None);
        assert_eq!(check("postgres://db.plant.example/vigil?ssl-mode=require", None), None);
        assert_eq!(check("postgres://db.plant.example/vigil", Some("verify-full")), None);
        for local in [
            "postgres://127.0.0.1/vigil",
            "postgres://localhost:5433/vigil",
            "postgres://[::1]/vigil",
            "postgres://[::ffff:127.0.0.1]/vigil",
        ] {
            assert_eq!(check(local, None), None, "{local}");
        }
        assert_eq!(check("postgres:///vigil?host=/var/run/postgresql", None), None);
    }
}
