//! Following deployments from the store: every poll interval the server reads the deployments,
//! checks that each version it would route to is the registered artifact (sha256 of its
//! `model.onnx` against the registry's digest), and swaps them into its [`DeploymentRouter`].
//! A deployment whose artifacts do not match, or whose versions are not loaded here, is refused
//! and the model keeps what it served; while the store is away the server keeps its last known
//! state, and until it first reaches it every model answers from its default version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use vigil_inference::repository::ModelRepository;
use vigil_serving::decision::Automation;
use vigil_serving::{Deployment, DeploymentRouter, Mode};
use vigil_store::{Backend, DeploymentRow, DeploymentStore, RegistryStore};

use crate::lifecycle::Lifecycle;

/// Where a server follows its deployments from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsConfig {
    /// The registry's database (postgres://... or sqlite://...); empty: no deployments, every
    /// model answers from its default version.
    pub database_url: String,
    /// How often to read the deployments, in milliseconds.
    pub poll_interval_ms: u64,
    /// Most shadow copies running at once (shadow mode); a copy beyond it is skipped and
    /// counted in `vigil_shadow_copies_total{outcome="skipped"}`, never queued.
    pub shadow_concurrency: usize,
}

impl Default for DeploymentsConfig {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            poll_interval_ms: 2_000,
            shadow_concurrency: vigil_serving::infer::DEFAULT_SHADOW_LANE,
        }
    }
}

impl DeploymentsConfig {
    /// Checks values serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.database_url.is_empty() && self.poll_interval_ms == 0 {
            return Err("deployments.poll_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// When `config` names a database, follows its deployments into `router` in `lifecycle`'s `stage`.
pub fn follow(
    config: &DeploymentsConfig,
    router: Arc<DeploymentRouter>,
    repository: Arc<ModelRepository>,
    lifecycle: &mut Lifecycle,
    stage: &'static str,
) {
    if config.database_url.is_empty() {
        return;
    }
    let (url, interval) = (config.database_url.clone(), Duration::from_millis(config.poll_interval_ms));
    lifecycle.spawn(stage, "deployment follower", move |stop| async move {
        let stopped = stop.stopped();
        tokio::pin!(stopped);
        let mut follower = Follower { router, repository, digests: HashMap::new(), applied: HashMap::new() };
        let mut backend = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = &mut stopped => return Ok(()),
            }
            if backend.is_none() {
                match Backend::connect(&url).await {
                    Ok(b) => backend = Some(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "deployments: cannot reach the store; keeping the last known state");
                        continue;
                    }
                }
            }
            let Some(backend) = &backend else { continue };
            let polled = vigil_store::with_store!(backend, store => follower.poll(store).await);
            if let Err(e) = polled {
                tracing::warn!(error = %e, "deployments: cannot read the store; keeping the last known state");
            }
        }
    });
}

struct Follower {
    router: Arc<DeploymentRouter>,
    repository: Arc<ModelRepository>,
    /// sha256 of each loaded version's artifact, by its directory.
    digests: HashMap<std::path::PathBuf, String>,
    /// What is routed now, per model.
    applied: HashMap<String, Deployment>,
}

impl Follower {
    async fn poll<S: DeploymentStore + RegistryStore>(&mut self, store: &S) -> Result<()> {
        let rows = store.deployments().await?;
        let mut next: HashMap<String, Deployment> = HashMap::new();
        for row in rows {
            let model = row.model_name.clone();
            match self.check(store, &row).await {
                Ok(deployment) => {
                    next.insert(model, deployment);
                }
                Err(why) => {
                    if self.applied.get(&model).is_none_or(|d| d.id != row.deployment_id) {
                        tracing::error!(
                            model,
                            deployment = row.deployment_id,
                            why,
                            "deployment refused; keeping what was served"
                        );
                    }
                    if let Some(kept) = self.applied.get(&model) {
                        next.insert(model, kept.clone());
                    }
                }
            }
        }
        if next != self.applied {
            for d in next.values().filter(|d| self.applied.get(&d.model) != Some(*d)) {
                tracing::info!(model = d.model, deployment = d.id, primary = d.primary, candidate = ?d.candidate, mode = ?d.mode, "deployment applied");
            }
            self.router.set(next.values().cloned());
            self.applied = next;
        }
        Ok(())
    }

    /// The deployment of `row` when every version it names is loaded here and is the artifact
    /// the registry holds; else why not.
    async fn check<S: RegistryStore>(&mut self, store: &S, row: &DeploymentRow) -> Result<Deployment, String> {
        let mode = match row.mode.as_str() {
            "single" => Mode::Single,
            "shadow" => Mode::Shadow { share: row.share },
            "canary" => Mode::Canary { share: row.share },
            other => return Err(format!("unknown mode '{other}'")),
        };
        let automation = Automation {
            policy: row.policy.parse()?,
            band: row.accept_below.zip(row.reject_at).map(|(a, r)| (a as f32, r as f32)),
        };
        let versions = std::iter::once(&row.primary_version).chain(row.candidate_version.as_ref());
        for version in versions {
            let loaded = self.repository.get(&row.model_name, version).map_err(|e| format!("{e}"))?;
            let registered = store
                .model_version(&row.model_name, version)
                .await
                .map_err(|e| format!("cannot read the registry: {e}"))?
                .ok_or_else(|| format!("version {version} is not registered"))?;
            let digest = match self.digests.get(&loaded.path) {
                Some(d) => d.clone(),
                None => {
                    let artifact = loaded.path.join("model.onnx");
                    let d = tokio::task::spawn_blocking(move || vigil_store::registry::sha256_file(&artifact))
                        .await
                        .map_err(|e| format!("digest task failed: {e}"))?
                        .map_err(|e| format!("cannot read the artifact of version {version}: {e}"))?;
                    self.digests.insert(loaded.path.clone(), d.clone());
                    d
                }
            };
            if digest != registered.artifact_sha256 {
                return Err(format!(
                    "version {version} loaded here has sha256 {digest}, the registry holds {}",
                    registered.artifact_sha256
                ));
            }
        }
        Ok(Deployment {
            id: row.deployment_id.clone(),
            model: row.model_name.clone(),
            primary: row.primary_version.clone(),
            candidate: row.candidate_version.clone(),
            mode,
            automation,
        })
    }
}
