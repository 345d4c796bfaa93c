//! A Triton-like model repository: `<root>/<name>/<version>/model.onnx` + `model.toml`.
//! By default the newest version of each model is loaded and served; a version can be pinned.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::InferenceError;
use crate::batcher::Batcher;
use crate::config::ModelConfig;
use crate::session::ModelSession;
use crate::stats::ModelStats;

/// Which versions to load.
#[derive(Debug, Clone, Default)]
pub struct RepositoryOptions {
    /// Load every version found (each can be addressed explicitly), not only the served one.
    pub load_all_versions: bool,
    /// Version served when a request names none, per model; default: the newest.
    pub pinned_versions: HashMap<String, u64>,
    /// Overrides every model's `intra_op_threads` when set.
    pub intra_op_threads: Option<usize>,
}

/// One loaded model version, ready to infer.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub batcher: Batcher,
    pub stats: Arc<ModelStats>,
    pub path: PathBuf,
}

/// All loaded versions of one model.
pub struct ModelEntry {
    pub name: String,
    pub versions: BTreeMap<u64, Arc<LoadedModel>>,
    pub default_version: u64,
}

impl ModelEntry {
    /// The version served when a request names none.
    pub fn default_model(&self) -> &Arc<LoadedModel> {
        &self.versions[&self.default_version]
    }
}

/// The models a server serves.
pub struct ModelRepository {
    root: PathBuf,
    models: BTreeMap<String, ModelEntry>,
}

impl ModelRepository {
    /// Scans `root` and loads the selected versions of every model. Fails on the first
    /// problem, naming the file.
    pub fn load(root: &Path, options: &RepositoryOptions) -> Result<Self, InferenceError> {
        let listing = std::fs::read_dir(root)
            .map_err(|e| InferenceError::Config(format!("cannot read model repository {}: {e}", root.display())))?;
        let mut models = BTreeMap::new();
        let mut dirs: Vec<PathBuf> = listing.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let found = find_versions(&dir)?;
            if found.is_empty() {
                tracing::warn!(dir = %dir.display(), "no <version>/model.toml + model.onnx; skipped");
                continue;
            }
            let newest = *found.keys().next_back().expect("non-empty");
            let default_version = options.pinned_versions.get(&name).copied().unwrap_or(newest);
            if !found.contains_key(&default_version) {
                return Err(InferenceError::Config(format!(
                    "model '{name}': pinned version {default_version} not found in {} (have {:?})",
                    dir.display(),
                    found.keys().collect::<Vec<_>>()
                )));
            }
            let mut versions = BTreeMap::new();
            for (version, path) in found {
                if options.load_all_versions || version == default_version {
                    versions.insert(version, Arc::new(load_version(&name, version, &path, options)?));
                }
            }
            models.insert(name.clone(), ModelEntry { name, versions, default_version });
        }
        if models.is_empty() {
            return Err(InferenceError::Config(format!(
                "model repository {} holds no models (expected <name>/<version>/model.toml and model.onnx)",
                root.display()
            )));
        }
        Ok(Self { root: root.to_path_buf(), models })
    }

    /// Where the repository lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// A model by name.
    pub fn entry(&self, name: &str) -> Result<&ModelEntry, InferenceError> {
        self.models.get(name).ok_or_else(|| {
            InferenceError::NotFound(format!(
                "model '{name}' not found; available: {}",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// A model version; an empty `version` means the served one.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, InferenceError> {
        let entry = self.entry(name)?;
        if version.is_empty() {
            return Ok(entry.default_model().clone());
        }
        let not_found = || {
            InferenceError::NotFound(format!(
                "version '{version}' of model '{name}' not found; loaded versions: {}",
                entry.versions.keys().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
            ))
        };
        let number: u64 = version.parse().map_err(|_| not_found())?;
        entry.versions.get(&number).cloned().ok_or_else(not_found)
    }
}

fn find_versions(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, InferenceError> {
    let mut versions = BTreeMap::new();
    let listing =
        std::fs::read_dir(dir).map_err(|e| InferenceError::Config(format!("cannot read {}: {e}", dir.display())))?;
    for entry in listing.filter_map(|e| e.ok()) {
        let path = entry.path();
        let Some(version) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if path.join("model.toml").is_file() && path.join("model.onnx").is_file() {
            versions.insert(version, path);
        }
    }
    Ok(versions)
}

fn load_version(
    name: &str,
    version: u64,
    dir: &Path,
    options: &RepositoryOptions,
) -> Result<LoadedModel, InferenceError> {
    let config = ModelConfig::load(&dir.join("model.toml"))?;
    if config.name != name || config.version != version {
        return Err(InferenceError::Config(format!(
            "{}: model.toml says {} version {}, but the directory is {name}/{version}",
            dir.display(),
            config.name,
            config.version
        )));
    }
    let threads = options.intra_op_threads.unwrap_or(config.intra_op_threads);
    let sessions = (0..config.instances)
        .map(|_| ModelSession::load(&dir.join("model.onnx"), &config, threads))
        .collect::<Result<Vec<_>, _>>()?;
    let stats = Arc::new(ModelStats::default());
    let batcher = Batcher::start(name, config.batching(), sessions, stats.clone());
    tracing::info!(model = name, version, instances = config.instances, "model loaded");
    Ok(LoadedModel { config, batcher, stats, path: dir.to_path_buf() })
}
