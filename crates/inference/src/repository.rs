//! A Triton-like model repository: `<root>/<name>/<version>/model.onnx` + `model.toml`.
//!
//! The repository is live: the models served are an immutable snapshot swapped atomically
//! ([`ArcSwap`]). Loading a model reads its directory, loads the versions its version policy
//! selects, warms each up with a synthetic request and only then swaps the new snapshot in; a
//! load that fails leaves what was serving in place and is reported by [`ModelRepository::index`].
//! Requests hold the [`LoadedModel`] they started on, so they finish on that version; an unloaded
//! or replaced version goes away when its last request is done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::InferenceError;
use crate::batcher::Batcher;
use crate::config::{ModelConfig, VersionPolicy};
use crate::session::ModelSession;
use crate::stats::ModelStats;
use crate::tensor::{DataType, Tensor};

/// Which versions to load.
#[derive(Debug, Clone, Default)]
pub struct RepositoryOptions {
    /// Load every version found (each can be addressed explicitly), whatever the models' policies.
    pub load_all_versions: bool,
    /// Version served when a request names none, per model; default: the newest loaded.
    pub pinned_versions: HashMap<String, u64>,
    /// Overrides every model's `intra_op_threads` (and `inline_intra_op_threads`, so no model
    /// loads a session of its own for inline runs) when set.
    pub intra_op_threads: Option<usize>,
    /// Where every model runs.
    pub execution_provider: crate::session::ExecutionProvider,
}

/// One loaded model version, ready to infer.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub batcher: Batcher,
    pub stats: Arc<ModelStats>,
    pub path: PathBuf,
    /// The hex sha256 of the `model.onnx` its sessions were built from (the registry's digest
    /// of an artifact): a deployment serves a version only while this is the registered one.
    pub sha256: String,
}

/// All loaded versions of one model.
pub struct ModelEntry {
    pub name: String,
    pub versions: BTreeMap<u64, Arc<LoadedModel>>,
    pub default_version: u64,
    /// What the files looked like when these versions were loaded (for the directory watch).
    fingerprint: Fingerprint,
    /// The versions the model's own policy (or the pin) selected; the others are loaded because
    /// a deployment names them.
    by_policy: BTreeSet<u64>,
}

impl ModelEntry {
    /// The version served when a request names none.
    pub fn default_model(&self) -> &Arc<LoadedModel> {
        &self.versions[&self.default_version]
    }
}

/// A model version's state in the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionState {
    /// Loaded and serving.
    Ready,
    /// Not serving, with the reason (unloaded, or the error of its last load).
    Unavailable(String),
}

/// One row of [`ModelRepository::index`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// None for a model whose load failed before any version was known.
    pub version: Option<u64>,
    pub state: VersionState,
}

/// Versions found in a model directory with their files' sizes and modification times.
/// Each version's files (vocabularies and tokenizers too), by name: size and modification time.
type Fingerprint = BTreeMap<u64, Vec<(std::ffi::OsString, u64, Option<SystemTime>)>>;

type Snapshot = BTreeMap<String, Arc<ModelEntry>>;

/// The models a server serves, swappable while it serves.
pub struct ModelRepository {
    root: PathBuf,
    options: RepositoryOptions,
    models: ArcSwap<Snapshot>,
    /// The last failed load or the unload of each model not (fully) serving, for the index.
    problems: Mutex<BTreeMap<String, String>>,
    /// The files of each model's last failed load or unload: the watch leaves the model alone
    /// until they change.
    settled: Mutex<BTreeMap<String, Fingerprint>>,
    /// Loads and unloads, one at a time.
    changing: Mutex<()>,
    /// Versions loaded whatever their model's policy, because a deployment names them.
    kept: Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

impl ModelRepository {
    /// Scans `root` and loads every model it holds. Fails on the first problem, naming the file:
    /// at start-up a broken repository is an error, not a partial server.
    pub fn load(root: &Path, options: &RepositoryOptions) -> Result<Self, InferenceError> {
        let repository = Self {
            root: root.to_path_buf(),
            options: options.clone(),
            models: ArcSwap::from_pointee(BTreeMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            settled: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
            kept: Mutex::new(BTreeMap::new()),
        };
        let names = repository.model_dirs()?;
        let mut snapshot = Snapshot::new();
        for name in names {
            match repository.read_model(&name)? {
                Some(entry) => {
                    snapshot.insert(name, Arc::new(entry));
                }
                None => tracing::warn!(model = %name, "no <version>/model.toml + model.onnx; skipped"),
            }
        }
        if snapshot.is_empty() {
            return Err(InferenceError::Config(format!(
                "model repository {} holds no models (expected <name>/<version>/model.toml and model.onnx)",
                root.display()
            )));
        }
        repository.models.store(Arc::new(snapshot));
        Ok(repository)
    }

    /// Where the repository lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The models serving now (a snapshot: later loads do not change it).
    pub fn models(&self) -> Vec<Arc<ModelEntry>> {
        self.models.load().values().cloned().collect()
    }

    /// A model by name. One the repository knows but does not serve (unloaded, or its load
    /// failed) is NOT_FOUND as in Triton ("has no available versions"), with the reason.
    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>, InferenceError> {
        let snapshot = self.models.load();
        snapshot.get(name).cloned().ok_or_else(|| match self.problems.lock().get(name) {
            Some(reason) if is_model_name(name) && self.root.join(name).is_dir() => InferenceError::NotFound(format!(
                "model '{name}' has no available versions ({reason}): load it with RepositoryModelLoad, or fix its files"
            )),
            _ => InferenceError::NotFound(format!(
                "model '{name}' not found; available: {}",
                snapshot.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
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

    /// Every model in the repository directory or serving, and each version's state: serving
    /// versions are ready; versions on disk that do not serve are unavailable with the reason
    /// (the model's last failed load, its unload, or "not loaded": left out by the version
    /// policy, or not picked up yet).
    pub fn index(&self) -> Vec<IndexEntry> {
        let snapshot = self.models.load();
        let problems = self.problems.lock().clone();
        let mut names: Vec<String> = self.model_dirs().unwrap_or_default();
        names.extend(snapshot.keys().cloned());
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            let serving = snapshot.get(&name);
            let on_disk = find_versions(&self.root.join(&name)).unwrap_or_default();
            let mut versions: Vec<u64> = on_disk.keys().copied().collect();
            versions.extend(serving.iter().flat_map(|e| e.versions.keys().copied()));
            versions.sort_unstable();
            versions.dedup();
            if versions.is_empty() {
                let reason = problems.get(&name).cloned().unwrap_or_else(|| "no versions".into());
                rows.push(IndexEntry { name: name.clone(), version: None, state: VersionState::Unavailable(reason) });
            }
            for version in versions {
                let state = if serving.is_some_and(|e| e.versions.contains_key(&version)) {
                    VersionState::Ready
                } else {
                    VersionState::Unavailable(problems.get(&name).cloned().unwrap_or_else(|| "not loaded".into()))
                };
                rows.push(IndexEntry { name: name.clone(), version: Some(version), state });
            }
        }
        rows
    }

    /// (Re)loads a model from its directory and swaps it in; blocks while sessions load and warm
    /// up (call it off the async threads). On failure what was serving keeps serving, and the
    /// error is returned and shown in the index.
    pub fn load_model(&self, name: &str) -> Result<(), InferenceError> {
        let _one_at_a_time = self.changing.lock();
        self.load_model_changing(name)
    }

    /// [`load_model`](Self::load_model) for a caller that holds `changing`.
    fn load_model_changing(&self, name: &str) -> Result<(), InferenceError> {
        if !is_model_name(name) {
            return Err(InferenceError::invalid(format!(
                "'{name}' is not a model's name: one directory of the model repository, not a path"
            )));
        }
        if !self.root.join(name).is_dir() {
            return Err(InferenceError::NotFound(format!(
                "model '{name}' is not in the model repository {}",
                self.root.display()
            )));
        }
        let result = self.read_model(name).and_then(|entry| {
            entry.ok_or_else(|| {
                InferenceError::NotFound(format!(
                    "model '{name}' has no <version>/model.toml + model.onnx in {}",
                    self.root.display()
                ))
            })
        });
        match result {
            Ok(entry) => {
                let versions: Vec<u64> = entry.versions.keys().copied().collect();
                let mut snapshot = Snapshot::clone(&self.models.load());
                snapshot.insert(name.to_string(), Arc::new(entry));
                self.models.store(Arc::new(snapshot));
                self.problems.lock().remove(name);
                // Files that failed or were unloaded before are not held back once they change
                // back: the watch compares with what serves now.
                self.settled.lock().remove(name);
                tracing::info!(model = name, ?versions, "model loaded and serving");
                Ok(())
            }
            Err(e) => {
                let serving = self.entry(name).ok().map(|e| e.versions.keys().copied().collect::<Vec<_>>());
                tracing::error!(model = name, error = %e, ?serving, "model load failed; what was serving still serves");
                self.problems.lock().insert(name.to_string(), format!("load failed: {e}"));
                Err(e)
            }
        }
    }

    /// The versions of `name` loaded whatever the model's version policy, from now on (those
    /// its deployment names); an empty set keeps none. Loads and unloads nothing: returns the
    /// versions that left the set (see [`release_unkept`](Self::release_unkept)).
    pub fn set_kept_versions(&self, name: &str, versions: BTreeSet<u64>) -> Vec<u64> {
        let mut kept = self.kept.lock();
        let before = kept.get(name).cloned().unwrap_or_default();
        if versions.is_empty() {
            kept.remove(name);
        } else {
            kept.insert(name.to_string(), versions.clone());
        }
        before.difference(&versions).copied().collect()
    }

    /// Whether `version` of `name` is kept whatever the model's policy.
    pub fn is_kept(&self, name: &str, version: u64) -> bool {
        self.kept.lock().get(name).is_some_and(|kept| kept.contains(&version))
    }

    /// Takes out of service those of `versions` of `name` that are loaded only because they
    /// were kept, and are kept no more (requests holding them finish on them); the policy's own
    /// and the default stay.
    pub fn release_unkept(&self, name: &str, versions: &[u64]) {
        let _one_at_a_time = self.changing.lock();
        let Ok(entry) = self.entry(name) else { return };
        let kept = self.kept.lock().get(name).cloned().unwrap_or_default();
        let gone: Vec<u64> = versions
            .iter()
            .copied()
            .filter(|v| entry.versions.contains_key(v))
            .filter(|v| !kept.contains(v) && !entry.by_policy.contains(v) && *v != entry.default_version)
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut versions = entry.versions.clone();
        for v in &gone {
            versions.remove(v);
        }
        self.serve_versions(&entry, versions);
        tracing::info!(model = name, versions = ?gone, "versions no deployment names any more: out of service");
    }

    /// Serves `versions` of `entry`'s model in its place, all else as it was (the files'
    /// fingerprint too: a watch still reloads the model under its policy). Called holding
    /// `changing`.
    fn serve_versions(&self, entry: &ModelEntry, versions: BTreeMap<u64, Arc<LoadedModel>>) {
        let updated = ModelEntry {
            name: entry.name.clone(),
            versions,
            default_version: entry.default_version,
            fingerprint: entry.fingerprint.clone(),
            by_policy: entry.by_policy.clone(),
        };
        let mut snapshot = Snapshot::clone(&self.models.load());
        snapshot.insert(entry.name.clone(), Arc::new(updated));
        self.models.store(Arc::new(snapshot));
    }

    /// Loads `version` of `name` from its directory beside the versions serving (which stay
    /// as they are), and keeps it through later reloads whatever the model's version policy.
    /// A model new to this server (just fetched) loads whole. A model unloaded, or whose load
    /// failed, is not brought back: its error is returned.
    pub fn load_kept_version(&self, name: &str, version: u64) -> Result<Arc<LoadedModel>, InferenceError> {
        let keep = || self.kept.lock().entry(name.to_string()).or_default().insert(version);
        let forget = || {
            if let Some(kept) = self.kept.lock().get_mut(name) {
                kept.remove(&version);
            }
        };
        // One change at a time, from the check of the model's state to the load: an operator's
        // unload cannot fall between them.
        let _one_at_a_time = self.changing.lock();
        match self.entry(name) {
            Ok(_) => {}
            // Unloaded, or its load failed: not brought back here.
            Err(e) if self.problems.lock().contains_key(name) => return Err(e),
            Err(InferenceError::NotFound(_)) => {
                let added = keep();
                let loaded = self.load_model_changing(name).and_then(|()| self.get(name, &version.to_string()));
                if loaded.is_err() && added {
                    forget();
                }
                return loaded;
            }
            Err(e) => return Err(e),
        }
        let entry = self.entry(name)?;
        if let Some(loaded) = entry.versions.get(&version) {
            keep();
            return Ok(loaded.clone());
        }
        let found = find_versions(&self.root.join(name))?;
        let path = found.get(&version).ok_or_else(|| {
            InferenceError::NotFound(format!("model '{name}' has no version {version} in {}", self.root.display()))
        })?;
        let loaded = load_version(name, version, path, &self.options)?;
        warm_up(&loaded)?;
        let loaded = Arc::new(loaded);
        let mut versions = entry.versions.clone();
        versions.insert(version, loaded.clone());
        self.serve_versions(&entry, versions);
        keep();
        tracing::info!(model = name, version, "version loaded beside the others for its deployment");
        Ok(loaded)
    }

    /// Stops serving a model: new requests get NOT_FOUND at once. Returns the versions taken
    /// out; they finish the requests they hold (see [`wait_until_idle`]).
    pub fn unload_model(&self, name: &str) -> Result<Vec<Arc<LoadedModel>>, InferenceError> {
        let _one_at_a_time = self.changing.lock();
        self.unload_model_changing(name)
    }

    /// [`unload_model`](Self::unload_model) for a caller that holds `changing`.
    fn unload_model_changing(&self, name: &str) -> Result<Vec<Arc<LoadedModel>>, InferenceError> {
        let mut snapshot = Snapshot::clone(&self.models.load());
        let entry = snapshot
            .remove(name)
            .ok_or_else(|| InferenceError::NotFound(format!("model '{name}' is not loaded; nothing to unload")))?;
        self.models.store(Arc::new(snapshot));
        self.problems.lock().insert(name.to_string(), "unloaded".into());
        // The watch does not load it back until its files change.
        self.settled.lock().insert(name.to_string(), entry.fingerprint.clone());
        tracing::info!(model = name, "model unloaded");
        Ok(entry.versions.values().cloned().collect())
    }

    /// Compares the repository directory with what serves: loads models whose files changed or
    /// that are new, unloads models whose directory is gone. Returns the models it acted on.
    /// A failed load is logged and leaves the old versions serving, and a model unloaded through
    /// the API stays unloaded: either is acted on again only when its files change.
    pub fn sync_with_disk(&self) -> Vec<String> {
        let mut acted = Vec::new();
        // A listing that failed (too many open files, a network mount that blinked) says
        // nothing about what is gone: nothing is unloaded for it.
        let on_disk: Vec<String> = match self.model_dirs() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the model repository; trying again at the next look");
                return acted;
            }
        };
        for name in &on_disk {
            let Ok(found) = find_versions(&self.root.join(name)) else { continue };
            let fingerprint = fingerprint(&found);
            let serving = self.entry(name).ok().map(|e| e.fingerprint.clone());
            let settled = self.settled.lock().get(name) == Some(&fingerprint);
            if found.is_empty() || serving.as_ref() == Some(&fingerprint) || settled {
                continue;
            }
            if self.load_model(name).is_err() {
                self.settled.lock().insert(name.clone(), fingerprint);
            }
            acted.push(name.clone());
        }
        for entry in self.models().into_iter().filter(|entry| !on_disk.contains(&entry.name)) {
            let _one_at_a_time = self.changing.lock();
            // Listed before the loads above: a model whose directory came since (loaded through
            // the API, or fetched) is not gone.
            let gone = match std::fs::metadata(self.root.join(&entry.name)) {
                Ok(meta) => !meta.is_dir(),
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            if gone && self.unload_model_changing(&entry.name).is_ok() {
                // Gone from disk, not unloaded by a person: the same files coming back (a
                // directory swapped by renames) load again.
                self.settled.lock().remove(&entry.name);
                acted.push(entry.name.clone());
            }
        }
        acted
    }

    /// The model directory names under the root.
    fn model_dirs(&self) -> Result<Vec<String>, InferenceError> {
        let listing = std::fs::read_dir(&self.root).map_err(|e| {
            InferenceError::Config(format!("cannot read model repository {}: {e}", self.root.display()))
        })?;
        let unreadable = |e: std::io::Error| {
            InferenceError::Config(format!("cannot read model repository {}: {e}", self.root.display()))
        };
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(unreadable)?;
            // A directory, or a link to one; one removed meanwhile is gone. One that cannot be
            // looked at now is kept in the listing (not taken for gone): reading it as a model
            // fails and is skipped, and a model serving from it keeps serving.
            match std::fs::metadata(entry.path()) {
                Ok(meta) if !meta.is_dir() => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(_) | Err(_) => names.extend(entry.file_name().to_str().map(str::to_string)),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads and warms up the versions of `name` its policy selects; None when the directory
    /// holds no version.
    fn read_model(&self, name: &str) -> Result<Option<ModelEntry>, InferenceError> {
        let dir = self.root.join(name);
        let found = find_versions(&dir)?;
        // The files' state before loading: one changed while the versions load (a copy still
        // under way) differs from it, and the watch loads the model again.
        let files = fingerprint(&found);
        let Some((&newest, newest_dir)) = found.iter().next_back() else { return Ok(None) };
        let policy = if self.options.load_all_versions {
            VersionPolicy::All
        } else {
            ModelConfig::load(&newest_dir.join("model.toml"))?.version_policy
        };
        let all: Vec<u64> = found.keys().copied().collect();
        let mut selected = policy.select(&all);
        let pinned = self.options.pinned_versions.get(name).copied();
        if let Some(pinned) = pinned {
            if !found.contains_key(&pinned) {
                return Err(InferenceError::Config(format!(
                    "model '{name}': pinned version {pinned} not found in {} (have {all:?})",
                    dir.display()
                )));
            }
            if !selected.contains(&pinned) {
                selected.push(pinned);
            }
        }
        if selected.is_empty() {
            return Err(InferenceError::Config(format!(
                "model '{name}': the version policy {policy:?} selects none of the versions found ({all:?})"
            )));
        }
        let default_version = pinned.unwrap_or_else(|| selected.iter().copied().max().unwrap_or(newest));
        let by_policy: BTreeSet<u64> = selected.iter().copied().collect();
        let mut versions = BTreeMap::new();
        for version in selected {
            let loaded = load_version(name, version, &found[&version], &self.options)?;
            warm_up(&loaded)?;
            versions.insert(version, Arc::new(loaded));
        }
        // Versions a deployment names load too, as far as they can: one that fails keeps the
        // load serving it (if any) rather than failing the model or leaving its deployment
        // without it. They never change the default.
        let serving = self.models.load().get(name).cloned();
        let kept = self.kept.lock().get(name).cloned().unwrap_or_default();
        for version in kept {
            let Some(path) = found.get(&version).filter(|_| !versions.contains_key(&version)) else { continue };
            let loaded = load_version(name, version, path, &self.options).and_then(|loaded| {
                warm_up(&loaded)?;
                Ok(loaded)
            });
            match loaded {
                Ok(loaded) => {
                    versions.insert(version, Arc::new(loaded));
                }
                Err(e) => {
                    let before = serving.as_ref().and_then(|entry| entry.versions.get(&version).cloned());
                    tracing::error!(
                        model = name,
                        version,
                        error = %e,
                        keeps_serving = before.is_some(),
                        "a version a deployment names failed to load"
                    );
                    if let Some(before) = before {
                        versions.insert(version, before);
                    }
                }
            }
        }
        Ok(Some(ModelEntry { name: name.to_string(), versions, default_version, fingerprint: files, by_policy }))
    }
}

/// Waits until no request holds any of `models` (the repository no longer serves them), for at
/// most `timeout`; returns whether they went idle.
pub async fn wait_until_idle(models: Vec<Arc<LoadedModel>>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while models.iter().any(|m| Arc::strong_count(m) > 1) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
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

fn fingerprint(found: &BTreeMap<u64, PathBuf>) -> Fingerprint {
    let files = |dir: &PathBuf| {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                // Hidden and editors' files (`.model.toml.swp`, `model.toml~`, `#model.toml#`)
                // are not the model's.
                let name = entry.file_name();
                let text = name.to_string_lossy();
                if text.starts_with('.') || text.ends_with('~') || (text.starts_with('#') && text.ends_with('#')) {
                    return None;
                }
                let meta = std::fs::metadata(entry.path()).ok().filter(|m| m.is_file())?;
                Some((name, meta.len(), meta.modified().ok()))
            })
            .collect();
        files.sort();
        files
    };
    found.iter().map(|(v, dir)| (*v, files(dir))).collect()
}

fn load_version(
    name: &str,
    version: u64,
    dir: &Path,
    options: &RepositoryOptions,
) -> Result<LoadedModel, InferenceError> {
    let mut config = ModelConfig::load(&dir.join("model.toml"))?;
    read_vocabularies(&mut config, dir)?;
    if config.name != name || config.version != version {
        return Err(InferenceError::Config(format!(
            "{}: model.toml says {} version {}, but the directory is {name}/{version}",
            dir.display(),
            config.name,
            config.version
        )));
    }
    check_required_files(&config, dir)?;
    // The digest of the file the sessions are built from: read before, and the file the same
    // after (its inode, size, and modification and change times: a file replaced or written
    // over, even with its times kept, changes one), or the load is refused (a copy still under
    // way; the watch loads the model again once its files settle).
    let artifact = dir.join("model.onnx");
    let file_state = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&artifact)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
    };
    let before = file_state();
    let sha256 = sha256_file(&artifact)
        .map_err(|e| InferenceError::Config(format!("cannot read {}: {e}", artifact.display())))?;
    let session_options = crate::session::SessionOptions {
        intra_op_threads: options.intra_op_threads.unwrap_or(config.intra_op_threads),
        spinning: config.intra_op_spinning,
        provider: options.execution_provider,
    };
    let sessions = (0..config.instances)
        .map(|_| ModelSession::load_with(&dir.join("model.onnx"), &config, session_options))
        .collect::<Result<Vec<_>, _>>()?;
    // A session of its own for inline runs, unless it would be set up as the batching sessions
    // are (say under a repository-wide threads override): then inline runs borrow an idle one.
    let inline = config
        .inline_intra_op_threads
        .map(|threads| crate::session::SessionOptions {
            intra_op_threads: options.intra_op_threads.unwrap_or(threads),
            spinning: config.inline_intra_op_spinning.unwrap_or(config.intra_op_spinning),
            ..session_options
        })
        .filter(|inline| {
            (inline.intra_op_threads, inline.spinning) != (session_options.intra_op_threads, session_options.spinning)
        })
        .map(|options| ModelSession::load_with(&dir.join("model.onnx"), &config, options))
        .transpose()?;
    if file_state() != before {
        return Err(InferenceError::Config(format!("{} changed while it was loaded", artifact.display())));
    }
    let stats = Arc::new(ModelStats::default());
    let inline_session = inline.is_some();
    let batcher = Batcher::start_with_inline(name, config.batching(), sessions, inline, stats.clone())
        .with_max_request_items((config.max_batch_size > 0).then_some(config.max_batch_size));
    tracing::info!(model = name, version, instances = config.instances, inline_session, "model version loaded");
    Ok(LoadedModel { config, batcher, stats, path: dir.to_path_buf(), sha256 })
}

/// Whether `name` can be a model's directory in the repository: one plain path component, not
/// hidden (a request's `../elsewhere` or `/tmp/x` would load files from outside it).
pub fn is_model_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    !name.starts_with('.')
        && !name.ends_with('/')
        && matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
}

/// The hex sha256 of a file's bytes.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Refuses a version whose directory lacks a file its `model.toml` lists in `required_files`.
fn check_required_files(config: &ModelConfig, dir: &Path) -> Result<(), InferenceError> {
    for file in &config.required_files {
        let path = dir.join(file);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            found => {
                let why = match found {
                    Ok(_) => "not a regular file".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(InferenceError::Config(format!(
                    "{} version {} needs {} (required_files in its model.toml): {why}; put the file beside \
                     model.onnx",
                    config.name,
                    config.version,
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Reads the vocabulary file each text input names, from the version directory.
fn read_vocabularies(config: &mut ModelConfig, dir: &Path) -> Result<(), InferenceError> {
    for input in &mut config.inputs {
        let Some(text) = &mut input.text else { continue };
        let Some(file) = &text.vocabulary else { continue };
        let path = dir.join(file);
        let contents = std::fs::read_to_string(&path).map_err(|e| {
            InferenceError::Config(format!(
                "input '{}': cannot read its vocabulary {}: {e}",
                input.name,
                path.display()
            ))
        })?;
        text.words = Some(Arc::new(crate::text::read_vocabulary(&contents)));
    }
    Ok(())
}

/// Runs one synthetic request (zeros or `warmup_value`, batch 1, variable dimensions 1 or
/// `warmup_dims`) through the queue once per instance, then on every session directly (each
/// instance and the inline session), so the first real request does not pay for ONNX Runtime's
/// lazy initialisation and a model that cannot run is refused before it serves. Not counted in
/// the statistics; the batcher's memory of its last run keeps the queued ones (their time
/// decides whether the first request may run inline).
fn warm_up(model: &LoadedModel) -> Result<(), InferenceError> {
    let config = &model.config;
    let inputs: Vec<Tensor> = config
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<i64> = if config.max_batch_size > 0 { vec![1] } else { Vec::new() };
            match &spec.warmup_dims {
                Some(dims) => shape.extend(dims),
                None => shape.extend(spec.dims.iter().map(|&d| d.max(1))),
            }
            let elements = shape.iter().product::<i64>() as usize;
            let data = match spec.warmup_value {
                // Empty strings: a length prefix of 0 each.
                None if spec.datatype == DataType::Bytes => vec![0; elements * 4],
                None => vec![0; elements * spec.datatype.element_size().unwrap_or(1)],
                Some(v) => {
                    let one = match spec.datatype {
                        DataType::Fp64 => v.to_le_bytes().to_vec(),
                        DataType::Int32 => (v as i32).to_le_bytes().to_vec(),
                        DataType::Int64 => (v as i64).to_le_bytes().to_vec(),
                        _ => (v as f32).to_le_bytes().to_vec(),
                    };
                    one.repeat(elements)
                }
            };
            Tensor { datatype: spec.datatype, shape, data: data.into() }
        })
        .collect();
    let failed =
        |e: InferenceError| InferenceError::Config(format!("{}: warm-up request failed: {e}", model.path.display()));
    for _ in 0..config.instances {
        // The batcher answers on a channel that needs no runtime: block this thread on it.
        futures::executor::block_on(model.batcher.infer(inputs.clone())).map_err(failed)?;
    }
    model.batcher.warm_up_sessions(&inputs).map_err(failed)?;
    model.stats.reset();
    Ok(())
}
