//! Edge servers that cannot reach the registry's database follow their deployments from the
//! control plane (the monitor's `vigil.v1.Control`): two servers take one change within
//! seconds, a version they do not have is fetched by digest, verified and loaded, and a server
//! restarted while the control plane is down serves the deployment it last knew.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use vigil_edge::RunningServer;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_store::registry::sha256_file;
use vigil_store::{
    Change, DeploymentRow, DeploymentStore, ModelVersionRow, PredictionStore, RegistryStore, SqliteStore,
};

/// A change reaches every server within this (control poll 100 ms, fetch and load included).
const FOLLOW_WITHIN: Duration = Duration::from_secs(15);

fn deployment(id: &str, primary: &str, candidate: Option<&str>, mode: &str, share: f64) -> DeploymentRow {
    DeploymentRow {
        model_name: MODEL.into(),
        deployment_id: id.into(),
        primary_version: primary.into(),
        candidate_version: candidate.map(Into::into),
        mode: mode.into(),
        share,
        updated_by: "ben".into(),
        updated_at: chrono::Utc::now(),
        policy: "partial".into(),
        accept_below: None,
        reject_at: None,
    }
}

/// Registers `version` from `dir` (the registry's artifact store).
async fn register(store: &SqliteStore, dir: &Path, version: &str) -> String {
    let digest = sha256_file(&dir.join("model.onnx")).unwrap();
    let now = chrono::Utc::now();
    let row = ModelVersionRow {
        model_name: MODEL.into(),
        version: version.into(),
        artifact_sha256: digest.clone(),
        artifact_uri: dir.join("model.onnx").display().to_string(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "candidate".into(),
        registered_by: "anna".into(),
        registered_at: now,
        stage_changed_at: now,
    };
    store.register_version(&row, "").await.unwrap();
    digest
}

struct Monitor {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_monitor(url: &str) -> Monitor {
    let mut config = vigil_monitor::MonitorConfig { models: repo_root().join("models"), ..Default::default() };
    config.control.poll = Duration::from_millis(100);
    let store = SqliteStore::connect(url).await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(vigil_monitor::run(store, config, grpc, http, async move {
        let _ = stopped.await;
    }));
    Monitor { addr, stop, task }
}

/// An edge server whose repository holds version 1 only, following `control`; `load_all`:
/// every version on disk loads, else the model's policy (the newest) and the versions
/// deployments name.
async fn edge(
    repo: &Path,
    control: std::net::SocketAddr,
    state_file: Option<PathBuf>,
    load_all: bool,
) -> RunningServer {
    let mut config = config();
    config.model_repository = repo.to_path_buf();
    config.models.load_all_versions = load_all;
    config.deployments.control_url = format!("http://{control}");
    config.deployments.poll_interval_ms = 200;
    config.deployments.state_file = state_file.unwrap_or_default();
    start(config).await
}

async fn version_served(server: &RunningServer, image: &[u8]) -> String {
    let (mut inspect, _) = clients(server).await;
    let request = InspectRequest { image: image.to_vec(), station_id: "line-1".into(), ..Default::default() };
    inspect.inspect(request).await.unwrap().into_inner().model_version
}

async fn until_served(servers: &[&RunningServer], image: &[u8], version: &str) -> Duration {
    let started = Instant::now();
    for server in servers {
        while version_served(server, image).await != version {
            assert!(started.elapsed() < FOLLOW_WITHIN, "version {version} not served within {FOLLOW_WITHIN:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_follow_the_control_plane_fetch_versions_by_digest_and_restart_from_their_last_state() {
    let dir = tempfile::tempdir().unwrap();
    // The registry's artifact store: version 1 the shipped model, version 2 a slower stand-in.
    let artifacts = dir.path().join("artifacts");
    copy_version(&model_dir(), &artifacts, 1, None);
    let slow = std::fs::read(repo_root().join("tests/fixtures/slow-model/model.onnx")).unwrap();
    copy_version(&model_dir(), &artifacts, 2, Some(&slow));
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    register(&store, &artifacts.join("1"), "1").await;
    let digest2 = register(&store, &artifacts.join("2"), "2").await;
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("d1", "1", None, "single", 0.0), &change).await.unwrap();
    let monitor = start_monitor(&url).await;

    // Two edge boxes with version 1 only and no access to the database.
    let repos: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("edge-{i}/models"))).collect();
    for repo in &repos {
        copy_version(&model_dir(), &repo.join(MODEL), 1, None);
    }
    let state = dir.path().join("edge-0/deployments.state");
    // Box b loads by its model's policy: fetching the canary (the newest) must not unload the
    // version serving.
    let a = edge(&repos[0], monitor.addr, Some(state.clone()), true).await;
    let b = edge(&repos[1], monitor.addr, None, false).await;
    let image = samples("normal").remove(0).1;
    until_served(&[&a, &b], &image, "1").await;

    // A canary of version 2 on every station: both boxes fetch it by digest, verify, load it.
    store.set_deployment(&deployment("d2", "1", Some("2"), "canary", 1.0), &change).await.unwrap();
    let took = until_served(&[&a, &b], &image, "2").await;
    println!("both servers serve the fetched canary {took:?} after the change");
    for repo in &repos {
        assert_eq!(sha256_file(&repo.join(MODEL).join("2/model.onnx")).unwrap(), digest2, "the registered artifact");
    }

    // An artifact changed on the control plane's side since it was registered is not sent;
    // the servers keep the canary.
    copy_version(&model_dir(), &artifacts, 3, None);
    register(&store, &artifacts.join("3"), "3").await;
    std::fs::write(artifacts.join("3/model.onnx"), &slow).unwrap();
    store.set_deployment(&deployment("d3", "3", None, "single", 0.0), &change).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for server in [&a, &b] {
        assert_eq!(version_served(server, &image).await, "2", "a refused deployment changes nothing");
    }
    assert!(!repos[0].join(MODEL).join("3").exists(), "nothing half-fetched is left in the repository");
    // Put back as registered, the artifact is fetched on a later try, with no new deployment:
    // the control plane sends nothing until something changes.
    std::fs::copy(model_dir().join("model.onnx"), artifacts.join("3/model.onnx")).unwrap();
    until_served(&[&a, &b], &image, "3").await;

    // Back to version 1 alone (version 2 stays loaded), then the control plane goes away.
    store.set_deployment(&deployment("d4", "1", Some("2"), "single", 0.0), &change).await.unwrap();
    until_served(&[&a, &b], &image, "1").await;
    let _ = monitor.stop.send(());
    monitor.task.await.unwrap().unwrap();

    // Restarted while the control plane is down, the box with a state file serves what it last
    // knew (version 1); without one, a box answers from its default version, the newest it
    // holds (3, fetched).
    a.shutdown().await.unwrap();
    let a = edge(&repos[0], monitor.addr, Some(state), true).await;
    assert_eq!(version_served(&a, &image).await, "1", "the last known deployment, from the state file");
    b.shutdown().await.unwrap();
    let b = edge(&repos[1], monitor.addr, None, false).await;
    assert_eq!(version_served(&b, &image).await, "3", "no state kept: the default version");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
