//! Fetching a model version from the control plane (`vigil.v1.Control/FetchArtifact`) into the
//! model repository: downloaded into a staging directory beside the versions, checked against
//! its registered digest, then moved into place at once.
//!
//! A fetch cut on the way (a link that drops, the control plane's stream timeout) keeps what
//! it received: the next try at the same artifact asks for `model.onnx` from where it stopped.
//! A resumed download that does not match its digest is fetched once more from the start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use vigil_proto::vigil::v1::control_client::ControlClient;
use vigil_proto::vigil::v1::{ArtifactChunk, FetchArtifactRequest};

use crate::control::ARTIFACT_FILES;

/// The file a fetch resumes; the others are small and sent again whole.
const MODEL_FILE: &str = ARTIFACT_FILES[0];

/// Staging directories start so, then the version: `.fetching-<version>-<digest's first 16>`.
const STAGING_PREFIX: &str = ".fetching-";

/// Fetches artifacts from the control plane into a model repository.
#[derive(Clone)]
pub(crate) struct Fetcher {
    client: ControlClient<vigil_security::client::SecureChannel>,
    /// The most bytes one version's files may take (`deployments.max_artifact_bytes`).
    max_bytes: u64,
    /// Bytes written by every fetch so far (shared by the clones).
    received: Arc<AtomicU64>,
}

impl Fetcher {
    pub fn new(client: ControlClient<vigil_security::client::SecureChannel>, max_bytes: u64) -> Self {
        Self { client, max_bytes, received: Arc::default() }
    }

    /// Bytes written by every fetch so far: a try that made some got further than the last.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Fetches `model` `version` (its model.onnx has `digest`) into the repository at `root`,
    /// checks the digest and moves it into place.
    pub async fn fetch(&mut self, root: &Path, model: &str, version: &str, digest: &str) -> Result<()> {
        if version.parse::<u64>().is_err() {
            bail!("version '{version}' is not a number; it cannot be a directory of the model repository");
        }
        if !vigil_inference::repository::is_model_name(model) {
            bail!("model '{model}' is not a name; it cannot be a directory of the model repository");
        }
        let target = root.join(model).join(version);
        if target.exists() {
            bail!("{} is in the way of the fetched version: remove it", target.display());
        }
        tracing::info!(model, version, sha256 = digest, "fetching the artifact from the control plane");
        // Named by version and digest: a try at the same artifact resumes what a cut one left,
        // and anything fetched for the version before is removed.
        let tag: String = digest.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        let staging = root.join(model).join(format!("{STAGING_PREFIX}{version}-{tag}"));
        remove_staging(&root.join(model), |v, path| v == version && path != staging);
        let mut started_over = false;
        loop {
            std::fs::create_dir_all(&staging)?;
            let resumed = match self.download(&staging, model, version, digest).await {
                Ok(resumed) => resumed,
                Err(e) => {
                    // Cut on the way: what arrived is kept for the next try. Refused here, or
                    // nothing received: gone.
                    let received = std::fs::metadata(staging.join(MODEL_FILE)).is_ok_and(|m| m.len() > 0);
                    if !(failed_remotely(&e) && received) {
                        let _ = std::fs::remove_dir_all(&staging);
                    }
                    return Err(e);
                }
            };
            let (from, to, registered) = (staging.clone(), target.clone(), digest.to_string());
            match tokio::task::spawn_blocking(move || verify_and_place(&from, &to, &registered)).await? {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    if !resumed || started_over {
                        return Err(e);
                    }
                    // What an earlier try left was not what it seemed (a torn write, another
                    // process): the whole artifact, once more.
                    tracing::warn!(model, version, error = %format!("{e:#}"), "a resumed fetch does not match its digest; fetching it again from the start");
                    started_over = true;
                }
            }
        }
    }

    /// Downloads the version's files into `dir`, resuming the model.onnx an earlier try left
    /// there; whether it did (the bytes kept are part of the result).
    async fn download(&mut self, dir: &Path, model: &str, version: &str, digest: &str) -> Result<bool> {
        let mut writer = ChunkWriter::new(dir, self.max_bytes)?;
        if writer.have > 0 {
            tracing::info!(model, version, bytes = writer.have, "resuming the artifact's fetch");
        }
        let request = FetchArtifactRequest {
            sha256: digest.to_string(),
            model_name: model.to_string(),
            version: version.to_string(),
            model_offset: writer.have,
        };
        let mut stream = self.client.fetch_artifact(request).await?.into_inner();
        while let Some(chunk) = stream.message().await? {
            writer.write(&chunk)?;
            self.received.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        Ok(writer.have > 0)
    }
}

/// Whether a fetch failed on the control plane's side or the network's (a gRPC status or a
/// transport error in its chain), not by this server's own refusal.
pub(crate) fn failed_remotely(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<tonic::Status>().is_some() || cause.downcast_ref::<tonic::transport::Error>().is_some()
    })
}

/// Removes the staging directories in `model_dir` for which `stale(version, path)` holds.
pub(crate) fn remove_staging(model_dir: &Path, stale: impl Fn(&str, &Path) -> bool) {
    for entry in std::fs::read_dir(model_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else { continue };
        let version = rest.split_once('-').map_or(rest, |(version, _)| version);
        if stale(version, &entry.path()) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed an unfinished fetch"),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an unfinished fetch")
                }
            }
        }
    }
}

/// Checks a fetched version's digest and files, then moves it into place at once.
fn verify_and_place(staging: &Path, target: &Path, digest: &str) -> Result<()> {
    let got = vigil_store::registry::sha256_file(&staging.join(MODEL_FILE))?;
    if got != digest {
        bail!("fetched model.onnx has sha256 {got}, the registry holds {digest}");
    }
    for required in &ARTIFACT_FILES[..2] {
        if !staging.join(required).is_file() {
            bail!("the control plane sent no {required}");
        }
    }
    std::fs::rename(staging, target)?;
    Ok(())
}

/// Writes a fetch's chunks into a staging directory, in order, each file from its start or,
/// for model.onnx, from what an earlier try left.
struct ChunkWriter {
    dir: PathBuf,
    max_bytes: u64,
    /// The bytes of model.onnx kept from an earlier try (0 once the control plane sends it
    /// from its start).
    have: u64,
    /// The bytes of this version on disk so far.
    total: u64,
    open: Option<OpenFile>,
    /// A chunk gave its position: the control plane numbers them.
    numbered: bool,
}

struct OpenFile {
    name: String,
    file: File,
    /// Where its first chunk of this fetch started.
    started_at: u64,
    written: u64,
}

impl ChunkWriter {
    /// Starts on `dir`: the small files an earlier try left go, its model.onnx is resumed.
    fn new(dir: &Path, max_bytes: u64) -> Result<Self> {
        for other in &ARTIFACT_FILES[1..] {
            let _ = std::fs::remove_file(dir.join(other));
        }
        let have = std::fs::metadata(dir.join(MODEL_FILE)).map_or(0, |m| m.len());
        if have > max_bytes {
            bail!("the artifact exceeds deployments.max_artifact_bytes ({max_bytes} bytes)");
        }
        Ok(Self { dir: dir.to_path_buf(), max_bytes, have, total: have, open: None, numbered: false })
    }

    fn write(&mut self, chunk: &ArtifactChunk) -> Result<()> {
        let name = chunk.file.as_str();
        if !ARTIFACT_FILES.contains(&name) {
            bail!("the control plane sent an unexpected file '{name}'");
        }
        if self.open.as_ref().is_none_or(|open| open.name != name) {
            let path = self.dir.join(name);
            let file = match chunk.offset {
                0 => {
                    if name == MODEL_FILE {
                        // Sent from its start (the kept bytes are past the file's end, or the
                        // control plane does not resume): what was kept is written over.
                        self.total -= self.have;
                        self.have = 0;
                    }
                    File::create(&path)?
                }
                at if name == MODEL_FILE && at == self.have => OpenOptions::new().append(true).open(&path)?,
                at => bail!("the control plane sent {name} from byte {at}, which was not asked for"),
            };
            let at = chunk.offset;
            self.open = Some(OpenFile { name: name.to_string(), file, started_at: at, written: at });
        } else if let Some(open) = self.open.as_ref() {
            // A control plane from before resumable fetches gives no position: every chunk at 0.
            let unnumbered = chunk.offset == 0 && open.started_at == 0 && !self.numbered;
            if chunk.offset != open.written && !unnumbered {
                bail!("the control plane sent {name} out of order (byte {} after {})", chunk.offset, open.written);
            }
        }
        self.numbered |= chunk.offset > 0;
        self.total += chunk.data.len() as u64;
        if self.total > self.max_bytes {
            bail!("the artifact exceeds deployments.max_artifact_bytes ({} bytes)", self.max_bytes);
        }
        if let Some(open) = self.open.as_mut() {
            open.file.write_all(&chunk.data)?;
            open.written += chunk.data.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(file: &str, offset: u64, data: &[u8]) -> ArtifactChunk {
        ArtifactChunk { file: file.into(), offset, data: data.to_vec(), ..Default::default() }
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn chunks_are_written_in_order_from_the_start_or_from_what_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A fresh fetch, numbered chunks; a chunk out of place is refused.
        let mut writer = ChunkWriter::new(d, 100).unwrap();
        for c in [chunk("model.onnx", 0, b"abc"), chunk("model.onnx", 3, b"def"), chunk("model.toml", 0, b"t")] {
            writer.write(&c).unwrap();
        }
        assert_eq!((read(d, "model.onnx"), read(d, "model.toml"), writer.have), ("abcdef".into(), "t".into(), 0));
        let e = writer.write(&chunk("model.toml", 5, b"x")).unwrap_err().to_string();
        assert!(e.contains("model.toml out of order (byte 5 after 1)"), "{e}");
        // Resumed: model.onnx goes on from what was kept, the small files come again whole.
        std::fs::write(d.join("model.onnx"), b"abc").unwrap();
        let mut writer = ChunkWriter::new(d, 100).unwrap();
        assert!(!d.join("model.toml").exists(), "an earlier try's small files are sent again");
        assert_eq!(writer.have, 3);
        writer.write(&chunk("model.onnx", 3, b"def")).unwrap();
        writer.write(&chunk("model.toml", 0, b"t")).unwrap();
        assert_eq!((read(d, "model.onnx"), writer.have), ("abcdef".into(), 3));
        // Sent from the start instead: written over, and no longer resumed.
        let mut writer = ChunkWriter::new(d, 100).unwrap();
        writer.write(&chunk("model.onnx", 0, b"xyz")).unwrap();
        assert_eq!((read(d, "model.onnx"), writer.have), ("xyz".into(), 0));
        // Any other start is refused.
        let mut writer = ChunkWriter::new(d, 100).unwrap();
        let e = writer.write(&chunk("model.onnx", 2, b"z")).unwrap_err().to_string();
        assert!(e.contains("from byte 2, which was not asked for"), "{e}");
        let e = writer.write(&chunk("model.py", 0, b"z")).unwrap_err().to_string();
        assert!(e.contains("unexpected file 'model.py'"), "{e}");
    }

    #[test]
    fn a_control_plane_that_numbers_no_chunk_is_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"kept").unwrap();
        let mut writer = ChunkWriter::new(dir.path(), 100).unwrap();
        for c in [chunk("model.onnx", 0, b"ab"), chunk("model.onnx", 0, b"cd"), chunk("model.onnx", 0, b"e")] {
            writer.write(&c).unwrap();
        }
        writer.write(&chunk("model.toml", 0, b"t")).unwrap();
        assert_eq!((read(dir.path(), "model.onnx"), writer.have), ("abcde".into(), 0));
        // One that numbers them: a chunk at 0 again is out of order, in any file.
        let mut writer = ChunkWriter::new(dir.path(), 100).unwrap();
        writer.write(&chunk("model.onnx", 0, b"ab")).unwrap();
        writer.write(&chunk("model.onnx", 2, b"cd")).unwrap();
        writer.write(&chunk("model.toml", 0, b"t")).unwrap();
        let e = writer.write(&chunk("model.toml", 0, b"t")).unwrap_err().to_string();
        assert!(e.contains("model.toml out of order (byte 0 after 1)"), "{e}");
    }

    #[test]
    fn the_size_limit_counts_what_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"abcd").unwrap();
        let mut writer = ChunkWriter::new(dir.path(), 6).unwrap();
        writer.write(&chunk("model.onnx", 4, b"ef")).unwrap();
        let e = writer.write(&chunk("model.toml", 0, b"t")).unwrap_err().to_string();
        assert!(e.contains("exceeds deployments.max_artifact_bytes (6 bytes)"), "{e}");
        let e = ChunkWriter::new(dir.path(), 5).err().unwrap().to_string();
        assert!(e.contains("exceeds deployments.max_artifact_bytes (5 bytes)"), "kept bytes over a lowered limit: {e}");
    }

    #[test]
    fn staging_directories_are_told_apart_by_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".fetching-2-abc", ".fetching-3-def", ".fetching-3", ".incoming-3", "3"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        remove_staging(dir.path(), |version, _| version == "3");
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".fetching-2-abc", ".incoming-3", "3"]);
    }
}
