//! The model repository a server serves: ONNX Runtime started, every model loaded off the async
//! threads, and the optional watch that follows the repository directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use vigil_inference::repository::ModelRepository;

use crate::config::ModelOptions;
use crate::lifecycle::Lifecycle;

/// Starts ONNX Runtime (from `onnxruntime_lib` when given) and loads the models under `root`.
pub async fn load(onnxruntime_lib: Option<&Path>, root: &Path, options: &ModelOptions) -> Result<Arc<ModelRepository>> {
    vigil_inference::runtime::environment(onnxruntime_lib).map_err(|e| anyhow!("{e}"))?;
    let options = options.repository_options();
    let root: PathBuf = root.to_path_buf();
    let repository = tokio::task::spawn_blocking(move || ModelRepository::load(&root, &options))
        .await
        .context("model loading panicked")?
        .map_err(|e| anyhow!("{e}"))?;
    Ok(Arc::new(repository))
}

/// When `options.watch_interval_ms` is set, checks the repository directory at that interval in
/// `lifecycle`'s `stage`, loading the models whose files changed and unloading those removed
/// ([`ModelRepository::sync_with_disk`]), off the async threads.
pub fn watch(repository: Arc<ModelRepository>, options: &ModelOptions, lifecycle: &mut Lifecycle, stage: &'static str) {
    if options.watch_interval_ms == 0 {
        return;
    }
    let interval = Duration::from_millis(options.watch_interval_ms);
    lifecycle.spawn(stage, "model repository watch", move |stop| async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let stopped = stop.stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = &mut stopped => return Ok(()),
            }
            let repository = repository.clone();
            match tokio::task::spawn_blocking(move || repository.sync_with_disk()).await {
                Ok(changed) if !changed.is_empty() => tracing::info!(?changed, "model repository changed"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "model repository watch failed"),
            }
        }
    });
}
