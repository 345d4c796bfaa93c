//! The logging service, one pipeline the Vector way: a source (a Kafka consumer group, or the
//! embedded default's in-process bus) -> decode -> sinks (any prediction store for the rows, a
//! dead-letter sink for what cannot be decoded). Records are written in size- and time-bounded
//! batches, one transaction each, and a source's position is committed only after the batch
//! and every earlier one committed. Inserts are idempotent on the record's id, so a crash
//! between commit and offset commit re-reads a batch without doubling it. Records that cannot
//! be decoded go to the dead-letter topic (or table) with the reason and never stall a
//! partition. Prometheus metrics (records by outcome, batch durations, consumer lag) are in
//! [`metrics`].

pub mod batch;
pub mod config;
pub mod embedded;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod sink;
pub mod source;

pub use config::{BatchSettings, LoggerConfig};
pub use kafka::run;
pub use metrics::LoggerMetrics;
pub use pipeline::LoggerStats;
