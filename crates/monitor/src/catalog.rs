//! What the monitor knows of each model from the model repository: its label set (to check
//! submitted labels) and its training reference (the default drift baseline).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use vigil_drift::Histogram;

/// A model version's reference distributions, from its `reference.json`.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Number of training examples summarised.
    pub n: u64,
    pub features: BTreeMap<String, Histogram>,
    pub score: Option<Histogram>,
}

/// One model version.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// Output labels, as in `model.toml`; the last is the positive class for precision and recall.
    pub labels: Vec<String>,
    pub reference: Option<Reference>,
}

/// Every model version found in the repository.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: BTreeMap<(String, String), ModelInfo>,
}

#[derive(Deserialize)]
struct ModelToml {
    name: String,
    version: toml::Value,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Deserialize)]
struct ReferenceJson {
    n: u64,
    features: BTreeMap<String, HistogramJson>,
    score: Option<HistogramJson>,
}

#[derive(Deserialize)]
struct HistogramJson {
    bin_edges: Vec<f64>,
    counts: Vec<f64>,
}

impl From<HistogramJson> for Histogram {
    fn from(h: HistogramJson) -> Self {
        Histogram { edges: h.bin_edges, counts: h.counts }
    }
}

impl Catalog {
    /// Reads `<root>/<model>/<version>/{model.toml,reference.json}`; a missing root is an empty
    /// catalog, a malformed file an error naming it.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        let Ok(dirs) = std::fs::read_dir(root) else {
            tracing::warn!(path = %root.display(), "no model repository; drift against the training reference is off");
            return Ok(Self::default());
        };
        for model_dir in dirs.flatten().filter(|e| e.path().is_dir()) {
            for version_dir in std::fs::read_dir(model_dir.path())?.flatten().filter(|e| e.path().is_dir()) {
                let dir = version_dir.path();
                let toml_path = dir.join("model.toml");
                let Ok(text) = std::fs::read_to_string(&toml_path) else { continue };
                let m: ModelToml =
                    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", toml_path.display()))?;
                let version = match m.version {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                let ref_path = dir.join("reference.json");
                let reference = match std::fs::read_to_string(&ref_path) {
                    Ok(text) => {
                        let r: ReferenceJson =
                            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", ref_path.display()))?;
                        Some(Reference {
                            n: r.n,
                            features: r.features.into_iter().map(|(k, h)| (k, h.into())).collect(),
                            score: r.score.map(Into::into),
                        })
                    }
                    Err(_) => None,
                };
                let info = ModelInfo { name: m.name.clone(), version: version.clone(), labels: m.labels, reference };
                models.insert((m.name, version), info);
            }
        }
        Ok(Self { models })
    }

    /// A catalog of the given models (for tests and embedding).
    pub fn from_models(list: Vec<ModelInfo>) -> Self {
        Self { models: list.into_iter().map(|m| ((m.name.clone(), m.version.clone()), m)).collect() }
    }

    /// One version, or with `None` the highest version of the model.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<&ModelInfo> {
        match version {
            Some(v) => self.models.get(&(name.to_string(), v.to_string())),
            None => self
                .models
                .values()
                .filter(|m| m.name == name)
                .max_by_key(|m| (m.version.parse::<u64>().unwrap_or(0), m.version.clone())),
        }
    }

    /// Every model version known.
    pub fn models(&self) -> impl Iterator<Item = &ModelInfo> {
        self.models.values()
    }
}
