//! The configuration sections every server shares: request limits, model loading options,
//! prediction logging and the `/metrics` endpoint. Each server's own configuration embeds them
//! (`[limits]`, `[models]`, `[logging]`, `[metrics]`), and validation messages name the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_serving::AdmissionLimits;
use vigil_serving::admission::BYTES_CHARGED_PER_BYTE;

/// The Prometheus `/metrics` endpoint, served over HTTP on its own port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address of the HTTP server (port 0 picks a free port).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: "127.0.0.1:9102".parse().expect("valid literal") }
    }
}

/// Prediction logging: every prediction becomes a record on Kafka.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Log predictions (needs `kafka.brokers`).
    pub enabled: bool,
    /// This server's id in the records.
    pub server_id: String,
    /// Records waiting for the producer; beyond it records are dropped and counted.
    pub queue_capacity: usize,
    /// Records being delivered at once.
    pub max_in_flight: usize,
    pub kafka: vigil_logbus::kafka::KafkaConfig,
    /// Store-and-forward: records the broker cannot take wait on disk and are replayed.
    pub spool: Option<vigil_logbus::spool::SpoolConfig>,
    /// What records may carry, per model (`[logging.policy]`, `[logging.policy.models.<name>]`).
    #[serde(default)]
    pub policy: vigil_serving::log_policy::LogPolicyConfig,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self::named("vigil-edge", "edge-1")
    }
}

impl LoggingConfig {
    /// Logging off, with this Kafka client id and server id once turned on.
    pub fn named(client_id: &str, server_id: &str) -> Self {
        Self {
            enabled: false,
            server_id: server_id.into(),
            queue_capacity: 100_000,
            max_in_flight: 10_000,
            kafka: vigil_logbus::kafka::KafkaConfig {
                client_id: client_id.into(),
                // An outage is noticed after this long; the records then go to the spool.
                message_timeout_ms: 10_000,
                ..Default::default()
            },
            spool: None,
            policy: Default::default(),
        }
    }

    /// Checks values serde cannot: each message names its key under `logging.`.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.queue_capacity == 0 || self.max_in_flight == 0 {
            return Err("logging.queue_capacity and logging.max_in_flight must be at least 1".into());
        }
        self.kafka.validate().map_err(|e| format!("logging.{e}"))?;
        self.policy.load()?;
        if let Some(spool) = &self.spool {
            if spool.max_bytes < spool.segment_bytes || spool.segment_bytes < 1024 {
                return Err("logging.spool: need 1024 <= segment_bytes <= max_bytes".into());
            }
            // Dropping the oldest needs a segment other than the one being written.
            if spool.when_full == vigil_logbus::spool::FullPolicy::DropOldest
                && spool.max_bytes < spool.segment_bytes.saturating_mul(2)
            {
                return Err(format!(
                    "logging.spool: when_full = \"drop_oldest\" needs max_bytes ({}) of at least two segments \
                     (2 x segment_bytes = {})",
                    spool.max_bytes,
                    spool.segment_bytes.saturating_mul(2)
                ));
            }
        }
        Ok(())
    }
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Requests handled at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Streams one HTTP/2 connection may hold open at once (its clients wait for more): what
    /// a client that stopped reading its answers keeps on the server is bounded by it.
    pub max_streams_per_connection: u32,
    /// Longest a unary request may take, in milliseconds (DEADLINE_EXCEEDED beyond).
    pub request_timeout_ms: u64,
    /// Longest a stream (InspectStream, ModelStreamInfer) may stay open, in milliseconds.
    pub stream_timeout_ms: u64,
    /// A stream with nothing sent either way and no message being answered for this long is
    /// ended, in milliseconds.
    pub stream_idle_timeout_ms: u64,
    /// Most requests one stream may carry; the next ends it with RESOURCE_EXHAUSTED.
    pub max_stream_messages: u64,
    /// Memory budget of the requests in flight, in bytes: each is charged three times the
    /// size its message declares (received, decoded, batched) before it is read, and a stream
    /// each message until it is answered (ModelStreamInfer, InspectStream; other streams each
    /// message in place of its previous one); beyond the budget requests are shed, and streams
    /// ended, with RESOURCE_EXHAUSTED, except a stream message that waits for its own stream's
    /// earlier answers to make room.
    pub max_request_bytes_in_flight: usize,
    /// On shutdown, how long in-flight requests may take to finish, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for Limits {
    /// Sized for an edge box: 8 MiB messages, 256 calls, a 64 MiB memory budget.
    fn default() -> Self {
        Self {
            max_message_bytes: 8 << 20,
            max_concurrent_requests: 256,
            max_streams_per_connection: 256,
            request_timeout_ms: 10_000,
            stream_timeout_ms: 3_600_000,
            stream_idle_timeout_ms: 60_000,
            max_stream_messages: 100_000,
            max_request_bytes_in_flight: 64 << 20,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// Checks values serde cannot: each message names its key under `limits.`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < 1024 {
            return Err(format!("limits.max_message_bytes = {} is too small (at least 1024)", self.max_message_bytes));
        }
        if self.max_concurrent_requests == 0 {
            return Err("limits.max_concurrent_requests must be at least 1".into());
        }
        if self.max_streams_per_connection == 0 {
            return Err("limits.max_streams_per_connection must be at least 1".into());
        }
        let largest_charge = self.max_message_bytes.saturating_mul(BYTES_CHARGED_PER_BYTE);
        if self.max_request_bytes_in_flight < largest_charge {
            return Err(format!(
                "limits.max_request_bytes_in_flight = {} cannot admit a message of limits.max_message_bytes = {} \
                 (charged {BYTES_CHARGED_PER_BYTE}x: at least {largest_charge})",
                self.max_request_bytes_in_flight, self.max_message_bytes,
            ));
        }
        for (key, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("stream_timeout_ms", self.stream_timeout_ms),
            ("stream_idle_timeout_ms", self.stream_idle_timeout_ms),
            ("max_stream_messages", self.max_stream_messages),
        ] {
            if value == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        Ok(())
    }

    /// What the admission layer enforces.
    pub fn admission(&self) -> AdmissionLimits {
        AdmissionLimits {
            max_concurrent_requests: self.max_concurrent_requests,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            stream_timeout: Duration::from_millis(self.stream_timeout_ms),
            stream_idle_timeout: Duration::from_millis(self.stream_idle_timeout_ms),
            max_stream_messages: self.max_stream_messages,
            max_message_bytes: self.max_message_bytes,
            max_request_bytes_in_flight: self.max_request_bytes_in_flight,
        }
    }

    /// How long in-flight requests may take to finish at shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// Which models and versions to load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    /// Load every version, not only the served one.
    pub load_all_versions: bool,
    /// Served version per model (default: the newest).
    pub pinned_versions: HashMap<String, u64>,
    /// Overrides every model's ONNX Runtime intra-op thread count.
    pub intra_op_threads: Option<usize>,
    /// How often to look for changed, new or removed models in the repository directory and
    /// load or unload them, in milliseconds; 0 (the default) turns the watch off (load and
    /// unload through the OIP repository API instead).
    pub watch_interval_ms: u64,
    /// Where ONNX Runtime runs the models: "cpu" or "cuda" (start-up fails, saying why, when
    /// CUDA is asked for and this ONNX Runtime library or machine lacks it).
    pub execution_provider: vigil_inference::session::ExecutionProvider,
}

impl ModelOptions {
    /// What the model repository is told when it loads.
    pub fn repository_options(&self) -> vigil_inference::repository::RepositoryOptions {
        vigil_inference::repository::RepositoryOptions {
            load_all_versions: self.load_all_versions,
            pinned_versions: self.pinned_versions.clone(),
            intra_op_threads: self.intra_op_threads,
            execution_provider: self.execution_provider,
        }
    }
}

/// Checks the sections every server shares (each message names its key), and that the model
/// repository is a directory.
pub fn validate_shared(
    limits: &Limits,
    logging: &LoggingConfig,
    deployments: &crate::DeploymentsConfig,
    model_repository: &std::path::Path,
) -> Result<(), String> {
    limits.validate()?;
    logging.validate()?;
    deployments.validate()?;
    if !model_repository.is_dir() {
        return Err(format!(
            "model_repository {} is not a directory (set --model-repository or model_repository)",
            model_repository.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_logbus::spool::{FullPolicy, SpoolConfig};

    #[test]
    fn a_spool_that_drops_its_oldest_must_hold_two_segments() {
        let logging = |max_bytes: u64, when_full: FullPolicy| LoggingConfig {
            enabled: true,
            spool: Some(SpoolConfig { max_bytes, segment_bytes: 4096, when_full, ..Default::default() }),
            ..Default::default()
        };
        let e = logging(4096, FullPolicy::DropOldest).validate().unwrap_err();
        assert!(e.contains("needs max_bytes (4096) of at least two segments (2 x segment_bytes = 8192)"), "{e}");
        assert!(logging(8192, FullPolicy::DropOldest).validate().is_ok());
        assert!(logging(4096, FullPolicy::RejectNew).validate().is_ok(), "refusing new records needs one");
    }
}
