//! Configuration: built-in defaults, then a TOML file, then `VIGIL_...` environment variables,
//! then command-line flags. Validated at start-up; every message names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
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
        }
    }
}

/// Top-level keys that `VIGIL_...` variables may set.
pub const ENV_KEYS: &[&str] =
    &["listen", "model_repository", "onnxruntime_lib", "limits", "models", "metrics", "deployments"];

impl CloudConfig {
    /// Layers defaults, the optional file and the environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        Self::figment(file).extract::<Self>().map_err(|e| e.to_string()).and_then(|c| {
            c.validate()?;
            Ok(c)
        })
    }

    /// The layered sources, for callers that add their own (command-line flags).
    pub fn figment(file: Option<&Path>) -> Figment {
        vigil_server::cli::layered(Self::default(), file, ENV_KEYS)
    }

    /// Checks values serde cannot: each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        vigil_server::config::validate_shared(&self.limits, &self.logging, &self.deployments, &self.model_repository)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use vigil_inference::session::ExecutionProvider;

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
            jail.create_file("bad.toml", "[models]\nexecution_provider = \"tpu\"\n")?;
            let e = CloudConfig::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(e.contains("models.execution_provider") && e.contains("cpu") && e.contains("cuda"), "{e}");
            Ok(())
        });
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
