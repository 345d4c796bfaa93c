//! Following deployments: from the registry's database (a short poll) or from a control plane
//! over gRPC (`vigil.v1.Control`, a watch stream), for edge boxes that cannot reach the database.
//! Either way the server gets snapshots of every deployment with the registered digest of each
//! version, checks that each version it would route to is that artifact (sha256 of its
//! `model.onnx`), and swaps them into its [`DeploymentRouter`]. Under a control plane a version
//! not on disk is fetched by digest into the model repository, verified, and loaded first.
//!
//! A deployment whose artifacts do not match, or whose versions cannot be loaded here, is
//! refused and the model keeps what it served. While the source is away the server keeps its
//! last known state; with a `state_file` that state survives a restart, so a server started
//! while the source is down serves what it last knew. Until it first knows any, every model
//! answers from its default version. At start the server waits (up to `startup_wait_ms`) for
//! its first read of the source, so that its first answer already follows the deployments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use prost::Message;
use serde::{Deserialize, Serialize};
use vigil_inference::repository::{LoadedModel, ModelRepository};
use vigil_proto::vigil::v1::control_client::ControlClient;
use vigil_proto::vigil::v1::{DeploymentSpec, DeploymentsSnapshot, WatchDeploymentsRequest};
use vigil_serving::decision::Automation;
use vigil_serving::{Deployment, DeploymentRouter, Mode};
use vigil_store::Backend;

use crate::fetch::{Fetcher, failed_remotely};
use crate::lifecycle::Lifecycle;

/// Where a server follows its deployments from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsConfig {
    /// The registry's database (postgres://... or sqlite://...); empty: not followed there.
    pub database_url: String,
    /// A control plane serving `vigil.v1.Control` (http://host:port or https://host:port, e.g.
    /// the monitor's gRPC address); empty: not followed there. At most one of the two.
    pub control_url: String,
    /// How this server reaches the control plane: CA bundle, client certificate, token file
    /// (a token with the `control` scope).
    pub control: vigil_security::ClientSecurity,
    /// How often to read the database, or to retry a control plane that is away, in milliseconds.
    pub poll_interval_ms: u64,
    /// Where the last known deployments are kept across restarts; empty: not kept.
    pub state_file: PathBuf,
    /// Largest model artifact fetched from the control plane, in bytes.
    pub max_artifact_bytes: u64,
    /// How long start-up waits for the first read of the source before serving from the last
    /// known state (or the local configuration), in milliseconds; 0: no wait.
    pub startup_wait_ms: u64,
    /// Most shadow copies running at once (shadow mode); a copy beyond it is skipped and
    /// counted in `vigil_shadow_copies_total{outcome="skipped"}`, never queued.
    pub shadow_concurrency: usize,
}

impl Default for DeploymentsConfig {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            control_url: String::new(),
            control: vigil_security::ClientSecurity::default(),
            poll_interval_ms: 2_000,
            state_file: PathBuf::new(),
            max_artifact_bytes: 2 << 30,
            startup_wait_ms: 5_000,
            shadow_concurrency: vigil_serving::infer::DEFAULT_SHADOW_LANE,
        }
    }
}

impl DeploymentsConfig {
    /// Whether deployments are followed at all.
    pub fn enabled(&self) -> bool {
        !self.database_url.is_empty() || !self.control_url.is_empty()
    }

    /// Checks values serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.database_url.is_empty() && !self.control_url.is_empty() {
            return Err("deployments: set database_url or control_url, not both".into());
        }
        if !self.control_url.is_empty() && !self.control_url.starts_with("http") {
            return Err(format!("deployments.control_url '{}' must start with http:// or https://", self.control_url));
        }
        if self.control_url.starts_with("http://") && self.control.has_tls_options() {
            return Err(format!(
                "deployments.control has TLS settings but control_url '{}' is plaintext: use https://",
                self.control_url
            ));
        }
        if !self.control_url.is_empty()
            && let Err(e) = self.control.check_address(&self.control_url)
        {
            return Err(format!("deployments.control_url: {e:#}"));
        }
        if self.enabled() && self.poll_interval_ms == 0 {
            return Err("deployments.poll_interval_ms must be at least 1".into());
        }
        if self.enabled() && self.max_artifact_bytes == 0 {
            return Err("deployments.max_artifact_bytes must be at least 1".into());
        }
        Ok(())
    }
}

/// When `config` names a source, follows its deployments into `router` in `lifecycle`'s
/// `stage`. Before this returns, the last known state (the state file) is applied and the
/// source is read once (waiting at most `startup_wait_ms`), so a server serves what it knows
/// from its first request.
pub async fn follow(
    config: &DeploymentsConfig,
    server_id: &str,
    router: Arc<DeploymentRouter>,
    repository: Arc<ModelRepository>,
    lifecycle: &mut Lifecycle,
    stage: &'static str,
) {
    if !config.enabled() {
        return;
    }
    let mut follower = Follower {
        router,
        repository,
        disk_digests: HashMap::new(),
        failed_loads: HashMap::new(),
        applied: HashMap::new(),
        state_file: config.state_file.clone(),
        last: None,
        first_read: None,
        refused: HashMap::new(),
        retryable: Default::default(),
    };
    follower.restore().await;
    let (first_read, read_once) = tokio::sync::oneshot::channel();
    follower.first_read = Some(first_read);
    let wait = Duration::from_millis(config.startup_wait_ms);
    let (config, server_id) = (config.clone(), server_id.to_string());
    lifecycle.spawn(stage, "deployment follower", move |stop| async move {
        let stopped = stop.stopped();
        tokio::pin!(stopped);
        let interval = Duration::from_millis(config.poll_interval_ms);
        let following = async {
            if config.control_url.is_empty() {
                follower.poll_database(&config.database_url, interval).await
            } else {
                follower.watch_control(&config, &server_id, interval).await
            }
        };
        tokio::select! {
            () = following => Ok(()),
            () = &mut stopped => Ok(()),
        }
    });
    if tokio::time::timeout(wait, read_once).await.is_err() {
        tracing::warn!(
            waited_ms = wait.as_millis(),
            "deployments: no answer from the source yet; serving the last known state meanwhile"
        );
    }
}

/// How long after a deployment from the control plane is refused it is first tried again;
/// each try that fails doubles the wait, up to [`REFUSED_RETRY_MAX`].
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(2);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait before the next try at a refused deployment: doubled after a try that failed, but
/// back to the first after one that received some of an artifact (a long fetch over a slow
/// link, cut every time, goes on from where it stopped without waiting longer each time).
fn next_retry(waited: Duration, progressed: bool) -> Duration {
    if progressed { REFUSED_RETRY_FIRST } else { (waited * 2).min(REFUSED_RETRY_MAX) }
}

struct Follower {
    router: Arc<DeploymentRouter>,
    repository: Arc<ModelRepository>,
    /// sha256 of versions' artifacts on disk not loaded, with the state of their files then:
    /// read again only when the files change (a deployed version an operator unloaded is not
    /// hashed at every poll).
    disk_digests: HashMap<(String, u64), (ArtifactState, String)>,
    /// Versions whose load failed, with the state of their files then and why.
    failed_loads: HashMap<(String, u64), (ArtifactState, String)>,
    /// What is routed now, per model.
    applied: HashMap<String, Deployment>,
    state_file: PathBuf,
    /// The last snapshot applied (what the state file holds).
    last: Option<DeploymentsSnapshot>,
    /// Told once the source was first read, or failed to be.
    first_read: Option<tokio::sync::oneshot::Sender<()>>,
    /// The refusal last logged per model (deployment id, why): logged once, not every poll.
    refused: HashMap<String, (String, String)>,
    /// Models whose deployment the last snapshot's apply refused for a fetch that failed on the
    /// control plane's side or the network's: tried again.
    retryable: std::collections::HashSet<String>,
}

impl Follower {
    /// Lets start-up go on after the first attempt to read the source, whatever its outcome.
    fn attempted(&mut self) {
        if let Some(first_read) = self.first_read.take() {
            let _ = first_read.send(());
        }
    }

    /// Starts from the state file, when there is one: what the server last knew.
    async fn restore(&mut self) {
        if self.state_file.as_os_str().is_empty() {
            return;
        }
        match std::fs::read(&self.state_file) {
            Ok(bytes) => match DeploymentsSnapshot::decode(bytes.as_slice()) {
                Ok(snapshot) => {
                    tracing::info!(
                        file = %self.state_file.display(),
                        deployments = snapshot.deployments.len(),
                        "starting from the last known deployments"
                    );
                    self.apply(snapshot, None).await;
                }
                Err(e) => {
                    tracing::error!(file = %self.state_file.display(), error = %e, "deployments state file unreadable; ignored")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %self.state_file.display(), error = %e, "cannot read the deployments state file")
            }
        }
    }

    async fn poll_database(&mut self, url: &str, interval: Duration) {
        let mut backend = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if backend.is_none() {
                match Backend::connect(url).await {
                    Ok(b) => backend = Some(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "deployments: cannot reach the store; keeping the last known state");
                        self.attempted();
                        continue;
                    }
                }
            }
            let Some(backend) = &backend else { continue };
            let read = vigil_store::with_store!(backend, store => crate::control::snapshot_from_store(store).await);
            match read {
                Ok(snapshot) => self.apply(snapshot, None).await,
                Err(e) => {
                    tracing::warn!(error = %e, "deployments: cannot read the store; keeping the last known state")
                }
            }
            self.attempted();
        }
    }

    async fn watch_control(&mut self, config: &DeploymentsConfig, server_id: &str, retry: Duration) {
        loop {
            match self.watch_once(config, server_id).await {
                Ok(()) => tracing::warn!(url = config.control_url, "control plane closed the watch; reconnecting"),
                Err(e) => {
                    tracing::warn!(url = config.control_url, error = %e, "control plane away; keeping the last known state")
                }
            }
            self.attempted();
            tokio::time::sleep(retry).await;
        }
    }

    async fn watch_once(&mut self, config: &DeploymentsConfig, server_id: &str) -> Result<()> {
        let mut client = ControlClient::new(config.control.connect(&config.control_url).await?);
        let request = WatchDeploymentsRequest { server_id: server_id.to_string() };
        let mut stream = client.watch_deployments(request).await?.into_inner();
        tracing::info!(url = config.control_url, "following deployments from the control plane");
        let fetcher = Fetcher::new(client.clone(), config.max_artifact_bytes);
        // The control plane sends a snapshot only when something changed: a deployment refused
        // because its fetch failed on the control plane's side or the network's (shed, cut, the
        // artifact unreadable for a moment) is tried again from the last snapshot, at growing
        // intervals while it stays refused.
        let mut retry_in = REFUSED_RETRY_FIRST;
        loop {
            // Jittered (half to all of the interval): a fleet refused by one snapshot does not
            // come back all at once.
            let retry = tokio::time::sleep(retry_in.mul_f64(rand::random_range(0.5..=1.0)));
            let snapshot = tokio::select! {
                message = stream.message() => message?,
                () = retry, if !self.retryable.is_empty() => {
                    let received = fetcher.received();
                    if let Some(last) = self.last.clone() {
                        self.apply(last, Some(fetcher.clone())).await;
                    }
                    retry_in = next_retry(retry_in, fetcher.received() > received);
                    continue;
                }
            };
            let Some(snapshot) = snapshot else { return Ok(()) };
            retry_in = REFUSED_RETRY_FIRST;
            self.apply(snapshot, Some(fetcher.clone())).await;
            self.attempted();
        }
    }

    async fn apply(&mut self, snapshot: DeploymentsSnapshot, mut fetcher: Option<Fetcher>) {
        // A model no longer deployed has nothing left to try again; what is worth trying again
        // is found anew.
        self.refused.retain(|model, _| snapshot.deployments.iter().any(|spec| &spec.model_name == model));
        self.retryable.clear();
        let before: Vec<String> = self.applied.keys().cloned().collect();
        // Each model's deployment is routed to as soon as it checks out: a slow fetch or load of
        // one model's version does not hold back another's change (a rollback, say).
        let mut next = self.applied.clone();
        for spec in &snapshot.deployments {
            let model = spec.model_name.clone();
            match self.check(spec, fetcher.as_mut()).await {
                Ok(deployment) => {
                    self.refused.remove(&model);
                    if next.get(&model) != Some(&deployment) {
                        tracing::info!(model, deployment = deployment.id, primary = deployment.primary, candidate = ?deployment.candidate, mode = ?deployment.mode, "deployment applied");
                        next.insert(model, deployment);
                        self.router.set(next.values().cloned());
                    }
                }
                Err(why) => {
                    let refusal = (spec.deployment_id.clone(), why.clone());
                    let new = self.refused.get(&model) != Some(&refusal);
                    if new && self.applied.get(&model).is_none_or(|d| d.id != spec.deployment_id) {
                        self.refused.insert(model.clone(), refusal);
                        tracing::error!(
                            model,
                            deployment = spec.deployment_id,
                            why,
                            "deployment refused; keeping what was served"
                        );
                    }
                    // What was routed stays (in `next` already).
                }
            }
        }
        // Models the snapshot no longer deploys go back to their default version.
        let deployed = |model: &String| snapshot.deployments.iter().any(|spec| &spec.model_name == model);
        if next.keys().any(|model| !deployed(model)) {
            next.retain(|model, _| deployed(model));
            self.router.set(next.values().cloned());
        }
        self.applied = next;
        // The versions each applied deployment names stay loaded through reloads, whatever the
        // model's version policy; those no deployment routes to any more go (once the router
        // has moved off them), back to the policy's own.
        let models: std::collections::BTreeSet<&String> =
            snapshot.deployments.iter().map(|spec| &spec.model_name).chain(&before).collect();
        for model in models {
            let named = self.applied.get(model).map_or_else(Default::default, |d| {
                std::iter::once(&d.primary).chain(&d.candidate).filter_map(|v| v.parse().ok()).collect()
            });
            let left = self.repository.set_kept_versions(model, named);
            if !left.is_empty() {
                // Out of service a little later, off the async threads (a load elsewhere may hold
                // the repository): a request routed just before the router moved finds its
                // version still there, and a version named again meanwhile stays.
                let (repository, model) = (self.repository.clone(), model.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(RELEASE_AFTER).await;
                    let released = tokio::task::spawn_blocking(move || repository.release_unkept(&model, &left));
                    if let Err(e) = released.await {
                        tracing::error!(error = %e, "releasing versions failed");
                    }
                });
            }
        }
        if fetcher.is_some() {
            self.remove_unwanted_fetches(&snapshot);
        }
        self.keep(snapshot);
    }

    /// Removes what unfinished fetches left of versions no deployment names any more.
    fn remove_unwanted_fetches(&self, snapshot: &DeploymentsSnapshot) {
        let wanted = |model: &str, version: &str| {
            snapshot.deployments.iter().any(|spec| {
                spec.model_name == model && (spec.primary_version == version || spec.candidate_version == version)
            })
        };
        for entry in std::fs::read_dir(self.repository.root()).into_iter().flatten().flatten() {
            let model = entry.file_name().to_string_lossy().into_owned();
            crate::fetch::remove_staging(&entry.path(), |version, _| !wanted(&model, version));
        }
    }

    /// Writes `snapshot` to the state file when it differs from the last one (write, then rename).
    fn keep(&mut self, snapshot: DeploymentsSnapshot) {
        let same = self.last.as_ref().is_some_and(|l| l.deployments == snapshot.deployments);
        if !same && !self.state_file.as_os_str().is_empty() {
            let temporary = self.state_file.with_extension("incoming");
            let written = std::fs::write(&temporary, snapshot.encode_to_vec())
                .and_then(|()| std::fs::rename(&temporary, &self.state_file));
            if let Err(e) = written {
                tracing::error!(file = %self.state_file.display(), error = %e, "cannot keep the deployments state");
            }
        }
        self.last = Some(snapshot);
    }

    /// The version's number when its directory is in the repository under that exact name.
    fn on_disk(&self, model: &str, version: &str) -> Option<u64> {
        let number: u64 = version.parse().ok()?;
        (number.to_string() == version && self.repository.root().join(model).join(version).is_dir()).then_some(number)
    }

    /// The deployment of `spec` when every version it names is loaded here (fetched first when
    /// a control plane can send it) and is the registered artifact; else why not.
    async fn check(&mut self, spec: &DeploymentSpec, mut fetcher: Option<&mut Fetcher>) -> Result<Deployment, String> {
        let mode = match spec.mode.as_str() {
            "single" => Mode::Single,
            "shadow" => Mode::Shadow { share: spec.share },
            "canary" => Mode::Canary { share: spec.share },
            other => return Err(format!("unknown mode '{other}'")),
        };
        let automation = Automation {
            policy: spec.policy.parse()?,
            band: spec.accept_below.zip(spec.reject_at).map(|(a, r)| (a as f32, r as f32)),
        };
        let candidate = Some(spec.candidate_version.clone()).filter(|c| !c.is_empty());
        let model = &spec.model_name;
        let versions: Vec<&String> = std::iter::once(&spec.primary_version).chain(candidate.as_ref()).collect();
        // The cheap checks of every named version first (registered; on disk outside the policy:
        // not known to fail, the registered artifact), so that nothing is loaded for a
        // deployment that is refused anyway.
        let mut to_load = Vec::new();
        for &version in &versions {
            let registered =
                spec.artifact_sha256.get(version).ok_or_else(|| format!("version {version} is not registered"))?;
            if self.repository.get(model, version).is_ok() {
                continue;
            }
            let Some(number) = self.on_disk(model, version) else { continue };
            let files = artifact_state(&self.repository.root().join(model).join(version));
            let key = (model.clone(), number);
            if let Some((state, why)) = self.failed_loads.get(&key)
                && *state == files
            {
                return Err(why.clone());
            }
            let digest = match self.disk_digests.get(&key).filter(|(state, _)| *state == files) {
                Some((_, digest)) => digest.clone(),
                None => {
                    let artifact = self.repository.root().join(model).join(version).join("model.onnx");
                    let digest = tokio::task::spawn_blocking(move || vigil_store::registry::sha256_file(&artifact))
                        .await
                        .map_err(|e| format!("digest task failed: {e}"))?
                        .map_err(|e| format!("cannot read the artifact of version {version}: {e}"))?;
                    self.disk_digests.insert(key.clone(), (files.clone(), digest.clone()));
                    digest
                }
            };
            if digest != *registered {
                let why = format!("version {version} on disk has sha256 {digest}, the registry holds {registered}");
                self.failed_loads.insert(key, (files, why.clone()));
                return Err(why);
            }
            to_load.push((number, files));
        }
        for &version in &versions {
            let registered =
                spec.artifact_sha256.get(version).ok_or_else(|| format!("version {version} is not registered"))?;
            let on_disk = self.on_disk(model, version);
            let loaded = match (self.repository.get(model, version), on_disk, fetcher.as_deref_mut()) {
                // A version not kept yet is kept now, under the repository's lock, rather than
                // once every deployment is checked: a release scheduled when an earlier
                // deployment dropped it may fire meanwhile and take out the version the router
                // is about to send requests to (if it already has, the version is loaded
                // again). One kept already cannot be released: only this follower unkeeps.
                (Ok(_), Some(number), _) if !self.repository.is_kept(model, number) => {
                    load_kept(&self.repository, model, number).await?
                }
                (Ok(loaded), _, _) => loaded,
                // On disk but left out by the model's version policy (checked above): loaded
                // beside the others, once per state of its files.
                (Err(_), Some(number), _) => {
                    let Some((_, files)) = to_load.iter().find(|(n, _)| *n == number).cloned() else {
                        return Err(format!("version {version} changed while it was checked"));
                    };
                    let key = (model.clone(), number);
                    match load_kept(&self.repository, model, number).await {
                        Ok(loaded) => {
                            self.failed_loads.remove(&key);
                            self.disk_digests.remove(&key);
                            loaded
                        }
                        Err(why) => {
                            // Remembered only while the model serves: then the version's own
                            // files are at fault, not the model's state (unloaded, say).
                            if self.repository.entry(model).is_ok() {
                                self.failed_loads.insert(key, (files, why.clone()));
                            }
                            return Err(why);
                        }
                    }
                }
                (Err(_), None, Some(fetcher)) => {
                    if let Err(e) = fetcher.fetch(self.repository.root(), model, version, registered).await {
                        // Refused by the control plane or the network (a fetch shed or cut, the
                        // artifact unreadable there for now): worth trying again. What this
                        // server refuses itself (its size, its digest) is not.
                        if failed_remotely(&e) {
                            self.retryable.insert(model.to_string());
                        }
                        return Err(format!("{e:#}"));
                    }
                    let number = version.parse().map_err(|e| format!("version '{version}': {e}"))?;
                    let loaded = load_kept(&self.repository, model, number).await?;
                    tracing::info!(model, version, "fetched artifact loaded");
                    loaded
                }
                (Err(e), None, None) => return Err(e.to_string()),
            };
            // The digest of the bytes its sessions were built from; the router checks it again
            // at every request (a file replaced and reloaded later is not served).
            if loaded.sha256 != *registered {
                return Err(format!(
                    "version {version} loaded here has sha256 {}, the registry holds {registered}",
                    loaded.sha256
                ));
            }
        }
        let artifacts = versions
            .iter()
            .filter_map(|&version| Some((version.clone(), spec.artifact_sha256.get(version)?.clone())))
            .collect();
        Ok(Deployment {
            id: spec.deployment_id.clone(),
            model: spec.model_name.clone(),
            primary: spec.primary_version.clone(),
            candidate,
            mode,
            automation,
            capture_rate: spec.capture_rate,
            artifacts,
        })
    }
}

/// How long a version no deployment names any more stays in service (requests routed to it
/// just before the change find it).
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// The size and modification time of a version's model files: what a failed load is
/// remembered by.
type ArtifactState = Vec<Option<(u64, std::time::SystemTime)>>;

fn artifact_state(dir: &Path) -> ArtifactState {
    ["model.onnx", "model.toml"]
        .iter()
        .map(|file| std::fs::metadata(dir.join(file)).and_then(|m| Ok((m.len(), m.modified()?))).ok())
        .collect()
}

/// Loads `version` of `model` from the repository's directory beside the versions serving,
/// kept through later reloads (see [`ModelRepository::load_kept_version`]).
async fn load_kept(repository: &Arc<ModelRepository>, model: &str, version: u64) -> Result<Arc<LoadedModel>, String> {
    let (repository, name) = (repository.clone(), model.to_string());
    tokio::task::spawn_blocking(move || repository.load_kept_version(&name, version))
        .await
        .map_err(|e| format!("load task failed: {e}"))?
        .map_err(|e| format!("cannot load version {version}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_deployments_are_tried_again_sooner_while_their_fetch_progresses() {
        let mut wait = REFUSED_RETRY_FIRST;
        for expected in [4, 8, 16, 32, 64, 128, 256, 300, 300] {
            wait = next_retry(wait, false);
            assert_eq!(wait, Duration::from_secs(expected));
        }
        assert_eq!(next_retry(wait, true), REFUSED_RETRY_FIRST);
    }

    #[test]
    fn a_plaintext_control_plane_with_tls_settings_is_refused() {
        let mut config = DeploymentsConfig { control_url: "http://monitor:50052".into(), ..Default::default() };
        config.control.ca_cert = Some("ca.pem".into());
        let e = config.validate().unwrap_err();
        assert!(e.contains("TLS settings") && e.contains("use https://"), "{e}");
        config.control_url = "https://monitor:50052".into();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_token_for_a_plaintext_control_plane_beyond_loopback_is_refused_at_start() {
        let mut config = DeploymentsConfig { control_url: "http://monitor:50052".into(), ..Default::default() };
        config.control.token_file = Some("token".into());
        let e = config.validate().unwrap_err();
        assert!(e.contains("deployments.control_url: a token would cross the network in clear"), "{e}");
        config.control_url = "http://127.0.0.1:50052".into();
        assert!(config.validate().is_ok(), "this machine's own monitor");
    }
}
