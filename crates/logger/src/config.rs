//! The logger's settings: one serde structure for the file (`--config`), `VIGIL_LOGGER__...`
//! variables and flags, reusing the Kafka settings every service shares.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_logbus::kafka::KafkaConfig;
use vigil_logbus::topics;

/// Everything `vigil-logger` needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggerConfig {
    /// Brokers, client id, topic creation (`[kafka.topics]`), and the dead-letter producer.
    pub kafka: KafkaConfig,
    /// Consumer group; logger instances in one group share the partitions.
    pub group_id: String,
    /// The consumer group's session timeout: how long a crashed logger holds its partitions
    /// before the group hands them to the others (or to its own restart).
    pub session_timeout_ms: u64,
    /// How long the logger may go without reading from Kafka before the group counts it gone
    /// and hands its partitions to the others (librdkafka's `max.poll.interval.ms`). The logger
    /// stops reading while its batches wait on the database, so this bounds the database stall
    /// it rides out in the group (default 5 minutes, as Kafka's own); a rebalance also waits at
    /// most this long for a member that is busy writing.
    pub max_poll_interval_ms: u64,
    /// How often written positions are committed to the group, in milliseconds. A crash
    /// re-reads at most this much (idempotent inserts skip it); longer means fewer commits.
    pub commit_interval_ms: u64,
    /// Topics consumed (each has a decoder: predictions, labels, feedback).
    pub consume: Vec<String>,
    /// Postgres URL.
    pub database_url: String,
    /// Apply the schema migrations at start.
    pub migrate: bool,
    pub batch: BatchSettings,
    /// How often the consumer lag is refreshed from the Kafka client's statistics.
    pub statistics_interval_ms: u64,
    /// TLS and tokens on the `/metrics` port (`[security]`).
    pub security: vigil_security::SecurityConfig,
}

/// How records are grouped into database transactions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Most records per database transaction.
    pub max_records: usize,
    /// Most payload bytes per batch (at least one record, whatever its size): records that
    /// carry images for review or large outputs fill a batch by bytes before they do by count,
    /// and a logger holds up to `max_in_flight + 1` batches, each in a few copies.
    pub max_bytes: usize,
    /// Longest a batch waits to fill after its first record, in milliseconds.
    pub max_wait_ms: u64,
    /// Batches written at once, each in its own transaction and connection; positions are
    /// committed in consumption order, each only after its batch and every earlier one.
    pub max_in_flight: usize,
    /// At shutdown, how long the batches in hand may take to be written (the database or the
    /// dead-letter topic may be away), in milliseconds; then the logger stops without
    /// committing them, and they are read again on the next start. 0: no limit (a source that
    /// cannot be read again, such as the in-process bus, must not give up).
    pub drain_timeout_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { max_records: 5_000, max_bytes: 32 << 20, max_wait_ms: 200, max_in_flight: 2, drain_timeout_ms: 30_000 }
    }
}

impl BatchSettings {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_records == 0 {
            return Err("batch.max_records must be at least 1".into());
        }
        if self.max_bytes == 0 {
            return Err("batch.max_bytes must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("batch.max_in_flight must be at least 1".into());
        }
        Ok(())
    }

    /// `max_wait_ms` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// `drain_timeout_ms` as a duration; None: no limit.
    pub fn drain_timeout(&self) -> Option<Duration> {
        (self.drain_timeout_ms > 0).then(|| Duration::from_millis(self.drain_timeout_ms))
    }
}

impl Default for LoggerConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig { client_id: "vigil-logger".into(), ..KafkaConfig::default() },
            group_id: "vigil-logger".into(),
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            commit_interval_ms: 500,
            consume: vec![topics::PREDICTIONS.into(), topics::LABELS.into(), topics::FEEDBACK.into()],
            database_url: "postgres://127.0.0.1/vigil".into(),
            migrate: true,
            batch: BatchSettings::default(),
            statistics_interval_ms: 5_000,
            security: vigil_security::SecurityConfig::default(),
        }
    }
}

impl LoggerConfig {
    /// A configuration for `brokers` and `database_url`, defaults elsewhere.
    pub fn new(brokers: impl Into<String>, database_url: impl Into<String>) -> Self {
        let mut config = Self { database_url: database_url.into(), ..Self::default() };
        config.kafka.brokers = brokers.into();
        config
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.batch.validate()?;
        if self.group_id.trim().is_empty() {
            return Err("group_id must not be empty".into());
        }
        if self.consume.is_empty() {
            return Err("consume must name at least one topic".into());
        }
        if let Some(t) =
            self.consume.iter().find(|t| ![topics::PREDICTIONS, topics::LABELS, topics::FEEDBACK].contains(&t.as_str()))
        {
            return Err(format!(
                "consume: no decoder for topic '{t}' (use {}, {}, {})",
                topics::PREDICTIONS,
                topics::LABELS,
                topics::FEEDBACK
            ));
        }
        if !(10..=60_000).contains(&self.commit_interval_ms) {
            return Err(format!("commit_interval_ms = {}: use 10 to 60000", self.commit_interval_ms));
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err(format!("session_timeout_ms = {}: use 1000 to 300000", self.session_timeout_ms));
        }
        if !(self.session_timeout_ms..=86_400_000).contains(&self.max_poll_interval_ms) {
            return Err(format!(
                "max_poll_interval_ms = {}: use session_timeout_ms ({}) to 86400000",
                self.max_poll_interval_ms, self.session_timeout_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    use super::*;

    #[test]
    fn the_shipped_file_lists_every_key_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/logger.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let from_file: LoggerConfig = Figment::from(Toml::string(&text)).extract().unwrap();
        assert_eq!(from_file, LoggerConfig::default());
        // Every key is in the file: nothing was filled in from the defaults.
        let defaults = toml::to_string(&LoggerConfig::default()).unwrap();
        let keys =
            |t: &str| -> usize { t.lines().filter(|l| l.contains(" = ") && !l.trim_start().starts_with('#')).count() };
        assert_eq!(keys(&text), keys(&defaults), "{defaults}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let bad = |key: &str, value: figment::value::Value| {
            Figment::from(Serialized::defaults(LoggerConfig::default()))
                .merge(Serialized::default(key, value))
                .extract::<LoggerConfig>()
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate())
                .unwrap_err()
        };
        assert_eq!(bad("batch.max_records", 0u64.into()), "batch.max_records must be at least 1");
        assert_eq!(bad("batch.max_bytes", 0u64.into()), "batch.max_bytes must be at least 1");
        assert_eq!(bad("batch.max_in_flight", 0u64.into()), "batch.max_in_flight must be at least 1");
        assert!(bad("kafka.topics.partitions", 0.into()).starts_with("kafka.topics.partitions = 0"));
        assert!(bad("kafka.topics.replication_factor", 0.into()).contains("use -1"));
        assert!(bad("kafka.compression", "snappy".into()).contains("use none, gzip, lz4 or zstd"));
        assert!(bad("consume", vec!["vigil.other.v1"].into()).contains("no decoder for topic 'vigil.other.v1'"));
        assert!(bad("commit_interval_ms", 0u64.into()).starts_with("commit_interval_ms = 0"));
        assert_eq!(
            bad("max_poll_interval_ms", 5_000u64.into()),
            "max_poll_interval_ms = 5000: use session_timeout_ms (10000) to 86400000",
            "librdkafka refuses a poll interval under the session timeout"
        );
        assert!(bad("batch.max_wait", 5u64.into()).contains("unknown field"), "unknown keys are refused");
    }
}
