//! Labelled datasets from the prediction log: a model's logged inputs (the features each record
//! carries) joined with their latest ground-truth labels, verified first (schema, missing values,
//! duplicates, class balance, label consistency among several labellers). A dataset that fails
//! is refused with the reasons and nothing is written; one that passes is `rows.csv` and
//! `manifest.json` in a directory named by the rows' content hash, so the same rows are the
//! same dataset. A row whose raw input was captured names its object key in the capture store
//! (`capture`), so a recipe can train on the inputs themselves. An export's rows are read once
//! into a snapshot file and streamed from it; what the checks need is tallied
//! row by row ([`Tally`]), so an export's memory does not grow with its rows.

mod snapshot;
mod verify;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use vigil_store::{PredictionStore, ReviewStore};

use snapshot::Snapshot;
pub use verify::{Check, Item, Limits, Tally, verify};

/// What to export.
#[derive(Debug, Clone)]
pub struct Spec {
    pub model: String,
    /// One version only; None: every version.
    pub version: Option<String>,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Only items with a ground-truth label.
    pub only_labelled: bool,
    pub limits: Limits,
    /// Where the dataset's directory is written.
    pub out: PathBuf,
    /// The capture store: the captured inputs of the rows are copied into the dataset
    /// (`inputs/<sha256>`, each checked against its hash). None: the rows only.
    pub captures: Option<Captures>,
    /// Told how far the export is, for a progress display.
    pub progress: Option<OnProgress>,
}

/// How far an export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Rows read from the log so far (told after each page).
    Rows(usize),
    /// Captured inputs fetched from the capture store so far, of those the rows name.
    Inputs { fetched: usize, of: usize },
}

/// A function told of an export's [`Progress`].
#[derive(Clone)]
pub struct OnProgress(pub Arc<dyn Fn(Progress) + Send + Sync>);

impl std::fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnProgress")
    }
}

impl Spec {
    fn tell(&self, progress: Progress) {
        if let Some(OnProgress(tell)) = &self.progress {
            tell(progress);
        }
    }
}

/// A capture store to read captured inputs from.
#[derive(Clone)]
pub struct Captures {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Captures({}, {})", self.store, self.prefix)
    }
}

impl Captures {
    /// The store `url` names (see `vigil_capture::open_url`).
    pub fn open(url: &str) -> Result<Self> {
        let (store, prefix) = vigil_capture::open_url(url)?;
        Ok(Self { store, prefix })
    }
}

/// A dataset written.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `<out>/<model>-<id>`.
    pub dir: PathBuf,
    /// The first 16 hex digits of the rows' sha256.
    pub id: String,
    pub rows: usize,
    pub labelled: usize,
    pub checks: Vec<Check>,
}

/// What an export did.
#[derive(Debug, Clone)]
pub enum Export {
    Written(Dataset),
    /// The checks failed (their names in `failed`): nothing written.
    Refused {
        checks: Vec<Check>,
        failed: Vec<String>,
    },
    /// The model logged nothing usable in the range.
    Empty,
}

/// Reads, verifies and (when every check passes) writes `spec`'s dataset. The rows are read
/// once into a snapshot file beside the datasets and streamed from there: an export holds what
/// the checks need of each row (a digest of its features), not the rows.
pub async fn export<S: PredictionStore + ReviewStore>(store: &S, spec: &Spec) -> Result<Export> {
    // Dropped after the snapshot: a folder made for it that holds nothing is removed again.
    let _made = MadeForNothing::new(&spec.out);
    let out = spec.out.clone();
    off_the_async_threads(move || {
        remove_left_behind(&out);
        Ok(())
    })
    .await?;
    let decisions =
        store.reviewer_decisions(&spec.model, spec.since, Utc::now()).await.context("reading review decisions")?;
    let mut reviewed: HashMap<uuid::Uuid, Vec<String>> = HashMap::new();
    for d in decisions {
        reviewed.entry(d.prediction_id).or_default().push(d.decision);
    }
    let snapshot = Arc::new(Snapshot::take(store, spec, reviewed).await?);
    if snapshot.rows == 0 {
        return Ok(Export::Empty);
    }
    let checks = {
        let (snapshot, limits) = (snapshot.clone(), spec.limits.clone());
        off_the_async_threads(move || Ok(snapshot.tally.checks(&snapshot.panels, &limits))).await?
    };
    let failed: Vec<String> = checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect();
    if !failed.is_empty() {
        return Ok(Export::Refused { checks, failed });
    }
    let (rows, labelled) = (snapshot.rows, snapshot.tally.classes().values().sum());
    match write(spec, snapshot, checks).await? {
        Ok((dir, id, checks)) => Ok(Export::Written(Dataset { dir, id, rows, labelled, checks })),
        Err(checks) => {
            let failed = checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect();
            Ok(Export::Refused { checks, failed })
        }
    }
}

/// Writes `rows.csv`, `manifest.json` and (with a capture store) the captured inputs into
/// `out/<model>-<first 16 hex of the rows' sha256>`, through a temporary directory synced and
/// renamed into place, so a reader never sees half of one, nor does one after a power cut.
/// Captured inputs missing from the store or not matching their hash are lost: their rows keep
/// their features without an input, up to `max_lost_capture_share` of the captured inputs;
/// beyond it the dataset is refused (the checks with theirs, nothing written). The same rows
/// exported before with every input are that dataset, nothing fetched again.
async fn write(
    spec: &Spec,
    snapshot: Arc<Snapshot>,
    mut checks: Vec<Check>,
) -> Result<Result<(PathBuf, String, Vec<Check>), Vec<Check>>> {
    let columns = Arc::new(snapshot.tally.columns());
    let stop = StopOnDrop::default();
    let stopped = stop.0.clone();
    // The rows as they read with every captured input found: the id of an export of them that
    // lost none.
    let (mut sha256, mut bytes) = rows_and_hash(&snapshot, &columns, Arc::default()).await?;
    let mut staged = None;
    let mut lost = Arc::default();
    if let Some(captures) = &spec.captures {
        // The same rows exported before with every input: nothing to fetch again.
        let dir = dataset_dir(spec, &sha256);
        let found = dir.clone();
        if let Some(check) = off_the_async_threads(move || Ok(exported_with_every_input(&found))).await? {
            checks.push(check);
            return Ok(Ok((dir, sha256[..16].to_string(), checks)));
        }
        // Which inputs are lost decides the rows' capture column, hence the id.
        let partial = Arc::new(partial_dir(&spec.out, &format!(".{}.partial-", spec.model))?);
        let keys = snapshot.capture_keys();
        let copied = copy_inputs(spec, captures, &keys, &partial, &stopped).await?;
        let passed = copied.check.passed;
        checks.push(copied.check);
        if !passed {
            return Ok(Err(checks));
        }
        if !copied.lost.is_empty() {
            lost = Arc::new(copied.lost);
            (sha256, bytes) = rows_and_hash(&snapshot, &columns, lost.clone()).await?;
        }
        staged = Some((partial, copied.entry, checks.last().cloned()));
    }
    let id = sha256[..16].to_string();
    let dir = dataset_dir(spec, &sha256);
    if dir.join("manifest.json").is_file() {
        let found = dir.clone();
        match off_the_async_threads(move || Ok(sound(&found))).await? {
            // The same rows were exported before; asked for now, their inputs are added.
            Ok(written) => {
                if let Some((partial, inputs, Some(check))) = staged
                    && written["inputs"].is_null()
                {
                    let (target, stopped) = (dir.clone(), stopped.clone());
                    off_the_async_threads(move || add_inputs(partial, inputs, &check, &target, &stopped)).await?;
                }
                return Ok(Ok((dir, id, checks)));
            }
            // Torn (written before its files were synced, then a crash): written again, with
            // its inputs where they are whole and no capture store was named to fetch them.
            Err(why) => {
                tracing::warn!(dataset = %dir.display(), %why, "a torn dataset of the same rows: writing it again");
                let (out, torn, model, keys) =
                    (spec.out.clone(), dir.clone(), spec.model.clone(), snapshot.capture_keys());
                let (keep_inputs, stopped) = (staged.is_none(), stopped.clone());
                let salvaged = off_the_async_threads(move || {
                    let salvaged = if keep_inputs { whole_inputs(&torn, &keys, &out, &model, &stopped)? } else { None };
                    discard(&out, &torn)?;
                    Ok(salvaged)
                })
                .await?;
                if let Some((partial, inputs, check)) = salvaged {
                    checks.push(check.clone());
                    staged = Some((partial, inputs, Some(check)));
                }
            }
        }
    }
    let (partial, inputs) = match staged {
        Some((partial, inputs, _)) => (partial, inputs),
        None => (Arc::new(partial_dir(&spec.out, &format!(".{}.partial-", spec.model))?), serde_json::Value::Null),
    };
    let classes = snapshot.tally.classes();
    let captured: usize = snapshot.captures.iter().filter(|(key, _)| !lost.contains(*key)).map(|(_, rows)| rows).sum();
    let manifest = serde_json::json!({
        "dataset_id": id, "model": spec.model, "versions": snapshot.versions, "since": spec.since.to_rfc3339(),
        "until": spec.until.to_rfc3339(), "created_at": Utc::now().to_rfc3339(), "rows": snapshot.rows,
        "labelled": classes.values().sum::<usize>(), "classes": classes, "columns": columns.as_slice(),
        "captured": captured,
        "files": { "rows.csv": { "sha256": sha256, "bytes": bytes } }, "checks": checks,
        "inputs": inputs,
        "source": "vigil dataset export: logged inputs joined with their latest labels",
    });
    let manifest = serde_json::to_vec_pretty(&manifest)?;
    let (out, target) = (spec.out.clone(), dir.clone());
    let write_rows = move |path: &Path| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let (written, _) = snapshot.write_csv(&columns, &lost, &mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        anyhow::ensure!(written == sha256, "rows.csv was written with other bytes than were hashed");
        Ok(())
    };
    off_the_async_threads(move || put_in_place(partial, write_rows, &manifest, &target, &out, &stopped)).await?;
    drop(stop);
    Ok(Ok((dir, id, checks)))
}

/// Removes, when dropped, the folder it was made for if that did not exist before and is empty
/// (an export refused, or of nothing, leaves no `datasets/` behind).
struct MadeForNothing(Option<PathBuf>);

impl MadeForNothing {
    fn new(dir: &Path) -> Self {
        Self((!dir.exists()).then(|| dir.to_path_buf()))
    }
}

impl Drop for MadeForNothing {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A partial directory shared with the blocking writes into it: removed once the last of them
/// is done, never while one still writes (an export stopped part-way).
type Partial = Arc<PartialDir>;

/// Tells an export's blocking work, which runs on after its future is dropped (a retraining job
/// stopped), to put nothing in place.
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An error once the export was stopped.
fn go_on(stopped: &AtomicBool) -> Result<()> {
    if stopped.load(Ordering::SeqCst) {
        anyhow::bail!("the dataset's export was stopped");
    }
    Ok(())
}

/// Writes `rows.csv` (by `write_rows`, synced) and `manifest.json` into `partial`, and moves
/// it to `target` (unless the export was stopped meanwhile: then it is removed).
fn put_in_place(
    partial: Partial,
    write_rows: impl FnOnce(&Path) -> Result<()>,
    manifest: &[u8],
    target: &Path,
    out: &Path,
    stopped: &AtomicBool,
) -> Result<()> {
    go_on(stopped)?;
    write_rows(&partial.path().join("rows.csv"))?;
    write_synced(&partial.path().join("manifest.json"), manifest)?;
    sync_dir(partial.path())?;
    go_on(stopped)?;
    let partial = Arc::into_inner(partial).context("the dataset's files are still being written")?;
    if let Err(e) = move_into_place(partial, target) {
        // Another export wrote the same rows first: the same dataset.
        if !target.join("manifest.json").is_file() {
            return Err(e).with_context(|| format!("moving the dataset to {}", target.display()));
        }
    }
    Ok(sync_dir(out)?)
}

/// How long a partial directory may go unlocked after it is made (its lock is taken right
/// after): the sweep leaves younger ones alone.
const LOCKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes what exports that crashed left in `out`: partial directories (`.<model>.partial-*`)
/// and torn datasets set aside (`.<dataset>.torn-*`) that no export holds locked (a live one
/// locks its own, see [`PartialDir`]) and that are older than [`LOCKED_WITHIN`].
fn remove_left_behind(out: &Path) {
    let Ok(listing) = std::fs::read_dir(out) else { return };
    for entry in listing.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') || !(name.contains(".partial-") || name.contains(".torn-")) {
            continue;
        }
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(dir) = std::fs::File::open(&path) else { continue };
        // Held by an export at work (or another sweep): not left behind.
        if dir.try_lock().is_err() {
            continue;
        }
        let age = dir.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age >= LOCKED_WITHIN) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(dir = %path.display(), "removed what an interrupted export left"),
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove what an interrupted export left")
                }
            }
        }
    }
}

/// The directory of `spec`'s dataset whose rows hash to `sha256`.
fn dataset_dir(spec: &Spec, sha256: &str) -> PathBuf {
    spec.out.join(format!("{}-{}", spec.model, &sha256[..16]))
}

/// The hex sha256 and length of `rows.csv` without the inputs `lost`.
async fn rows_and_hash(
    snapshot: &Arc<Snapshot>,
    columns: &Arc<Vec<String>>,
    lost: Arc<BTreeSet<String>>,
) -> Result<(String, u64)> {
    let (snapshot, columns) = (snapshot.clone(), columns.clone());
    off_the_async_threads(move || snapshot.write_csv(&columns, &lost, std::io::sink())).await
}

/// The `captures` check of the dataset in `dir` when it is whole and holds every captured input
/// of its rows (none lost): an export of the same rows has nothing to fetch.
fn exported_with_every_input(dir: &Path) -> Option<Check> {
    if !dir.join("manifest.json").is_file() {
        return None;
    }
    let written = sound(dir).ok()?;
    let inputs = written["inputs"].as_object()?;
    if inputs.get("lost").and_then(serde_json::Value::as_u64).unwrap_or(0) != 0 {
        return None;
    }
    let detail = captures_detail(&written);
    Some(Check {
        name: "captures".into(),
        passed: true,
        detail: format!("{detail} (exported before with every input: nothing fetched)"),
    })
}

/// What a written manifest's `captures` check said.
fn captures_detail(written: &serde_json::Value) -> String {
    let checks = written["checks"].as_array().into_iter().flatten();
    checks
        .filter(|c| c["name"] == "captures")
        .find_map(|c| c["detail"].as_str())
        .map_or_else(|| "captured inputs copied".to_string(), str::to_string)
}

/// The captured inputs of `rows` from the torn dataset in `torn`, staged in a new partial
/// directory with its manifest's `inputs` entry and `captures` check, when every one is there
/// and whole (its content matching the hash it is named by); None otherwise.
fn whole_inputs(
    torn: &Path,
    keys: &[String],
    out: &Path,
    model: &str,
    stopped: &AtomicBool,
) -> Result<Option<(Partial, serde_json::Value, Check)>> {
    let Ok(written) = manifest(torn) else { return Ok(None) };
    if !written["inputs"].is_object() {
        return Ok(None);
    }
    let partial = partial_dir(out, &format!(".{model}.partial-"))?;
    let inputs = partial.path().join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let mut bytes_total = 0u64;
    for key in keys {
        go_on(stopped)?;
        let sha = key.rsplit('/').next().unwrap_or_default();
        let Ok(bytes) = std::fs::read(torn.join("inputs").join(sha)) else { return Ok(None) };
        if hex::encode(Sha256::digest(&bytes)) != sha {
            return Ok(None);
        }
        write_synced(&inputs.join(sha), &bytes)?;
        bytes_total += bytes.len() as u64;
    }
    sync_dir(&inputs)?;
    let entry = serde_json::json!({ "dir": "inputs", "files": keys.len(), "bytes": bytes_total, "lost": 0 });
    let detail =
        format!("{} (kept from a torn copy of this dataset, each matching its sha256)", captures_detail(&written));
    Ok(Some((Arc::new(partial), entry, Check { name: "captures".into(), passed: true, detail })))
}

/// Runs `work` on a blocking thread: the checks, the CSV, its hash and the synced writes of a
/// month of rows take seconds, which must not hold up the async threads of the monitor that
/// runs retraining jobs (its lease, alarms and HTTP API).
async fn off_the_async_threads<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.context("the dataset's export stopped")?
}

/// The manifest of the dataset in `dir` if its files are whole: `rows.csv` matching the
/// manifest's hash, and as many input files, of as many bytes, as it lists. Otherwise why not.
fn sound(dir: &Path) -> std::result::Result<serde_json::Value, String> {
    let written = manifest(dir).map_err(|e| format!("{e:#}"))?;
    let mut rows = std::fs::File::open(dir.join("rows.csv")).map_err(|e| format!("rows.csv: {e}"))?;
    let mut sha256 = Sha256::new();
    std::io::copy(&mut rows, &mut sha256).map_err(|e| format!("rows.csv: {e}"))?;
    if written["files"]["rows.csv"]["sha256"].as_str() != Some(hex::encode(sha256.finalize()).as_str()) {
        return Err("rows.csv does not match the manifest's sha256".into());
    }
    if let Some(listed) = written["inputs"].as_object() {
        let (mut files, mut bytes) = (0u64, 0u64);
        // An empty inputs/ that a copy left out is still whole.
        let entries = match std::fs::read_dir(dir.join("inputs")) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && listed.get("files").and_then(|v| v.as_u64()) == Some(0) =>
            {
                None
            }
            read => Some(read.map_err(|e| format!("inputs: {e}"))?),
        };
        for entry in entries.into_iter().flatten() {
            let metadata = entry.and_then(|e| e.metadata()).map_err(|e| format!("inputs: {e}"))?;
            (files, bytes) = (files + 1, bytes + metadata.len());
        }
        if listed.get("files").and_then(|v| v.as_u64()) != Some(files)
            || listed.get("bytes").and_then(|v| v.as_u64()) != Some(bytes)
        {
            return Err(format!("inputs holds {files} files of {bytes} bytes, not what the manifest lists"));
        }
    }
    Ok(written)
}

/// Removes a torn dataset: renamed aside first, so no reader finds it half removed.
fn discard(out: &Path, dir: &Path) -> Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dataset");
    let aside = partial_dir(out, &format!(".{name}.torn-"))?;
    // Another export of the same rows may have set it aside, or written it again, meanwhile.
    if sound(dir).is_ok() {
        return Ok(());
    }
    match std::fs::rename(dir, aside.path()) {
        // Dropping `aside` removes it and what it now holds.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("setting aside the torn dataset {}", dir.display())),
    }
}

/// The most keys a `captures` check names of each kind.
const MAX_KEYS_LISTED: usize = 10;

/// Adds the captured inputs staged in `partial` to a dataset of the same rows written without
/// them: they are moved in, then its manifest is replaced, so a reader sees it either without
/// inputs or with every one of them.
fn add_inputs(
    partial: Partial,
    inputs: serde_json::Value,
    check: &Check,
    dir: &Path,
    stopped: &AtomicBool,
) -> Result<()> {
    go_on(stopped)?;
    let target = dir.join("inputs");
    if let Err(e) = std::fs::rename(partial.path().join("inputs"), &target) {
        // Another export added them first (its manifest is written next, or was not, if it
        // stopped in between: then this one writes it).
        if !target.is_dir() {
            return Err(e).with_context(|| format!("moving the captured inputs to {}", target.display()));
        }
    }
    sync_dir(dir)?;
    let mut written = manifest(dir)?;
    if !written["inputs"].is_null() {
        return Ok(());
    }
    written["inputs"] = inputs;
    if let Some(list) = written["checks"].as_array_mut() {
        list.push(serde_json::to_value(check)?);
    }
    let mut temporary = tempfile::Builder::new()
        .prefix(".manifest.json.partial-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut temporary, &serde_json::to_vec_pretty(&written)?)?;
    temporary.as_file().sync_all()?;
    temporary.persist(dir.join("manifest.json")).context("replacing the dataset's manifest")?;
    sync_dir(dir)?;
    Ok(())
}
/// A directory for what is written before it is moved into place: removed when dropped, so
/// an export that fails, or whose future is dropped part-way (a retraining job stopped), leaves
/// nothing half-written behind; locked (`flock`) while it lives, so another export's sweep of
/// what crashes left ([`remove_left_behind`]) passes it by however long it takes.
pub(crate) struct PartialDir {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl PartialDir {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A [`PartialDir`] in `parent`, named `prefix` and a random suffix.
pub(crate) fn partial_dir(parent: &Path, prefix: &str) -> Result<PartialDir> {
    let make = || {
        std::fs::create_dir_all(parent)?;
        tempfile::Builder::new().prefix(prefix).tempdir_in(parent)
    };
    // Once more if an export that made `parent` for nothing removed it in between.
    let dir = make().or_else(|_| make()).with_context(|| format!("writing in {}", parent.display()))?;
    let lock = std::fs::File::open(dir.path())?;
    lock.lock().with_context(|| format!("locking {}", dir.path().display()))?;
    Ok(PartialDir { dir, _lock: lock })
}

/// Moves a [`partial_dir`] to `to`; it is removed if the move fails.
fn move_into_place(partial: PartialDir, to: &Path) -> std::io::Result<()> {
    std::fs::rename(partial.path(), to)?;
    // Moved: nothing left to remove.
    let _ = partial.dir.keep();
    Ok(())
}

/// Writes `bytes` to a new file at `path` and waits until they are on disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

/// Waits until the names in `dir` (files created, renamed in) are on disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Captured inputs fetched from the store at once.
const FETCHING_AT_ONCE: usize = 16;

/// The captured input under `key`; None when the store does not hold it.
async fn fetch(captures: &Captures, key: &str) -> Result<Option<bytes::Bytes>> {
    let mut path = captures.prefix.clone();
    for part in key.split('/') {
        path = path.child(part);
    }
    match captures.store.get(&path).await {
        Ok(found) => Ok(Some(found.bytes().await.with_context(|| format!("reading captured input {key}"))?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading captured input {key}")),
    }
}

/// What [`copy_inputs`] did.
struct Copied {
    /// The `captures` check.
    check: Check,
    /// The manifest's `inputs` entry.
    entry: serde_json::Value,
    /// The keys whose input is missing from the store or does not match its hash.
    lost: BTreeSet<String>,
}

/// Copies each distinct captured input of `rows` from the store into `dir/<sha256>` (synced),
/// checking its content against the hash its key names; the check passes while at most
/// `max_lost_share` of them are missing or altered.
async fn copy_inputs(
    spec: &Spec,
    captures: &Captures,
    keys: &[String],
    partial: &Partial,
    stopped: &Arc<AtomicBool>,
) -> Result<Copied> {
    let max_lost_share = spec.limits.max_lost_capture_share;
    let dir = partial.path().join("inputs");
    std::fs::create_dir_all(&dir)?;
    let (mut copied, mut bytes_total, mut missing, mut corrupt) = (0usize, 0u64, Vec::new(), Vec::new());
    // Fetched a few at a time (an object store's round trips add up over thousands of inputs),
    // handled in key order.
    // Boxed: a future borrowing the store inside a stream adapter is not Send for every
    // lifetime the compiler asks for (the monitor's runner spawns the export).
    type Fetched<'a> = (&'a str, Result<Option<bytes::Bytes>>);
    let fetches: Vec<futures::future::BoxFuture<'_, Fetched<'_>>> =
        keys.iter().map(|key| Box::pin(async move { (key.as_str(), fetch(captures, key).await) }) as _).collect();
    let mut fetched = futures::stream::iter(fetches).buffered(FETCHING_AT_ONCE);
    let mut done = 0;
    while let Some((key, bytes)) = fetched.next().await {
        done += 1;
        spec.tell(Progress::Inputs { fetched: done, of: keys.len() });
        let sha = key.rsplit('/').next().unwrap_or_default();
        let Some(bytes) = bytes? else {
            missing.push(key.to_string());
            continue;
        };
        if hex::encode(Sha256::digest(&bytes)) != sha {
            corrupt.push(key.to_string());
            continue;
        }
        let (path, size) = (dir.join(sha), bytes.len() as u64);
        let (partial, stopped) = (partial.clone(), stopped.clone());
        off_the_async_threads(move || {
            go_on(&stopped)?;
            write_synced(&path, &bytes)?;
            drop(partial);
            Ok(())
        })
        .await?;
        (copied, bytes_total) = (copied + 1, bytes_total + size);
    }
    sync_dir(&dir)?;
    let lost_count = missing.len() + corrupt.len();
    let share = lost_count as f64 / keys.len().max(1) as f64;
    let passed = share <= max_lost_share;
    let mut detail = format!("{copied} of {} captured inputs copied and matching their sha256", keys.len());
    if lost_count > 0 {
        detail += &format!(
            "; {lost_count} lost ({share:.3}, limit {max_lost_share}){}",
            if passed { ", their rows kept without their input" } else { "" }
        );
    }
    // The first few keys of each kind, and how many more: a window past the capture store's
    // retention misses thousands.
    let listed = |keys: &[String]| {
        let shown = keys.iter().take(MAX_KEYS_LISTED).cloned().collect::<Vec<_>>().join(", ");
        match keys.len().saturating_sub(MAX_KEYS_LISTED) {
            0 => shown,
            more => format!("{shown} and {more} more"),
        }
    };
    if !missing.is_empty() {
        detail += &format!(
            "; missing from the store: {} (expired? keep captures at least as long as the dataset's window)",
            listed(&missing)
        );
    }
    if !corrupt.is_empty() {
        detail += &format!("; content not matching its hash: {}", listed(&corrupt));
    }
    Ok(Copied {
        check: Check { name: "captures".into(), passed, detail },
        entry: serde_json::json!({ "dir": "inputs", "files": copied, "bytes": bytes_total, "lost": lost_count }),
        lost: missing.into_iter().chain(corrupt).collect(),
    })
}

/// The manifest of a written dataset.
pub fn manifest(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("manifest.json");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {} (is it a dataset?)", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

/// The manifest of the dataset in `dir`, refused unless it was exported for `model`: a model
/// is never trained on another model's rows.
pub fn manifest_of(dir: &Path, model: &str) -> Result<serde_json::Value> {
    let manifest = manifest(dir)?;
    match manifest["model"].as_str() {
        Some(of) if of == model => Ok(manifest),
        of => anyhow::bail!(
            "{} holds a dataset of model '{}', not of '{model}': export one for '{model}' (vigil dataset export --model {model})",
            dir.display(),
            of.unwrap_or("(none named)")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: std::time::Duration) {
        let then = std::time::SystemTime::now() - by;
        std::fs::File::open(path).unwrap().set_modified(then).unwrap();
    }

    #[test]
    fn a_stopped_export_puts_nothing_in_place_and_leaves_nothing_behind() {
        let out = tempfile::tempdir().unwrap();
        for stop in [true, false] {
            let partial = Arc::new(partial_dir(out.path(), ".m.partial-").unwrap());
            let target = out.path().join(format!("m-{stop}"));
            let rows = |path: &Path| Ok(write_synced(path, b"a,b\n")?);
            let placed = put_in_place(partial, rows, b"{}", &target, out.path(), &AtomicBool::new(stop));
            assert_eq!(placed.is_ok(), !stop, "{placed:?}");
            assert_eq!(target.join("rows.csv").is_file(), !stop);
        }
        let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["m-false"], "the stopped one's partial directory removed");
    }

    #[test]
    fn only_partial_and_set_aside_directories_no_export_holds_are_removed() {
        let out = tempfile::tempdir().unwrap();
        let minutes = |m: u64| std::time::Duration::from_secs(m * 60);
        let dir = |name: &str, old: std::time::Duration| {
            let path = out.path().join(name);
            std::fs::create_dir_all(path.join("inputs")).unwrap();
            age(&path, old);
        };
        // Left by crashes.
        dir(".m.partial-crashed", minutes(2));
        dir(".m-0123456789abcdef.torn-old", minutes(61));
        // Made a moment ago, its lock not yet taken.
        dir(".m.partial-new", std::time::Duration::ZERO);
        // Not an export's leftovers.
        dir("m-0123456789abcdef", minutes(600));
        dir(".keep", minutes(600));
        // Exports at work, for hours: their directories locked.
        let working = partial_dir(out.path(), ".m.partial-").unwrap();
        let rows = partial_dir(out.path(), ".m.partial-rows-").unwrap();
        age(working.path(), minutes(240));
        age(rows.path(), minutes(240));
        remove_left_behind(out.path());
        let mut names: Vec<_> =
            std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let mut expected = vec![".keep".to_string(), ".m.partial-new".into(), "m-0123456789abcdef".into()];
        expected.extend([working.path(), rows.path()].map(|p| p.file_name().unwrap().to_str().unwrap().to_string()));
        expected.sort();
        assert_eq!(names, expected);
        // Their exports gone (dropped without their directories removed, as in a crash).
        let kept = [working, rows].map(|p| {
            let PartialDir { dir, _lock } = p;
            dir.keep()
        });
        remove_left_behind(out.path());
        assert!(kept.iter().all(|p| !p.exists()), "once no export holds them they go");
    }
}
