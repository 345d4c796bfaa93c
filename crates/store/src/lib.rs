//! Every SQL statement of Vigil lives here: the prediction log, labels and analyst queries, in
//! Postgres (production; schema in the workspace's `migrations/`) and in SQLite (the embedded
//! default; `migrations/sqlite/`), behind one [`PredictionStore`] trait.

pub mod monitoring;
pub mod postgres;
pub mod query;
mod query_filters;
pub mod registry;
pub mod retention;
pub mod review;
pub mod rows;
pub mod sqlite;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use monitoring::{AlertStore, LeaseStore, MonitorStore, OutcomeStore, RollupStore};
pub use postgres::PgStore;
pub use query::{MAX_QUERY_ROWS, PredictionFilter, PredictionSummary};
pub use registry::capture_boosts::{CaptureBoost, CaptureBoostStore};
pub use registry::deployments::{DeploymentRow, DeploymentStore, NextDeployment};
pub use registry::retraining::{JobState, RetrainJob, RetrainStore};
pub use registry::rollouts::{RolloutRow, RolloutStep, RolloutStore, StepMode};
pub use registry::{AuditEvent, Change, ModelVersionRow, RegistryError, RegistryStore, Stage};
pub use retention::{CapturedInput, Expiring, Forgotten, RetentionStore, Subject};
pub use review::{
    ReviewError, ReviewItem, ReviewOutcome, ReviewStats, ReviewStore, ReviewedPrediction, ReviewerDecision,
};
pub use rows::{DeadLetterRow, FeedbackRow, LabelRow, PredictionRow, RowError};
pub use sqlite::SqliteStore;
pub use store::{Backend, PredictionStore, redact_url};

/// The Postgres schema, embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
