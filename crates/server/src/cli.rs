//! What every server binary shares at start-up: configuration layered from built-in defaults,
//! a TOML file, `VIGIL_...` environment variables (`__` separates sections:
//! `VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS=32`) and the command-line flags, and the first,
//! machine-readable line a server prints once it serves.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::RunningServer;

/// A server binary's whole configuration: built-in defaults, the top-level keys `VIGIL_...`
/// variables may set, and the checks serde cannot make. Loading is the same for every server.
pub trait ServerConfig: Default + Serialize + DeserializeOwned {
    /// Top-level keys that `VIGIL_...` variables may set.
    const ENV_KEYS: &'static [&'static str];

    /// Checks values serde cannot: each message names its key.
    fn validate(&self) -> Result<(), String>;

    /// Layers defaults, the optional file and the environment, then validates.
    fn load(file: Option<&Path>) -> Result<Self, String> {
        let config: Self = layered(Self::default(), file, Self::ENV_KEYS).extract().map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults, the file `flags` name, the environment, then the flags; validated.
    fn from_flags(flags: &ServerFlags) -> anyhow::Result<Self> {
        let config: Self = flags
            .figment(Self::default(), Self::ENV_KEYS)
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        Ok(config)
    }
}

/// The flags every prediction server takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerFlags {
    /// TOML configuration file (values can be overridden by VIGIL_... variables and flags).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8001 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the Prometheus /metrics endpoint, e.g. 127.0.0.1:9102 (port 0 picks a free port).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Model repository directory (<name>/<version>/model.onnx + model.toml).
    #[arg(long)]
    pub model_repository: Option<PathBuf>,
    /// ONNX Runtime shared library (libonnxruntime.so).
    #[arg(long)]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Allow plaintext on an address other than loopback (without [security.tls]); warns.
    #[arg(long)]
    pub insecure: bool,
}

impl ServerFlags {
    /// `defaults`, then the configuration file, the environment (top-level keys `env_keys`),
    /// then these flags.
    pub fn figment<T: Serialize>(&self, defaults: T, env_keys: &[&str]) -> Figment {
        let mut figment = layered(defaults, self.config.as_deref(), env_keys);
        let flags: [(&str, Option<String>); 4] = [
            ("listen", self.listen.clone()),
            ("metrics.listen", self.metrics_listen.clone()),
            ("model_repository", self.model_repository.as_ref().map(|p| p.display().to_string())),
            ("onnxruntime_lib", self.onnxruntime_lib.as_ref().map(|p| p.display().to_string())),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        if self.insecure {
            figment = figment.merge(Serialized::default("security.insecure", true));
        }
        figment
    }
}

/// `defaults`, then the optional TOML `file`, then the `VIGIL_...` variables whose first key is
/// one of `env_keys`.
pub fn layered<T: Serialize>(defaults: T, file: Option<&Path>, env_keys: &[&str]) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    let env_keys: Vec<String> = env_keys.iter().map(|k| k.to_string()).collect();
    figment.merge(Env::prefixed("VIGIL_").split("__").filter(move |key| {
        env_keys.iter().any(|k| key.as_str().split('.').next().is_some_and(|first| first.eq_ignore_ascii_case(k)))
    }))
}

/// The first stdout line of a server that serves: scripts and tests wait for it.
/// `<name> listening on ADDR (metrics on http://ADDR/metrics) serving model@version, ...`
pub fn announce(name: &str, server: &RunningServer) {
    let models: Vec<String> =
        server.repository.models().iter().map(|m| format!("{}@{}", m.name, m.default_version)).collect();
    let scheme = server.scheme;
    let metrics = server.metrics_addr.map(|a| format!(" (metrics on {scheme}://{a}/metrics)")).unwrap_or_default();
    println!("{name} listening on {}{metrics} serving {}", server.addr, models.join(", "));
}
