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

/// Largest chunk of an artifact in one message: a fetch cut on a slow link loses at most
/// this much, resuming after the last whole chunk.
pub const ARTIFACT_CHUNK_BYTES: usize = 64 << 10;

/// The files of a model version sent by [`Control::fetch_artifact`], in order; the first two
/// must exist.
pub const ARTIFACT_FILES: [&str; 3] = ["model.onnx", "model.toml", "metrics.json"];

/// Opens `artifact` and checks its contents against the registered `digest`. The handle
/// returned, rewound, is the one checked: a file moved over the path since (the registry
/// places files by rename) is not sent in its stead.
fn open_verified(artifact: &Path, digest: &str) -> Result<std::fs::File, Status> {
    use std::io::Seek;
    let unreadable =
        |e: std::io::Error| Status::failed_precondition(format!("cannot read {}: {e}", artifact.display()));
    let mut file = std::fs::File::open(artifact).map_err(unreadable)?;
    let on_disk = vigil_store::registry::sha256_reader(&mut file).map_err(unreadable)?;
    if on_disk != digest {
        return Err(Status::failed_precondition(format!(
            "{} changed since it was registered (sha256 {on_disk}, registered {digest})",
            artifact.display()
        )));
    }
    file.rewind().map_err(unreadable)?;
    Ok(file)
}

/// Moves `file` (rewound) to `offset` where that lies within it, else leaves it at its start;
/// returns it with where it stands.
fn resume_at(mut file: std::fs::File, offset: u64) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::{Seek, SeekFrom};
    let start = if offset <= file.metadata()?.len() { offset } else { 0 };
    file.seek(SeekFrom::Start(start))?;
    Ok((file, start))
}

/// Reads into `buffer` until it is full or the file ends (a read may return less): every
/// chunk but a file's last is whole.
async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

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
        let resume = request.model_offset;
        let (model, start) = tokio::task::spawn_blocking(move || {
            let file = open_verified(&artifact, &digest)?;
            resume_at(file, resume).map_err(|e| Status::internal(format!("seeking in {}: {e}", artifact.display())))
        })
        .await
        .map_err(|e| Status::internal(format!("digest task: {e}")))??;
        let files: Vec<(String, PathBuf)> = ARTIFACT_FILES[1..]
            .iter()
            .map(|f| (f.to_string(), dir.join(f)))
            .filter(|(name, path)| path.is_file() || name != "metrics.json")
            .collect();
        let (model_name, version) = (version.model_name, version.version);
        let first = (ARTIFACT_FILES[0].to_string(), tokio::fs::File::from_std(model), start);
        let stream = futures::stream::unfold((files.into_iter(), Some(first)), move |(mut files, mut open)| {
            let (model_name, version) = (model_name.clone(), version.clone());
            async move {
                loop {
                    if open.is_none() {
                        let (name, path) = files.next()?;
                        match tokio::fs::File::open(&path).await {
                            Ok(file) => open = Some((name, file, 0)),
                            Err(e) => {
                                let status =
                                    Status::failed_precondition(format!("cannot read {}: {e}", path.display()));
                                return Some((Err(status), (Vec::new().into_iter(), None)));
                            }
                        }
                    }
                    let (name, file, position) = open.as_mut()?;
                    let mut data = vec![0; ARTIFACT_CHUNK_BYTES];
                    match read_full(file, &mut data).await {
                        Ok(0) => open = None,
                        Ok(n) => {
                            data.truncate(n);
                            let chunk = ArtifactChunk {
                                model_name: model_name.clone(),
                                version: version.clone(),
                                file: name.clone(),
                                data,
                                offset: *position,
                            };
                            *position += n as u64;
                            return Some((Ok(chunk), (files, open)));
                        }
                        Err(e) => {
                            let status = Status::internal(format!("reading {name}: {e}"));
                            return Some((Err(status), (Vec::new().into_iter(), None)));
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::{open_verified, resume_at};

    #[test]
    fn the_file_sent_is_the_one_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"registered model").unwrap();
        let digest = vigil_store::registry::sha256_file(&path).unwrap();
        let mut sent = open_verified(&path, &digest).unwrap();
        // Another artifact moved over the path after the check.
        let replacement = dir.path().join("replacement.onnx");
        std::fs::write(&replacement, b"another model").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let mut read = String::new();
        sent.read_to_string(&mut read).unwrap();
        assert_eq!(read, "registered model", "the checked contents, from the start");
        let refused = open_verified(&path, &digest).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("changed since it was registered"), "{}", refused.message());
    }

    #[test]
    fn a_fetch_resumes_within_the_file_and_starts_over_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"0123456789").unwrap();
        for (asked, start, rest) in [(0, 0, "0123456789"), (4, 4, "456789"), (10, 10, ""), (11, 0, "0123456789")] {
            let (mut file, at) = resume_at(std::fs::File::open(&path).unwrap(), asked).unwrap();
            let mut read = String::new();
            file.read_to_string(&mut read).unwrap();
            assert_eq!((at, read.as_str()), (start, rest), "asked for {asked}");
        }
    }
}
