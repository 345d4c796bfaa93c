//! `[capture]` in a server's configuration.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What is captured, and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    pub enabled: bool,
    /// The object store: `file:///dir` (or a plain path) or `s3://bucket/prefix`.
    pub store: String,
    /// For `s3://`: the endpoint of an S3-compatible service (default: AWS), its region, and
    /// whether plain http is allowed. Credentials come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_allow_http: bool,
    /// Captures wait here until stored (an unreachable store loses nothing; a restart resumes).
    pub spool: PathBuf,
    /// The most the spool may hold; captures beyond are dropped and counted.
    pub max_spool_bytes: u64,
    /// Captures waiting to be spooled; beyond, dropped and counted (the answer never waits).
    pub queue: usize,
    /// Inputs larger than this are not captured (counted).
    pub max_input_bytes: usize,
    /// The share of predictions captured, for models without their own.
    pub rate: f64,
    /// `[capture.models.<name>]`.
    pub models: HashMap<String, ModelCapture>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            store: "captures".into(),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_allow_http: false,
            spool: PathBuf::from("capture-spool"),
            max_spool_bytes: 1 << 30,
            queue: 256,
            max_input_bytes: 8 << 20,
            rate: 0.01,
            models: HashMap::new(),
        }
    }
}

/// One model's capture policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCapture {
    /// The share of its predictions captured (default: `capture.rate`).
    pub rate: Option<f64>,
    /// Per station, overriding `rate`.
    pub stations: HashMap<String, f64>,
    pub privacy: Privacy,
}

/// What may be kept of a model's inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// The raw input, with station and device ids.
    #[default]
    Full,
    /// The raw input, station and device ids replaced by a keyed hash (HMAC-SHA256 with the key
    /// in `VIGIL_CAPTURE_HASH_KEY`).
    HashedIds,
    /// No raw input: the logged features only.
    FeaturesOnly,
    /// Nothing.
    Never,
}

/// The environment variable holding the key of hashed ids.
pub const HASH_KEY_ENV: &str = "VIGIL_CAPTURE_HASH_KEY";

impl CaptureConfig {
    /// Checks rates and limits; a model hashing ids needs the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !rate_ok(self.rate) {
            return Err(format!("capture.rate {} must be in [0, 1]", self.rate));
        }
        if self.queue == 0 || self.max_input_bytes == 0 || self.max_spool_bytes == 0 {
            return Err("capture.queue, capture.max_input_bytes and capture.max_spool_bytes must be above 0".into());
        }
        for (name, m) in &self.models {
            if let Some(r) = m.rate.filter(|r| !rate_ok(*r)) {
                return Err(format!("capture.models.{name}.rate {r} must be in [0, 1]"));
            }
            if let Some((station, r)) = m.stations.iter().find(|(_, r)| !rate_ok(**r)) {
                return Err(format!("capture.models.{name}.stations.{station} {r} must be in [0, 1]"));
            }
            if m.privacy == Privacy::HashedIds && std::env::var_os(HASH_KEY_ENV).is_none_or(|k| k.is_empty()) {
                return Err(format!("capture.models.{name} hashes ids: set {HASH_KEY_ENV} to the key"));
            }
        }
        Ok(())
    }

    /// The rate at which `model`'s predictions at `station` are captured (0 when its privacy
    /// forbids raw inputs).
    pub fn rate_for(&self, model: &str, station: &str) -> f64 {
        match self.models.get(model) {
            Some(m) if matches!(m.privacy, Privacy::Never | Privacy::FeaturesOnly) => 0.0,
            Some(m) => m.stations.get(station).copied().or(m.rate).unwrap_or(self.rate),
            None => self.rate,
        }
    }

    /// `model`'s privacy setting.
    pub fn privacy(&self, model: &str) -> Privacy {
        self.models.get(model).map(|m| m.privacy).unwrap_or_default()
    }
}
