//! One interface over both stores, so that the logger, the embedded default and the
//! command line run the same code on Postgres and on SQLite. Each backend implements it once;
//! a binary picks its backend at start-up ([`Backend`], [`with_store!`](crate::with_store))
//! and runs generic code over it.

use std::future::Future;

use uuid::Uuid;

use crate::postgres::PgStore;
use crate::query::{PredictionFilter, PredictionSummary};
use crate::rows::{DeadLetterRow, FeedbackRow, LabelRow, PredictionRow};
use crate::sqlite::SqliteStore;

/// What every prediction store does.
pub trait PredictionStore: Clone + Send + Sync + 'static {
    /// Applies pending schema migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Inserts in one transaction, skipping ids already stored; returns the new row counts.
    fn insert_batch(
        &self,
        predictions: &[PredictionRow],
        labels: &[LabelRow],
    ) -> impl Future<Output = Result<(u64, u64), sqlx::Error>> + Send;
    /// Inserts feedback events, skipping ids already stored; returns the new row count.
    fn insert_feedback(&self, rows: &[FeedbackRow]) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Keeps records that could not be decoded, with the reason; ids already stored are
    /// skipped. Returns the new rows.
    fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// The latest `limit` dead letters, newest first.
    fn dead_letters(&self, limit: i64) -> impl Future<Output = Result<Vec<DeadLetterRow>, sqlx::Error>> + Send;
    /// Number of stored feedback events.
    fn count_feedback(&self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// An analyst query.
    fn query_predictions(
        &self,
        filter: &PredictionFilter,
    ) -> impl Future<Output = Result<Vec<PredictionSummary>, sqlx::Error>> + Send;
    /// Number of stored predictions.
    fn count_predictions(&self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// Every stored prediction id, in id order.
    fn prediction_ids(&self) -> impl Future<Output = Result<Vec<Uuid>, sqlx::Error>> + Send;
}

/// The store a database URL names, connected. Callers pick the backend once, at start-up, and
/// run generic code over it with [`with_store!`](crate::with_store).
pub enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Backend {
    /// Connects by the URL's scheme: `postgres://...` or `sqlite://...`.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PgStore::connect_lazy(url, 2)?))
        } else {
            let url = redact_url(url);
            Err(sqlx::Error::Configuration(format!("'{url}': use postgres://... or sqlite://...").into()))
        }
    }
}

/// `url` with its credentials hidden, for messages and logs: what comes before `@` after the
/// scheme, and a `password` query parameter.
pub fn redact_url(url: &str) -> String {
    let hidden = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    };
    let Some((base, query)) = hidden.split_once('?') else { return hidden };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Runs `$body` with `$store` bound to the concrete store inside a [`Backend`]: the generic
/// code is compiled once per backend, and nothing forwards calls at run time.
#[macro_export]
macro_rules! with_store {
    ($backend:expr, $store:ident => $body:expr) => {
        match $backend {
            $crate::store::Backend::Postgres($store) => $body,
            $crate::store::Backend::Sqlite($store) => $body,
        }
    };
}
