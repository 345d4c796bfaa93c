//! What the monitor knows of each model from the model repository: its label set (to check
//! submitted labels) and its training reference (the default drift baseline).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Deserialize;
use vigil_drift::{Cdf, Histogram};
use vigil_proto::vigil::v1::Sketch;

use crate::sketch;

/// A model version's reference distributions, from its `reference.json`.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Number of training examples summarised.
    pub n: u64,
    pub features: BTreeMap<String, ReferenceFeature>,
    pub score: Option<ReferenceFeature>,
}

/// One feature's (or the score's) reference.
#[derive(Debug, Clone)]
pub struct ReferenceFeature {
    /// The histogram over the reference's own bins (PSI, display, the method choice).
    pub histogram: Histogram,
    /// The distribution distances are measured against: the raw sample put through the same
    /// quantile sketch as live values, so both sides carry the same bucket error and it cancels
    /// (or the histogram, spread evenly over its bins, when the file has no sample).
    pub distribution: Cdf,
    /// Standard deviation of the raw sample (or of the histogram), which normalises Wasserstein.
    pub std: f64,
}

impl ReferenceFeature {
    /// From the histogram and, when given, a raw sample of the same values.
    pub fn new(histogram: Histogram, sample: Option<&[f64]>) -> Result<Self, vigil_drift::DriftError> {
        match sample.filter(|s| !s.is_empty()) {
            Some(sample) => {
                let mut sketched = Sketch::default();
                sample.iter().for_each(|&v| sketch::add(&mut sketched, v));
                Ok(Self {
                    distribution: sketch::distribution(&sketched)?,
                    std: Cdf::from_samples(sample).std(),
                    histogram,
                })
            }
            None => {
                let distribution = Cdf::from_histogram(&histogram.edges, &histogram.counts)?;
                Ok(Self { std: distribution.std(), distribution, histogram })
            }
        }
    }
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
    #[serde(default)]
    sample: Vec<f64>,
}

impl TryFrom<HistogramJson> for ReferenceFeature {
    type Error = vigil_drift::DriftError;

    fn try_from(h: HistogramJson) -> Result<Self, Self::Error> {
        let histogram = Histogram::new(h.bin_edges, h.counts)?;
        ReferenceFeature::new(histogram, Some(&h.sample))
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
                        let bad = |name: &str, e| anyhow::anyhow!("{}: {name}: {e}", ref_path.display());
                        let mut features = BTreeMap::new();
                        for (name, h) in r.features {
                            features.insert(name.clone(), h.try_into().map_err(|e| bad(&name, e))?);
                        }
                        let score = r.score.map(TryInto::try_into).transpose().map_err(|e| bad("score", e))?;
                        Some(Reference { n: r.n, features, score })
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

/// The catalog as a running monitor holds it: read again when a version appears in the
/// repository, leaves it, or has its `model.toml` or `reference.json` changed, so that a
/// retrained version's labels and drift reference count as soon as it is there.
#[derive(Debug, Default)]
pub struct LiveCatalog {
    /// None: a fixed catalog.
    root: Option<PathBuf>,
    state: RwLock<(Listing, Arc<Catalog>)>,
}

/// What the repository held when last read: each version's files and their modification times.
type Listing = Vec<(PathBuf, Option<SystemTime>)>;

impl LiveCatalog {
    /// Reads the repository at `root` ([`Catalog::load`]) and follows it on [`Self::refresh`].
    pub fn follow(root: &Path) -> anyhow::Result<Self> {
        let listing = list(root);
        let catalog = Catalog::load(root)?;
        Ok(Self { root: Some(root.to_path_buf()), state: RwLock::new((listing, Arc::new(catalog))) })
    }

    /// The catalog now.
    pub fn current(&self) -> Arc<Catalog> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Reads the repository again when its versions changed since the last look; whether it
    /// did. A malformed file is an error (once per change) and the catalog stays as it was.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        let Some(root) = &self.root else { return Ok(false) };
        let listing = list(root);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.0 == listing {
            return Ok(false);
        }
        state.0 = listing;
        state.1 = Arc::new(Catalog::load(root)?);
        Ok(true)
    }
}

impl From<Arc<Catalog>> for LiveCatalog {
    /// A fixed catalog, never read again.
    fn from(catalog: Arc<Catalog>) -> Self {
        Self { root: None, state: RwLock::new((Vec::new(), catalog)) }
    }
}

/// `<root>/<model>/<version>/{model.toml,reference.json}` with their modification times, sorted.
fn list(root: &Path) -> Listing {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default()
    };
    let mut listing: Listing = dirs(root)
        .iter()
        .flat_map(|model| dirs(model))
        .flat_map(|version| ["model.toml", "reference.json"].map(|f| version.join(f)))
        .map(|file| {
            let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            (file, modified)
        })
        .collect();
    listing.sort();
    listing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(root: &Path, model: &str, version: u32) {
        let dir = root.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!("name = \"{model}\"\nversion = {version}\nlabels = [\"ok\", \"defect\"]\n");
        std::fs::write(dir.join("model.toml"), toml).unwrap();
    }

    #[test]
    fn a_live_catalog_reads_versions_added_later_and_keeps_its_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        version(dir.path(), "m", 1);
        let live = LiveCatalog::follow(dir.path()).unwrap();
        assert!(!live.refresh().unwrap(), "nothing changed");
        assert!(live.current().get("m", Some("2")).is_none());

        version(dir.path(), "m", 2);
        assert!(live.refresh().unwrap());
        assert_eq!(live.current().get("m", None).unwrap().version, "2");
        assert_eq!(live.current().get("m", Some("2")).unwrap().labels, ["ok", "defect"]);
        assert!(!live.refresh().unwrap());

        // A broken reference is reported once; the catalog keeps version 2 as it was.
        std::fs::write(dir.path().join("m/2/reference.json"), "{").unwrap();
        assert!(live.refresh().is_err());
        assert!(!live.refresh().unwrap(), "reported once per change");
        assert!(live.current().get("m", Some("2")).is_some_and(|m| m.reference.is_none()));

        // A fixed catalog never changes.
        let fixed = LiveCatalog::from(Arc::new(Catalog::default()));
        assert!(!fixed.refresh().unwrap());
    }
}
