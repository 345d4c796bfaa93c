//! Configuration: built-in defaults, then a TOML file, then `VIGIL_...` environment variables,
//! then command-line flags. Validated at start-up; every message names the offending key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
pub use vigil_server::{DeploymentsConfig, Limits, LoggingConfig, MetricsConfig, ModelOptions};

/// Everything `vigil-cloud` can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Address to serve gRPC on. Loopback by default; binding elsewhere must be explicit.
    pub listen: SocketAddr,
    /// Directory of `<name>/<version>/model.onnx` + `model.toml`.
    pub model_repository: PathBuf,
    /// ONNX Runtime shared library; empty: search the usual places.
    pub onnxruntime_lib: Option<PathBuf>,
    pub limits: Limits,
    /// Which versions load, where they run (`execution_provider`), and the directory watch
    /// (on by default: models dropped in, changed or removed load and unload by themselves).
    pub models: ModelOptions,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    /// Follow deployments (shadow, canary, blue-green) from the registry or a control plane.
    pub deployments: DeploymentsConfig,
    pub voice_search: VoiceSearchConfig,
    /// ModelInfer inputs kept for retraining (`[capture]`): which, and where.
    pub capture: vigil_capture::CaptureConfig,
    /// TLS, tokens and the plaintext rule (`[security]`, `[security.tls]`, `[security.auth]`).
    pub security: vigil_security::SecurityConfig,
}

/// `vigil.v1.VoiceSearch`: which models listen, what they are given, the catalog searched and
/// every limit of a query's stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceSearchConfig {
    /// Serve the API (needs the catalog; the models may arrive later).
    pub enabled: bool,
    /// Repository models: Moonshine's encoder and decoder (with `tokenizer.bin` beside it).
    pub encoder_model: String,
    pub decoder_model: String,
    /// CSV of `id,title,category,description`.
    pub catalog: PathBuf,
    /// Silence added before and after each piece of speech: Moonshine transcribes espeak-ng
    /// queries with the fewest word errors at 500 ms (README, "Voice search").
    pub pad_ms: u32,
    /// Level each segment is brought to (RMS dBFS) before recognition, and the most gain used.
    pub target_dbfs: f64,
    pub max_gain_db: f64,
    /// Speech longer than this is cut at its quietest point first (Moonshine fails past 9.27 s).
    pub split_ms: u32,
    /// A segment over this is refused.
    pub max_segment_ms: u64,
    /// Segments and audio one query may hold.
    pub max_segments: usize,
    pub max_query_ms: u64,
    /// Decoding stops at this many tokens per second of audio (a runaway decoder repeats).
    pub max_tokens_per_second: f64,
    /// The stream must open with its SearchConfig within this, and then never fall silent longer.
    pub config_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Results when the client asks for none, and the most it may ask for.
    pub default_results: u32,
    pub max_results: u32,
}

impl Default for VoiceSearchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            encoder_model: "moonshine-tiny-en-encoder".into(),
            decoder_model: "moonshine-tiny-en-decoder".into(),
            catalog: PathBuf::from("deploy/catalog/products.csv"),
            pad_ms: 500,
            target_dbfs: -20.0,
            max_gain_db: 30.0,
            split_ms: 8_000,
            max_segment_ms: 30_000,
            max_segments: 64,
            max_query_ms: 120_000,
            max_tokens_per_second: 6.5,
            config_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            default_results: 5,
            max_results: 50,
        }
    }
}

impl VoiceSearchConfig {
    /// Checks values serde cannot; each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        let key = |k: &str| format!("voice_search.{k}");
        if self.split_ms < 1_000 || self.split_ms as u64 + 2 * self.pad_ms as u64 > 9_000 {
            return Err(format!(
                "{} ({}) + 2 x {} ({}) must be between 1 s and 9 s: Moonshine takes at most 9.27 s",
                key("split_ms"),
                self.split_ms,
                key("pad_ms"),
                self.pad_ms
            ));
        }
        if !(-60.0..=0.0).contains(&self.target_dbfs) || !(0.0..=60.0).contains(&self.max_gain_db) {
            return Err(format!("{} must be in -60..0 and {} in 0..60", key("target_dbfs"), key("max_gain_db")));
        }
        if !(self.max_tokens_per_second > 0.0 && self.max_tokens_per_second <= 1000.0) {
            return Err(format!(
                "{} ({}) must be above 0 and at most 1000",
                key("max_tokens_per_second"),
                self.max_tokens_per_second
            ));
        }
        for (name, value) in [
            ("max_segment_ms", self.max_segment_ms),
            ("max_segments", self.max_segments as u64),
            ("max_query_ms", self.max_query_ms),
            ("config_timeout_ms", self.config_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("default_results", self.default_results as u64),
        ] {
            if value == 0 {
                return Err(format!("{} must be at least 1", key(name)));
            }
        }
        if self.default_results > self.max_results {
            return Err(format!("{} must not exceed {}", key("default_results"), key("max_results")));
        }
        Ok(())
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8010".parse().expect("valid literal"),
            model_repository: PathBuf::from("models"),
            onnxruntime_lib: None,
            // Cloud clients send larger batches and audio: 32 MiB messages, 512 MiB in flight.
            limits: Limits { max_message_bytes: 32 << 20, max_request_bytes_in_flight: 512 << 20, ..Limits::default() },
            models: ModelOptions { watch_interval_ms: 2_000, ..ModelOptions::default() },
            logging: LoggingConfig::named("vigil-cloud", "cloud-1"),
            metrics: MetricsConfig { listen: "127.0.0.1:9110".parse().expect("valid literal"), ..Default::default() },
            deployments: DeploymentsConfig::default(),
            voice_search: VoiceSearchConfig::default(),
            capture: vigil_capture::CaptureConfig::default(),
            security: vigil_security::SecurityConfig::default(),
        }
    }
}

impl vigil_server::cli::ServerConfig for CloudConfig {
    const ENV_KEYS: &'static [&'static str] = &[
        "listen",
        "model_repository",
        "onnxruntime_lib",
        "limits",
        "models",
        "metrics",
        "logging",
        "deployments",
        "voice_search",
        "capture",
        "security",
    ];

    fn validate(&self) -> Result<(), String> {
        vigil_server::config::validate_shared(&self.limits, &self.logging, &self.deployments, &self.model_repository)?;
        self.capture.validate()?;
        self.voice_search.validate()
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::path::Path;
    use vigil_inference::session::ExecutionProvider;

    use vigil_server::cli::ServerConfig;

    use super::*;

    #[test]
    fn the_watch_is_on_and_the_provider_is_the_cpu_unless_told() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("models")?;
            let c = CloudConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.models.watch_interval_ms, 2_000);
            assert_eq!(c.models.execution_provider, ExecutionProvider::Cpu);
            jail.create_file("cloud.toml", "[models]\nexecution_provider = \"cuda\"\nwatch_interval_ms = 0\n")?;
            let c = CloudConfig::load(Some(Path::new("cloud.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.models.execution_provider, ExecutionProvider::Cuda);
            assert_eq!(c.models.watch_interval_ms, 0);
            jail.set_env("VIGIL_LOGGING__ENABLED", "true");
            jail.set_env("VIGIL_LOGGING__KAFKA__BROKERS", "kafka-1:9092");
            let c = CloudConfig::load(None).map_err(|e| e.to_string())?;
            assert!(c.logging.enabled && c.logging.kafka.brokers == "kafka-1:9092", "{:?}", c.logging);
            jail.create_file("bad.toml", "[models]\nexecution_provider = \"tpu\"\n")?;
            let e = CloudConfig::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(e.contains("models.execution_provider") && e.contains("cpu") && e.contains("cuda"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_token_budget_must_be_a_number_a_decoder_can_stop_at() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6] {
            let config = VoiceSearchConfig { max_tokens_per_second: bad, ..VoiceSearchConfig::default() };
            let e = config.validate().unwrap_err();
            assert!(e.contains("max_tokens_per_second") && e.contains("at most 1000"), "{bad}: {e}");
        }
        assert!(VoiceSearchConfig::default().validate().is_ok());
    }

    #[test]
    fn the_shipped_file_says_the_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cloud.toml");
        // No environment here: the file alone over the defaults.
        let config: CloudConfig =
            vigil_server::cli::layered(CloudConfig::default(), Some(&shipped), &[]).extract().unwrap();
        assert_eq!(config, CloudConfig::default());
    }
}
