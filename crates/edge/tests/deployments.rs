//! The edge server follows deployments from the registry's database: a switch and a canary
//! take effect within the poll interval, and a deployment naming an artifact other than the
//! registered one is refused while the model keeps what it served.

mod common;

use std::time::Duration;

use common::*;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_store::registry::sha256_file;
use vigil_store::{
    Change, DeploymentRow, DeploymentStore, ModelVersionRow, PredictionStore, RegistryStore, SqliteStore,
};

fn registered(version: &str, digest: String) -> ModelVersionRow {
    let now = chrono::Utc::now();
    ModelVersionRow {
        model_name: MODEL.into(),
        version: version.into(),
        artifact_sha256: digest,
        artifact_uri: String::new(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "candidate".into(),
        registered_by: "anna".into(),
        registered_at: now,
        stage_changed_at: now,
    }
}

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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_switches_and_canaries_and_refuses_a_foreign_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    for version in 1..=3 {
        copy_version(&model_dir(), &repo.join(MODEL), version, None);
    }
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    store.register_version(&registered("1", digest.clone()), "").await.unwrap();
    store.register_version(&registered("2", digest), "").await.unwrap();
    // Version 3 is registered with another artifact than the one this server has.
    store.register_version(&registered("3", "0".repeat(64)), "").await.unwrap();

    let mut config = config();
    config.model_repository = repo.clone();
    config.models.load_all_versions = true;
    config.deployments.database_url = url.clone();
    config.deployments.poll_interval_ms = 100;
    let server = start(config).await;
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let version_for = |station: &str| {
        let mut inspect = inspect.clone();
        let request = InspectRequest { image: image.clone(), station_id: station.into(), ..Default::default() };
        async move { inspect.inspect(request).await.unwrap().into_inner().model_version }
    };
    let until_served = |version: &'static str| {
        let version_for = &version_for;
        async move {
            for _ in 0..100 {
                if version_for("line-1").await == version {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("version {version} never answered");
        }
    };
    // No deployment yet: the newest version answers.
    assert_eq!(version_for("line-1").await, "3");
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("d1", "1", None, "single", 0.0), &change).await.unwrap();
    until_served("1").await;
    // A canary on every station.
    store.set_deployment(&deployment("d2", "1", Some("2"), "canary", 1.0), &change).await.unwrap();
    until_served("2").await;
    for station in ["line-2", "line-3", "line-4"] {
        assert_eq!(version_for(station).await, "2");
    }
    // A switch to version 3 names an artifact this server does not have: refused, the canary stays.
    store.set_deployment(&deployment("d3", "3", Some("1"), "single", 0.0), &change).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for station in ["line-1", "line-5"] {
        assert_eq!(version_for(station).await, "2", "ten polls later, still the canary");
    }
    // Back to version 1 alone.
    store.set_deployment(&deployment("d4", "1", Some("2"), "single", 0.0), &change).await.unwrap();
    until_served("1").await;
    server.shutdown().await.unwrap();
}
