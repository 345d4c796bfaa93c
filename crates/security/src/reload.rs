//! Files read again when they change (certificates, keys, token lists): a task compares the
//! files' inodes, sizes, and modification and change times at an interval (a file written over
//! or replaced changes one, even one the same size with its times kept: `cp -p`, `rsync -t`) and
//! swaps in what they now say; a file that does not load (half written, wrong) keeps the
//! previous value and is retried.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

type Stamp = Vec<Option<(SystemTime, u64, u64, i64, i64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino(), m.ctime(), m.ctime_nsec()))
        })
        .collect()
}

/// A value read from files, swapped when they change.
pub struct Reloading<T> {
    current: Arc<ArcSwap<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self { current: self.current.clone() }
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the value now (an error is returned as is) and then every `interval` when one of
    /// `paths` changed, for as long as a clone of the returned value lives. An interval of zero
    /// never reloads. The files are watched from a small thread of its own,
    /// so that neither a runtime nor blocking file reads on its threads are needed.
    pub fn start<F>(what: &'static str, paths: Vec<PathBuf>, interval: Duration, load: F) -> anyhow::Result<Self>
    where
        F: Fn() -> anyhow::Result<T> + Send + 'static,
    {
        let mut seen = stamp(&paths);
        let current = Arc::new(ArcSwap::from_pointee(load()?));
        let this = Self { current };
        if interval.is_zero() {
            return Ok(this);
        }
        let target: Weak<ArcSwap<T>> = Arc::downgrade(&this.current);
        let spawned = std::thread::Builder::new().name(format!("reload {what}")).spawn(move || {
            let mut failed: Option<Stamp> = None;
            let mut last = seen.clone();
            loop {
                std::thread::sleep(interval);
                let Some(target) = target.upgrade() else { return };
                let now = stamp(&paths);
                // Read once the files stayed the same for an interval: a file caught between
                // being emptied and filled again (an editor, `echo >`) is valid and empty, and
                // would revoke every token (and end every lasting call) until the next read.
                let settled = now == last;
                last = now.clone();
                if now == seen || !settled {
                    continue;
                }
                match load() {
                    // Changed again while being read: read once it settles again.
                    Ok(_) if stamp(&paths) != now => continue,
                    Ok(value) => {
                        target.store(Arc::new(value));
                        tracing::info!(what, files = ?paths, "reloaded");
                        seen = now;
                        failed = None;
                    }
                    Err(e) => {
                        if failed.as_ref() != Some(&now) {
                            // An error, not a warning: what the edit removed (a revoked
                            // token, an expired certificate) is still in force.
                            tracing::error!(
                                what,
                                error = %format!("{e:#}"),
                                "changed but does not load; the previous one stays in force until it does (retrying)"
                            );
                        }
                        failed = Some(now);
                    }
                }
            }
        });
        spawned.map_err(|e| anyhow::anyhow!("cannot start watching the {what}: {e}"))?;
        Ok(this)
    }

    /// The value as last loaded.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }
}
