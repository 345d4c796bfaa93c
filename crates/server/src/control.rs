//! The control plane (`vigil.v1.Control`): the deployments of every model as a stream of
//! snapshots, and registered model artifacts by digest. One task reads the store every poll
//! interval and publishes a snapshot when anything changed; every watcher shares it, so the
//! store is read once whatever the number of servers following.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use vigil_proto::vigil::v1::control_server::Control;
use vigil_proto::vigil::v1::{
    ArtifactChunk, DeploymentSpec, DeploymentsSnapshot, FetchArtifactRequest, WatchDeploymentsRequest,
};
use vigil_store::{CaptureBoostStore, DeploymentRow, DeploymentStore, RegistryStore};

use crate::lifecycle::Lifecycle;

/// Largest chunk of an artifact in one message.
pub const ARTIFACT_CHUNK_BYTES: usize = 1 << 20;

/// The files of a model version sent by [`Control::fetch_artifact`], in order; the first two
/// must exist.
pub const ARTIFACT_FILES: [&str; 3] = ["model.onnx", "model.toml", "metrics.json"];

/// A deployment as the control plane sends it, with the registered digest of each version it
/// names (a version not registered has none, and servers refuse the deployment) and the
/// model's raised capture rate.
pub fn spec_of(row: &DeploymentRow, digests: impl Fn(&str) -> Option<String>, capture_rate: f64) -> DeploymentSpec {
    let versions = std::iter::once(&row.primary_version).chain(row.candidate_version.as_ref());
    DeploymentSpec {
        model_name: row.model_name.clone(),
        deployment_id: row.deployment_id.clone(),
        primary_version: row.primary_version.clone(),
        candidate_version: row.candidate_version.clone().unwrap_or_default(),
        mode: row.mode.clone(),
        share: row.share,
        policy: row.policy.clone(),
        accept_below: row.accept_below,
        reject_at: row.reject_at,
        artifact_sha256: versions.filter_map(|v| digests(v).map(|d| (v.clone(), d))).collect(),
        updated_by: row.updated_by.clone(),
        updated_at: Some(std::time::SystemTime::from(row.updated_at).into()),
        capture_rate,
    }
}

/// Every deployment in `store`, with the registered digests of the versions they name and the
/// capture rate alarms raised on the model (the highest).
pub async fn snapshot_from_store<S: DeploymentStore + RegistryStore + CaptureBoostStore>(
    store: &S,
) -> anyhow::Result<DeploymentsSnapshot> {
    let rows = store.deployments().await?;
    let versions = store.model_versions(None).await?;
    let boosts = store.capture_boosts().await?;
    let deployments = rows
        .iter()
        .map(|row| {
            spec_of(
                row,
                |version| {
                    versions
                        .iter()
                        .find(|v| v.model_name == row.model_name && v.version == version)
                        .map(|v| v.artifact_sha256.clone())
                },
                boosts.iter().filter(|b| b.model_name == row.model_name).map(|b| b.rate).fold(0.0, f64::max),
            )
        })
        .collect();
    Ok(DeploymentsSnapshot { deployments, read_at: Some(std::time::SystemTime::now().into()) })
}

/// The control service over a store.
#[derive(Clone)]
pub struct ControlService<S> {
    store: S,
    snapshots: watch::Receiver<Option<Arc<DeploymentsSnapshot>>>,
}

impl<S: DeploymentStore + RegistryStore + CaptureBoostStore> ControlService<S> {
    /// Starts reading `store` every `poll` in `lifecycle`'s `stage` and returns the service.
    pub fn start(store: S, poll: Duration, lifecycle: &mut Lifecycle, stage: &'static str) -> Self {
        let (publish, snapshots) = watch::channel(None::<Arc<DeploymentsSnapshot>>);
        let reader = store.clone();
        lifecycle.spawn(stage, "control plane snapshots", move |stop| async move {
            let stopped = stop.stopped();
            tokio::pin!(stopped);
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = &mut stopped => return Ok(()),
                }
                match snapshot_from_store(&reader).await {
                    Ok(snapshot) => {
                        publish.send_if_modified(|current| {
                            let changed = current.as_ref().is_none_or(|c| c.deployments != snapshot.deployments);
                            if changed {
                                *current = Some(Arc::new(snapshot));
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane: cannot read the deployments; watchers keep the last")
                    }
                }
            }
        });
        Self { store, snapshots }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<DeploymentsSnapshot, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<S: DeploymentStore + RegistryStore + CaptureBoostStore> Control for ControlService<S> {
    type WatchDeploymentsStream = SnapshotStream;

    async fn watch_deployments(
        &self,
        request: Request<WatchDeploymentsRequest>,
    ) -> Result<Response<Self::WatchDeploymentsStream>, Status> {
        let server = request.into_inner().server_id;
        tracing::info!(server, "a server follows the deployments");
        let mut snapshots = self.snapshots.clone();
        // The current snapshot first (once the first read is done), then each change.
        snapshots.mark_changed();
        let stream = futures::stream::unfold(snapshots, |mut snapshots| async move {
            loop {
                snapshots.changed().await.ok()?;
                let current = snapshots.borrow_and_update().clone();
                if let Some(snapshot) = current {
                    return Some((Ok(DeploymentsSnapshot::clone(&snapshot)), snapshots));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let request = request.into_inner();
        let digest = request.sha256.to_lowercase();
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!("'{digest}' is not a hex sha256")));
        }
        let versions =
            self.store.model_versions(None).await.map_err(|e| Status::unavailable(format!("registry: {e}")))?;
        let wanted = |v: &vigil_store::ModelVersionRow| {
            (request.model_name.is_empty() || v.model_name == request.model_name)
                && (request.version.is_empty() || v.version == request.version)
        };
        let version = versions.into_iter().find(|v| wanted(v) && v.artifact_sha256 == digest).ok_or_else(|| {
            Status::not_found(format!(
                "no registered version{} has artifact sha256 {digest}",
                if request.version.is_empty() {
                    String::new()
                } else {
                    format!(" {} {}", request.model_name, request.version)
                }
            ))
        })?;
        let artifact = PathBuf::from(&version.artifact_uri);
        let dir = artifact.parent().map(Path::to_path_buf).unwrap_or_default();
        let check = artifact.clone();
        let on_disk = tokio::task::spawn_blocking(move || vigil_store::registry::sha256_file(&check))
            .await
            .map_err(|e| Status::internal(format!("digest task: {e}")))?
            .map_err(|e| Status::failed_precondition(format!("cannot read {}: {e}", artifact.display())))?;
        if on_disk != digest {
            return Err(Status::failed_precondition(format!(
                "{} changed since it was registered (sha256 {on_disk}, registered {digest})",
                artifact.display()
            )));
        }
        let files: Vec<(String, PathBuf)> = ARTIFACT_FILES
            .iter()
            .map(|f| (f.to_string(), dir.join(f)))
            .filter(|(name, path)| path.is_file() || name != "metrics.json")
            .collect();
        let (model_name, version) = (version.model_name, version.version);
        let stream = futures::stream::unfold(
            (files.into_iter(), None::<(String, tokio::fs::File)>),
            move |(mut files, mut open)| {
                let (model_name, version) = (model_name.clone(), version.clone());
                async move {
                    loop {
                        if open.is_none() {
                            let (name, path) = files.next()?;
                            match tokio::fs::File::open(&path).await {
                                Ok(file) => open = Some((name, file)),
                                Err(e) => {
                                    let status =
                                        Status::failed_precondition(format!("cannot read {}: {e}", path.display()));
                                    return Some((Err(status), (Vec::new().into_iter(), None)));
                                }
                            }
                        }
                        let (name, file) = open.as_mut()?;
                        let mut data = vec![0; ARTIFACT_CHUNK_BYTES];
                        match file.read(&mut data).await {
                            Ok(0) => open = None,
                            Ok(n) => {
                                data.truncate(n);
                                let chunk = ArtifactChunk {
                                    model_name: model_name.clone(),
                                    version: version.clone(),
                                    file: name.clone(),
                                    data,
                                };
                                return Some((Ok(chunk), (files, open)));
                            }
                            Err(e) => {
                                let status = Status::internal(format!("reading {name}: {e}"));
                                return Some((Err(status), (Vec::new().into_iter(), None)));
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
