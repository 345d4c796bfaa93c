//! Configuration: built-in defaults, then a TOML file, then `VIGIL_...` environment variables
//! (`__` separates sections: `VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS=32`), then command-line flags.
//! Validated at start-up; every message names the offending key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use vigil_inference::image::ImageLimits;

/// Everything `vigil-edge` can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address to serve gRPC on. Loopback by default; binding elsewhere must be explicit.
    pub listen: SocketAddr,
    /// Directory of `<name>/<version>/model.onnx` + `model.toml`.
    pub model_repository: PathBuf,
    /// Model used by Inspect when the request names none.
    pub default_model: String,
    /// ONNX Runtime shared library; empty: search the usual places.
    pub onnxruntime_lib: Option<PathBuf>,
    pub limits: Limits,
    pub images: ImageLimits,
    pub models: ModelOptions,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
}

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
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            server_id: "edge-1".into(),
            queue_capacity: 100_000,
            max_in_flight: 10_000,
            kafka: vigil_logbus::kafka::KafkaConfig {
                client_id: "vigil-edge".into(),
                // An outage is noticed after this long; the records then go to the spool.
                message_timeout_ms: 10_000,
                ..Default::default()
            },
            spool: None,
        }
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
    /// Longest a unary request may take, in milliseconds (DEADLINE_EXCEEDED beyond).
    pub request_timeout_ms: u64,
    /// Longest a stream (InspectStream, ModelStreamInfer) may stay open, in milliseconds.
    pub stream_timeout_ms: u64,
    /// A stream that sends no message for this long is ended, in milliseconds.
    pub stream_idle_timeout_ms: u64,
    /// Most requests one stream may carry; the next ends it with RESOURCE_EXHAUSTED.
    pub max_stream_messages: u64,
    /// Memory budget of the requests in flight, in bytes: each is charged three times the
    /// size its message declares (received, decoded, batched) before it is read; beyond the
    /// budget requests are shed with RESOURCE_EXHAUSTED.
    pub max_request_bytes_in_flight: usize,
    /// On shutdown, how long in-flight requests may take to finish, in milliseconds.
    pub drain_timeout_ms: u64,
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
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8001".parse().expect("valid literal"),
            model_repository: PathBuf::from("models"),
            default_model: "scratch-detector".into(),
            onnxruntime_lib: None,
            limits: Limits {
                max_message_bytes: 8 << 20,
                max_concurrent_requests: 256,
                request_timeout_ms: 10_000,
                stream_timeout_ms: 3_600_000,
                stream_idle_timeout_ms: 60_000,
                max_stream_messages: 100_000,
                max_request_bytes_in_flight: 64 << 20,
                drain_timeout_ms: 10_000,
            },
            images: ImageLimits::default(),
            models: ModelOptions::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Top-level keys that `VIGIL_...` variables may set.
const ENV_KEYS: &[&str] =
    &["listen", "model_repository", "default_model", "onnxruntime_lib", "limits", "images", "models", "metrics"];

impl EdgeConfig {
    /// Layers defaults, the optional file and the environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        Self::figment(file).extract::<Self>().map_err(|e| e.to_string()).and_then(|c| {
            c.validate()?;
            Ok(c)
        })
    }

    /// The layered sources, for callers that add their own (command-line flags).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(Env::prefixed("VIGIL_").split("__").filter(|key| {
            ENV_KEYS.iter().any(|k| key.as_str().split('.').next().is_some_and(|first| first.eq_ignore_ascii_case(k)))
        }))
    }

    /// Checks values serde cannot: each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return Err(format!("limits.max_message_bytes = {} is too small (at least 1024)", l.max_message_bytes));
        }
        if l.max_concurrent_requests == 0 {
            return Err("limits.max_concurrent_requests must be at least 1".into());
        }
        let largest_charge = l.max_message_bytes.saturating_mul(vigil_serving::admission::BYTES_CHARGED_PER_BYTE);
        if l.max_request_bytes_in_flight < largest_charge {
            return Err(format!(
                "limits.max_request_bytes_in_flight = {} cannot admit a message of limits.max_message_bytes = {} \
                 (charged {}x: at least {largest_charge})",
                l.max_request_bytes_in_flight,
                l.max_message_bytes,
                vigil_serving::admission::BYTES_CHARGED_PER_BYTE
            ));
        }
        for (key, value) in [
            ("request_timeout_ms", l.request_timeout_ms),
            ("stream_timeout_ms", l.stream_timeout_ms),
            ("stream_idle_timeout_ms", l.stream_idle_timeout_ms),
            ("max_stream_messages", l.max_stream_messages),
        ] {
            if value == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        let i = &self.images;
        if i.min_side == 0 || i.min_side > i.max_side {
            return Err(format!(
                "images.min_side ({}) must be between 1 and images.max_side ({})",
                i.min_side, i.max_side
            ));
        }
        if self.logging.enabled && (self.logging.queue_capacity == 0 || self.logging.max_in_flight == 0) {
            return Err("logging.queue_capacity and logging.max_in_flight must be at least 1".into());
        }
        if self.logging.enabled {
            self.logging.kafka.validate().map_err(|e| format!("logging.{e}"))?;
            if let Some(spool) = &self.logging.spool
                && (spool.max_bytes < spool.segment_bytes || spool.segment_bytes < 1024)
            {
                return Err("logging.spool: need 1024 <= segment_bytes <= max_bytes".into());
            }
        }
        if self.default_model.is_empty() {
            return Err("default_model must not be empty".into());
        }
        if !self.model_repository.is_dir() {
            return Err(format!(
                "model_repository {} is not a directory (set --model-repository or model_repository)",
                self.model_repository.display()
            ));
        }
        Ok(())
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            jail.create_file("edge.toml", "listen = \"127.0.0.1:9000\"\n[limits]\nmax_concurrent_requests = 8\n")?;
            jail.set_env("VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS", "4");
            jail.set_env("VIGIL_UNRELATED_SETTING", "ignored");
            jail.set_env("VIGIL_METRICS__LISTEN", "127.0.0.1:0");
            let c = EdgeConfig::load(Some(Path::new("edge.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.metrics, MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() });
            assert_eq!(c.limits.max_concurrent_requests, 4);
            assert_eq!(c.limits.max_message_bytes, 8 << 20);
            Ok(())
        });
    }

    #[test]
    fn metrics_endpoint_can_move_or_be_disabled() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            assert_eq!(EdgeConfig::load(None).map_err(|e| e.to_string())?.metrics, MetricsConfig::default());
            jail.create_file("edge.toml", "[metrics]\nlisten = \"0.0.0.0:9200\"\n")?;
            let c = EdgeConfig::load(Some(Path::new("edge.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.metrics, MetricsConfig { enabled: true, listen: "0.0.0.0:9200".parse().unwrap() });
            jail.set_env("VIGIL_METRICS__ENABLED", "false");
            assert!(!EdgeConfig::load(Some(Path::new("edge.toml"))).map_err(|e| e.to_string())?.metrics.enabled);
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            jail.create_file("a.toml", "[limits]\nmax_concurent_requests = 8\n")?;
            let e = EdgeConfig::load(Some(Path::new("a.toml"))).unwrap_err();
            assert!(e.contains("max_concurent_requests"), "{e}");
            jail.create_file("b.toml", "[limits]\nmax_concurrent_requests = \"many\"\n")?;
            let e = EdgeConfig::load(Some(Path::new("b.toml"))).unwrap_err();
            assert!(e.contains("limits.max_concurrent_requests"), "{e}");
            jail.create_file("c.toml", "[limits]\nmax_concurrent_requests = 0\n")?;
            let e = EdgeConfig::load(Some(Path::new("c.toml"))).unwrap_err();
            assert!(e.contains("limits.max_concurrent_requests"), "{e}");
            jail.create_file("d.toml", "[limits]\nmax_request_bytes_in_flight = 1048576\n")?;
            let e = EdgeConfig::load(Some(Path::new("d.toml"))).unwrap_err();
            assert!(e.contains("limits.max_request_bytes_in_flight = 1048576 cannot admit"), "{e}");
            jail.create_file("e.toml", "[limits]\nstream_idle_timeout_ms = 0\n")?;
            let e = EdgeConfig::load(Some(Path::new("e.toml"))).unwrap_err();
            assert!(e.contains("limits.stream_idle_timeout_ms must be at least 1"), "{e}");
            jail.set_env("VIGIL_LISTEN", "not-an-address");
            let e = EdgeConfig::load(None).unwrap_err();
            assert!(e.to_lowercase().contains("key \"listen\""), "{e}");
            Ok(())
        });
    }
}
