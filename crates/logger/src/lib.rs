//! The logging service: a Kafka consumer group that writes prediction records and labels into
//! Postgres in size- and time-bounded batches, one transaction each, and stores offsets only
//! after the transaction commits. Inserts are idempotent on the record's id, so a crash
//! between commit and offset commit re-reads a batch without doubling it. Records that cannot
//! be decoded go to the dead-letter topic with the reason and never stall a partition.
//! Prometheus metrics (records by outcome, batch durations, consumer lag) are in [`metrics`].

pub mod batch;
pub mod consumer;
pub mod embedded;
pub mod metrics;

pub use consumer::{LoggerConfig, LoggerStats, run};
pub use metrics::LoggerMetrics;
