//! The spool between the request path and the object store: captures are written to a local
//! directory (`<prediction id>.bin`, then `<prediction id>.json`, each through a rename), and a
//! forwarder puts them into the store and removes them, retrying with backoff while it is away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio::sync::{Notify, mpsc};

use crate::{CaptureConfig, CaptureError, CaptureMeta, CaptureStats, Pending};

/// The longest wait between attempts while the store is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The store `url` names (`file:///dir`, a path, or `s3://bucket/prefix`; for S3 the endpoint
/// of `AWS_ENDPOINT_URL` when set, the region of `AWS_REGION`, credentials from the environment),
/// and the prefix keys go under: how readers of captured inputs open the store.
pub fn open_url(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), CaptureError> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty());
    let config = CaptureConfig {
        store: url.to_string(),
        s3_allow_http: endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
        s3_endpoint: endpoint,
        s3_region: std::env::var("AWS_REGION").unwrap_or_else(|_| CaptureConfig::default().s3_region),
        ..CaptureConfig::default()
    };
    open_store(&config)
}

/// The store a configuration names, and the prefix keys go under.
pub fn open_store(config: &CaptureConfig) -> Result<(Arc<dyn ObjectStore>, ObjectPath), CaptureError> {
    let url = &config.store;
    let failed = |source| CaptureError::Store { url: url.clone(), source };
    if url.starts_with("s3://") {
        let parsed = url::Url::parse(url).map_err(|e| CaptureError::Config(format!("capture.store '{url}': {e}")))?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .with_region(&config.s3_region)
            .with_allow_http(config.s3_allow_http)
            // Fail an attempt within seconds: the spool keeps the capture and the forwarder
            // retries with its own backoff.
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..Default::default()
            });
        if let Some(endpoint) = &config.s3_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
        return Ok((Arc::new(builder.build().map_err(failed)?), prefix));
    }
    if url.contains("://") && !url.starts_with("file://") {
        return Err(CaptureError::Config(format!(
            "capture.store '{url}': use file:///dir, a path, or s3://bucket/prefix"
        )));
    }
    let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    std::fs::create_dir_all(&dir).map_err(|source| CaptureError::Spool { path: dir.display().to_string(), source })?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(failed)?;
    Ok((Arc::new(store), ObjectPath::default()))
}

/// Starts writing `pending` captures to `dir` and forwarding them to `store`; the task ends
/// when `pending` closes, after one last attempt to store what the spool holds.
pub(crate) async fn start(
    dir: PathBuf,
    (store, prefix): (Arc<dyn ObjectStore>, ObjectPath),
    mut pending: mpsc::Receiver<Pending>,
    stats: Arc<CaptureStats>,
) -> Result<tokio::task::JoinHandle<()>, CaptureError> {
    let spool_error = |source| CaptureError::Spool { path: dir.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(spool_error)?;
    let (set_aside, _) = set_aside_incomplete(&dir).map_err(spool_error)?;
    stats.broken.fetch_add(set_aside, Ordering::Relaxed);
    stats.spooled_bytes.store(spooled_bytes(&dir).map_err(spool_error)?, Ordering::Relaxed);
    let wake = Arc::new(Notify::new());
    let forwarder = Forwarder { dir: dir.clone(), store, prefix, stats: stats.clone() };
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let forwarding = {
        let wake = wake.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut swept = tokio::time::Instant::now();
            loop {
                let finished = *done.borrow_and_update();
                let stored = forwarder.forward_all().await;
                if finished {
                    return;
                }
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = tokio::time::Instant::now();
                    forwarder.sweep();
                }
                let wait = if stored { Duration::from_secs(1) } else { backoff };
                backoff = if stored { Duration::from_millis(200) } else { (backoff * 2).min(MAX_BACKOFF) };
                tokio::select! {
                    _ = wake.notified(), if stored => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = done.changed() => {}
                }
            }
        })
    };
    Ok(tokio::spawn(async move {
        while let Some(p) = pending.recv().await {
            // Its room was taken when it was accepted (`reserve`): the forwarder may store it,
            // and give the room back, as soon as its metadata file exists.
            let size = p.bytes.len() as u64;
            match write_entry(&dir, &p).await {
                Ok(()) => wake.notify_one(),
                Err(e) => {
                    // What the failed write left is no capture: removed, so that no later sweep
                    // gives its room back a second time.
                    remove_incomplete_entry(&dir, &p.meta.prediction_id);
                    release(&stats.spooled_bytes, size);
                    stats.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(prediction = %p.meta.prediction_id, error = %e, "cannot spool a capture");
                }
            }
        }
        let _ = done_tx.send(true);
        let _ = forwarding.await;
    }))
}

/// Removes the files a failed [`write_entry`] of `prediction_id` may have left.
fn remove_incomplete_entry(dir: &Path, prediction_id: &str) {
    let name = entry_name(prediction_id);
    for file in [format!("{name}.bin"), format!("{name}.partial"), format!("{name}.json")] {
        let _ = std::fs::remove_file(dir.join(file));
    }
}

/// A file name safe for any prediction id.
fn entry_name(prediction_id: &str) -> String {
    if !prediction_id.is_empty() && prediction_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        prediction_id.to_string()
    } else {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(prediction_id.as_bytes()))
    }
}

async fn write_entry(dir: &Path, p: &Pending) -> std::io::Result<()> {
    let name = entry_name(&p.meta.prediction_id);
    // Each file's bytes on disk before its name: the input before its metadata, so that a
    // power cut leaves an input without metadata (set aside), not metadata naming a cut input.
    let write = |file: PathBuf, bytes: Vec<u8>| async move {
        let partial = file.with_extension("partial");
        let mut out = tokio::fs::File::create(&partial).await?;
        tokio::io::AsyncWriteExt::write_all(&mut out, &bytes).await?;
        out.sync_data().await?;
        drop(out);
        tokio::fs::rename(&partial, &file).await
    };
    write(dir.join(format!("{name}.bin")), p.bytes.clone()).await?;
    // The metadata last: an entry without it is not complete and is not forwarded.
    write(dir.join(format!("{name}.json")), serde_json::to_vec(&p.meta).map_err(std::io::Error::other)?).await
}

/// Takes `size` bytes of the spool's `max` for a capture on its way to it; false when they do
/// not fit.
pub(crate) fn reserve(spooled: &AtomicU64, size: u64, max: u64) -> bool {
    spooled.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(size).filter(|&m| m <= max)).is_ok()
}

/// Gives back the room of a capture that left the spool or never reached it (never below zero).
pub(crate) fn release(spooled: &AtomicU64, size: u64) {
    let _ = spooled.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(size)));
}

/// The folder of the spool where entries that cannot be forwarded are moved, for a person.
const BROKEN: &str = "broken";

/// Moves `files` (those that exist) into the spool's `broken/` folder.
fn move_aside(dir: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    let broken = dir.join(BROKEN);
    std::fs::create_dir_all(&broken)?;
    for file in files.iter().filter(|f| f.exists()) {
        std::fs::rename(file, broken.join(file.file_name().unwrap_or_default()))?;
    }
    Ok(())
}

/// Files younger than this are left alone: a capture may be being written.
const INCOMPLETE_AFTER: Duration = Duration::from_secs(60);
/// How often the running spool looks for incomplete files again.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Inputs without their metadata (a crash between the two writes, or between the two removals
/// after storing) and files written in part, a minute old or more, are moved aside; no pass
/// would forward or remove them. At start, and every [`SWEEP_EVERY`] while running: a restart
/// within a minute of a crash leaves its leftovers too young at start, and an input without
/// metadata counts against the spool's room until it goes. Returns how many, and the bytes of
/// the inputs among them.
fn set_aside_incomplete(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut moved, mut input_bytes) = (0, 0);
    // An entry that cannot be looked at or moved (renamed meanwhile by the writer, say) is left
    // for the next sweep; the ones moved are counted whatever happens to the others.
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(metadata) = entry.metadata() else { continue };
        let age = metadata.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
        let orphan = path.extension().is_some_and(|e| e == "bin") && !path.with_extension("json").exists();
        if (orphan || path.extension().is_some_and(|e| e == "partial")) && age >= INCOMPLETE_AFTER {
            let moved_to = dir.join(BROKEN).join(entry.file_name());
            match std::fs::create_dir_all(dir.join(BROKEN)).and_then(|()| std::fs::rename(&path, moved_to)) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "an incomplete capture in the spool: set aside in {BROKEN}/");
                    moved += 1;
                    if orphan {
                        input_bytes += metadata.len();
                    }
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot set an incomplete capture aside"),
            }
        }
    }
    Ok((moved, input_bytes))
}

fn spooled_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "bin") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

struct Forwarder {
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    stats: Arc<CaptureStats>,
}

impl Forwarder {
    /// Stores every complete entry, oldest name first; false when the store failed (the rest
    /// wait for the next attempt).
    async fn forward_all(&self) -> bool {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the capture spool");
                return false;
            }
        };
        names.sort();
        for meta_file in names {
            match self.forward(&meta_file).await {
                Ok(()) => {}
                // One bad entry must not hold back every capture after it.
                Err(Failure::Entry(e)) => self.set_aside(&meta_file, &e),
                Err(Failure::Store(e)) => {
                    self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(entry = %meta_file.display(), error = %e, "capture store unavailable; kept in the spool, retrying");
                    return false;
                }
            }
        }
        true
    }

    /// Sets aside the incomplete files a crash left (see [`set_aside_incomplete`]) and gives
    /// back the room of the inputs among them.
    fn sweep(&self) {
        match set_aside_incomplete(&self.dir) {
            Ok((moved, input_bytes)) => {
                release(&self.stats.spooled_bytes, input_bytes);
                self.stats.broken.fetch_add(moved, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "cannot look for incomplete captures"),
        }
    }

    /// Moves an entry that cannot be forwarded into `broken/`, and stops counting its bytes.
    fn set_aside(&self, meta_file: &Path, error: &str) {
        let bin = meta_file.with_extension("bin");
        let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
        match move_aside(&self.dir, &[meta_file.to_path_buf(), bin]) {
            Ok(()) => {
                release(&self.stats.spooled_bytes, size);
                self.stats.broken.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(entry = %meta_file.display(), error, "a capture that cannot be forwarded: set aside in {BROKEN}/");
            }
            Err(e) => tracing::error!(entry = %meta_file.display(), error = %e, "cannot set a broken capture aside"),
        }
    }

    async fn forward(&self, meta_file: &Path) -> Result<(), Failure> {
        let store = |e: &dyn std::fmt::Display| Failure::Store(e.to_string());
        // A file gone, or metadata that does not parse, is the entry's own fault; any other
        // error reading it (too many open files, the disk) is retried like the store's.
        let read = |e: std::io::Error, what: &Path| match e.kind() {
            std::io::ErrorKind::NotFound => Failure::Entry(format!("{} is missing", what.display())),
            _ => store(&format_args!("cannot read {}: {e}", what.display())),
        };
        let meta_bytes = tokio::fs::read(meta_file).await.map_err(|e| read(e, meta_file))?;
        let meta: CaptureMeta = serde_json::from_slice(&meta_bytes).map_err(|e| Failure::Entry(e.to_string()))?;
        let bin = meta_file.with_extension("bin");
        let bytes = tokio::fs::read(&bin).await.map_err(|e| read(e, &bin))?;
        // The store is content-addressed: an input cut short (a power cut before it reached the
        // disk) stored under its key would replace the whole one other records name.
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if bytes.len() as u64 != meta.bytes || sha256 != meta.sha256 {
            return Err(Failure::Entry(format!(
                "{} holds {} bytes (sha256 {sha256}) where its metadata says {} (sha256 {}): cut short?",
                bin.display(),
                bytes.len(),
                meta.bytes,
                meta.sha256
            )));
        }
        let key = |rest: &str| {
            let mut path = self.prefix.clone();
            for part in rest.split('/') {
                path = path.child(part);
            }
            path
        };
        self.store.put(&key(&meta.key), bytes.into()).await.map_err(|e| store(&e))?;
        let meta_key = key(&format!("{}/predictions/{}.json", meta.model, entry_name(&meta.prediction_id)));
        self.store.put(&meta_key, meta_bytes.into()).await.map_err(|e| store(&e))?;
        tokio::fs::remove_file(meta_file).await.map_err(|e| store(&e))?;
        tokio::fs::remove_file(&bin).await.map_err(|e| store(&e))?;
        release(&self.stats.spooled_bytes, meta.bytes);
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Why an entry was not forwarded: the entry itself is unreadable (set aside), or the store
/// (or the spool's disk) failed (retried later).
enum Failure {
    Entry(String),
    Store(String),
}
