//! Every SQL statement of Vigil lives here: the prediction log, labels and feedback in
//! Postgres, with the schema in the workspace's `migrations/`.

pub mod postgres;
pub mod rows;

pub use postgres::{MAX_QUERY_ROWS, PgStore, PredictionFilter, PredictionSummary};
pub use rows::{LabelRow, PredictionRow, RowError};

/// The schema, embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
