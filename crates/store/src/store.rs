//! One interface over both stores, so that the logger, the embedded default and the
//! command line run the same code on Postgres and on SQLite.

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

macro_rules! delegate {
    ($t:ty) => {
        impl PredictionStore for $t {
            async fn migrate(&self) -> Result<(), sqlx::Error> {
                <$t>::migrate(self).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
            }
            async fn insert_batch(&self, p: &[PredictionRow], l: &[LabelRow]) -> Result<(u64, u64), sqlx::Error> {
                <$t>::insert_batch(self, p, l).await
            }
            async fn insert_feedback(&self, rows: &[FeedbackRow]) -> Result<u64, sqlx::Error> {
                <$t>::insert_feedback(self, rows).await
            }
            async fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> Result<u64, sqlx::Error> {
                <$t>::insert_dead_letters(self, rows).await
            }
            async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
                <$t>::dead_letters(self, limit).await
            }
            async fn count_feedback(&self) -> Result<i64, sqlx::Error> {
                <$t>::count_feedback(self).await
            }
            async fn query_predictions(&self, f: &PredictionFilter) -> Result<Vec<PredictionSummary>, sqlx::Error> {
                <$t>::query_predictions(self, f).await
            }
            async fn count_predictions(&self) -> Result<i64, sqlx::Error> {
                <$t>::count_predictions(self).await
            }
            async fn prediction_ids(&self) -> Result<Vec<Uuid>, sqlx::Error> {
                <$t>::prediction_ids(self).await
            }
        }
    };
}

delegate!(PgStore);
delegate!(SqliteStore);

/// A store chosen by URL: `postgres://...` or `sqlite://...`.
#[derive(Clone)]
pub enum AnyStore {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl AnyStore {
    /// Connects by the URL's scheme.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PgStore::connect_lazy(url, 2)?))
        } else {
            Err(sqlx::Error::Configuration(format!("'{url}': use postgres://... or sqlite://...").into()))
        }
    }
}

impl PredictionStore for AnyStore {
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(s) => PredictionStore::migrate(s).await,
            Self::Sqlite(s) => PredictionStore::migrate(s).await,
        }
    }
    async fn insert_batch(&self, p: &[PredictionRow], l: &[LabelRow]) -> Result<(u64, u64), sqlx::Error> {
        match self {
            Self::Postgres(s) => s.insert_batch(p, l).await,
            Self::Sqlite(s) => s.insert_batch(p, l).await,
        }
    }
    async fn insert_feedback(&self, rows: &[FeedbackRow]) -> Result<u64, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.insert_feedback(rows).await,
            Self::Sqlite(s) => s.insert_feedback(rows).await,
        }
    }
    async fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> Result<u64, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.insert_dead_letters(rows).await,
            Self::Sqlite(s) => s.insert_dead_letters(rows).await,
        }
    }
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.dead_letters(limit).await,
            Self::Sqlite(s) => s.dead_letters(limit).await,
        }
    }
    async fn count_feedback(&self) -> Result<i64, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.count_feedback().await,
            Self::Sqlite(s) => s.count_feedback().await,
        }
    }
    async fn query_predictions(&self, f: &PredictionFilter) -> Result<Vec<PredictionSummary>, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.query_predictions(f).await,
            Self::Sqlite(s) => s.query_predictions(f).await,
        }
    }
    async fn count_predictions(&self) -> Result<i64, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.count_predictions().await,
            Self::Sqlite(s) => s.count_predictions().await,
        }
    }
    async fn prediction_ids(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        match self {
            Self::Postgres(s) => s.prediction_ids().await,
            Self::Sqlite(s) => s.prediction_ids().await,
        }
    }
}
