//! Configuration: built-in defaults, then a TOML file, then `VIGIL_...` environment variables
//! (`__` separates sections: `VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS=32`), then command-line flags.
//! Validated at start-up; every message names the offending key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vigil_inference::image::ImageLimits;
pub use vigil_server::{DeploymentsConfig, Limits, LoggingConfig, MetricsConfig, ModelOptions};

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
    /// Follow deployments (shadow, canary, blue-green) from the registry's database.
    pub deployments: DeploymentsConfig,
    /// Images kept for retraining (`[capture]`): which, and where.
    pub capture: vigil_capture::CaptureConfig,
    /// TLS, tokens and the plaintext rule (`[security]`, `[security.tls]`, `[security.auth]`).
    pub security: vigil_security::SecurityConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8001".parse().expect("valid literal"),
            model_repository: PathBuf::from("models"),
            default_model: "scratch-detector".into(),
            onnxruntime_lib: None,
            limits: Limits::default(),
            images: ImageLimits::default(),
            models: ModelOptions::default(),
            logging: LoggingConfig::named("vigil-edge", "edge-1"),
            metrics: MetricsConfig::default(),
            deployments: DeploymentsConfig::default(),
            capture: vigil_capture::CaptureConfig::default(),
            security: vigil_security::SecurityConfig::default(),
        }
    }
}

impl vigil_server::cli::ServerConfig for EdgeConfig {
    const ENV_KEYS: &'static [&'static str] = &[
        "listen",
        "model_repository",
        "default_model",
        "onnxruntime_lib",
        "limits",
        "images",
        "models",
        "metrics",
        "logging",
        "deployments",
        "capture",
        "security",
    ];

    fn validate(&self) -> Result<(), String> {
        let i = &self.images;
        if i.min_side == 0 || i.min_side > i.max_side {
            return Err(format!(
                "images.min_side ({}) must be between 1 and images.max_side ({})",
                i.min_side, i.max_side
            ));
        }
        // The largest image the header checks let through must fit the budget on its own.
        let largest = vigil_inference::image::largest_preparing_bytes(i);
        if i.max_decode_bytes == 0 || i.max_preparing_bytes_in_flight < largest {
            return Err(format!(
                "images.max_decode_bytes ({}) must be above 0 and images.max_preparing_bytes_in_flight ({}) at least \
                 {largest}, what preparing the largest image allowed takes (images.max_side {} and max_decode_bytes)",
                i.max_decode_bytes, i.max_preparing_bytes_in_flight, i.max_side
            ));
        }
        self.capture.validate()?;
        if self.default_model.is_empty() {
            return Err("default_model must not be empty".into());
        }
        vigil_server::config::validate_shared(&self.limits, &self.logging, &self.deployments, &self.model_repository)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;
    use std::path::Path;

    use vigil_server::cli::ServerConfig;

    #[test]
    fn image_memory_limits_must_leave_room_for_an_image() {
        let mut config = EdgeConfig::default();
        config.images.max_preparing_bytes_in_flight = 0;
        let e = config.validate().unwrap_err();
        assert!(e.contains("images.max_preparing_bytes_in_flight (0) at least 318767104"), "{e}");
        // A larger side needs a larger budget: an 8192x8192 image takes 704 MiB of planes.
        let mut config = EdgeConfig::default();
        config.images.max_side = 8192;
        assert!(config.validate().unwrap_err().contains("at least 872415232"));
        config.images.max_preparing_bytes_in_flight = 1 << 30;
        // Validated once: other tests move the working directory (figment's Jail), where the
        // relative model repository may or may not exist between two calls.
        let verdict = config.validate();
        assert!(verdict.as_ref().err().is_none_or(|e| !e.contains("images.")), "{verdict:?}");
        let mut config = EdgeConfig::default();
        config.images.max_decode_bytes = 0;
        assert!(config.validate().unwrap_err().starts_with("images.max_decode_bytes (0) must be above 0"));
        // A file from before the setting existed takes its default.
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            jail.create_file("edge.toml", "[images]\nmax_side = 4096\nmin_side = 16\nmax_decode_bytes = 134217728\n")?;
            let loaded = EdgeConfig::load(Some(Path::new("edge.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(loaded.images.max_preparing_bytes_in_flight, 512 << 20);
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            jail.create_file("edge.toml", "listen = \"127.0.0.1:9000\"\n[limits]\nmax_concurrent_requests = 8\n")?;
            jail.set_env("VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS", "4");
            jail.set_env("VIGIL_UNRELATED_SETTING", "ignored");
            jail.set_env("VIGIL_METRICS__LISTEN", "127.0.0.1:0");
            jail.set_env("VIGIL_LOGGING__ENABLED", "true");
            jail.set_env("VIGIL_LOGGING__KAFKA__BROKERS", "kafka-1:9092");
            let c = EdgeConfig::load(Some(Path::new("edge.toml"))).map_err(|e| e.to_string())?;
            assert!(c.logging.enabled && c.logging.kafka.brokers == "kafka-1:9092", "{:?}", c.logging);
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
