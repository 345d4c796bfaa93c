//! Capture rates raised by alarms: while a rule with the `capture` action fires on a model, its
//! row here asks the servers to capture at least that share of the model's inputs (they get it
//! with the model's deployment).

use std::future::Future;

use chrono::{DateTime, Utc};

/// One rule's raised rate for one model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CaptureBoost {
    pub model_name: String,
    pub rule: String,
    /// In (0, 1].
    pub rate: f64,
    pub since: DateTime<Utc>,
}

/// The capture-boost side of a store.
pub trait CaptureBoostStore: Clone + Send + Sync + 'static {
    /// Every raised rate, by model then rule.
    fn capture_boosts(&self) -> impl Future<Output = Result<Vec<CaptureBoost>, sqlx::Error>> + Send;
    /// Raises (or sets again) a rule's rate for a model; its `since` stays the first.
    fn raise_capture(&self, boost: &CaptureBoost) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Ends a rule's raised rate for a model; true when there was one.
    fn end_capture_boost(&self, model: &str, rule: &str) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}

macro_rules! capture_boost_backend {
    ($store:ty) => {
        impl CaptureBoostStore for $store {
            async fn capture_boosts(&self) -> Result<Vec<CaptureBoost>, sqlx::Error> {
                sqlx::query_as("SELECT model_name, rule, rate, since FROM capture_boosts ORDER BY model_name, rule")
                    .fetch_all(self.pool())
                    .await
            }

            async fn raise_capture(&self, boost: &CaptureBoost) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO capture_boosts (model_name, rule, rate, since) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (model_name, rule) DO UPDATE SET rate = excluded.rate",
                )
                .bind(&boost.model_name)
                .bind(&boost.rule)
                .bind(boost.rate)
                .bind(boost.since)
                .execute(self.pool())
                .await
                .map(drop)
            }

            async fn end_capture_boost(&self, model: &str, rule: &str) -> Result<bool, sqlx::Error> {
                let ended = sqlx::query("DELETE FROM capture_boosts WHERE model_name = $1 AND rule = $2")
                    .bind(model)
                    .bind(rule)
                    .execute(self.pool())
                    .await?;
                Ok(ended.rows_affected() > 0)
            }
        }
    };
}

capture_boost_backend!(crate::PgStore);
capture_boost_backend!(crate::SqliteStore);
