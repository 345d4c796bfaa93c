//! The seed's phone line, rolled out by itself: the edge server follows the deployments in
//! Postgres, its records go through the logger's pipeline into the same database, the monitor
//! rolls them up and its controller steps the next scratch-detector version from shadow (beside
//! the human inspectors, whose decisions arrive as labels and judge the shadow's accuracy) through
//! a canary to the whole line while the line client inspects phones; then a version that reads
//! the images differently (a changed normalisation: its scores shift) is rolled back within its
//! first step with no person involved, and the line never stops answering.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::MonitorConfig;
use vigil_monitor::rollout;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{InspectRequest, LabelEvent, SubmitLabelsRequest};
use vigil_serving::RecordEmitter;
use vigil_store::registry::sha256_file;
use vigil_store::testing::{TestDatabase, candidate_version, single_deployment};
use vigil_store::{
    Change, DeploymentStore, PgStore, PredictionStore, RegistryStore, RolloutStep, RolloutStore, StepMode,
};

/// Shadow, then half the stations, then all, each step at least 2 s and 60 of the
/// candidate's answers.
fn plan() -> Vec<RolloutStep> {
    let step = |share, mode| RolloutStep { share, mode, min_duration_s: 2, min_requests: 60, max_duration_s: Some(60) };
    vec![step(1.0, StepMode::Shadow), step(0.5, StepMode::Canary), step(1.0, StepMode::Canary)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_version_goes_from_shadow_to_the_whole_line_and_a_bad_one_is_rolled_back_by_itself() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    store.migrate().await.unwrap();

    // Versions 1 and 2 are the shipped model; version 3 normalises the images differently.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    for version in 1..=3 {
        copy_version(&model_dir(), &repo.join(MODEL), version, None);
    }
    let toml = repo.join(MODEL).join("3/model.toml");
    let changed = std::fs::read_to_string(&toml).unwrap().replace("mean = 0.5", "mean = 0.1");
    std::fs::write(&toml, changed).unwrap();
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    for version in ["1", "2", "3"] {
        store.register_version(&candidate_version(MODEL, version, &digest), "").await.unwrap();
    }
    let now = chrono::Utc::now();
    let single = single_deployment(MODEL, "d-1", "1");
    store.set_deployment(&single, &Change { actor: "anna", reason: "", at: now }).await.unwrap();

    // The line: the edge server following the deployments, its records into Postgres.
    let (sink, receiver) = vigil_logbus::in_process::channel(65_536);
    let (emitter, _emitting) = Emitter::start(sink, 65_536, 64);
    let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
    tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, Arc::new(LoggerStats::default())));
    let mut config = config();
    config.model_repository = repo.clone();
    config.models.load_all_versions = true;
    config.deployments.database_url = db.url();
    config.deployments.poll_interval_ms = 100;
    let server = vigil_edge::start_with(config, false, Some(RecordEmitter::new(emitter, "edge-1"))).await.unwrap();
    let (inspect, _) = clients(&server).await;

    // The monitor: rollups every 100 ms, the controller every 300 ms.
    let monitor_config: MonitorConfig = toml::from_str(&format!(
        "models = \"{}\"\n[rollups]\nresolutions = [1, 60]\npoll = \"100ms\"\n[alerting]\nevaluate_every = \"200ms\"\n\
         [rollouts]\nevaluate_every = \"300ms\"\n",
        repo.display()
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let monitor = vigil_monitor::start(store.clone(), monitor_config, grpc, http).await.unwrap();
    let monitoring = MonitoringClient::connect(grpc_url).await.unwrap();

    // The line client: phones from 32 stations, one after another, until the rollout ends. The
    // human inspectors look at every third phone too; their decisions arrive as labels.
    let images: Vec<(String, Vec<u8>)> = samples("normal")
        .into_iter()
        .map(|(name, png)| (if name.ends_with("_ok.png") { "ok" } else { "defect" }.to_string(), png))
        .collect();
    let drive = |model_version: &'static str| {
        let (store, inspect, images, mut monitoring) =
            (store.clone(), inspect.clone(), images.clone(), monitoring.clone());
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            let mut i = 0usize;
            let mut decisions = Vec::new();
            loop {
                let mut client = inspect.clone();
                let (truth, image) = &images[i % images.len()];
                let request = InspectRequest {
                    image: image.clone(),
                    station_id: format!("line-{}", i % 32),
                    ..Default::default()
                };
                let answer = client.inspect(request).await.expect("the line never stops answering").into_inner();
                if i.is_multiple_of(3) {
                    decisions.push(LabelEvent {
                        prediction_id: answer.prediction_id,
                        label: truth.clone(),
                        source: "inspector".into(),
                        ..Default::default()
                    });
                }
                i += 1;
                if i.is_multiple_of(50) {
                    // Those whose prediction is not logged yet are refused ("retry later") and kept.
                    let sent = std::mem::take(&mut decisions);
                    let answer = monitoring.submit_labels(SubmitLabelsRequest { labels: sent.clone() }).await.unwrap();
                    decisions = answer.into_inner().rejected.iter().map(|r| sent[r.index as usize].clone()).collect();
                    let r = store.rollouts(Some(MODEL)).await.unwrap().remove(0);
                    assert_eq!(r.candidate_version, model_version);
                    if !r.is_active() {
                        return (r, i);
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "rollout still {} at step {}: {}",
                        r.state,
                        r.step,
                        r.history
                    );
                }
            }
        }
    };

    let by_anna = Change { actor: "anna", reason: "v2 passed offline evaluation", at: chrono::Utc::now() };
    rollout::start(&store, MODEL, "2", &plan(), &by_anna).await.unwrap();
    let (done, phones) = drive("2").await;
    assert_eq!(done.state, "promoted", "{}", done.history);
    let decisions: Vec<String> = done.decisions().iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["next_step", "next_step", "promote"], "shadow, half the line, all of it");
    let shadow_checks = rollout::decision_checks(&done, 0);
    let agreement = shadow_checks.iter().find(|c| c.name == "shadow_agreement").unwrap();
    assert_eq!(agreement.candidate, Some(1.0), "the same model agrees on every phone: {agreement:?}");
    // The inspectors' labels judged the shadow on the phones they looked at, beside the primary.
    let accuracy = shadow_checks.iter().find(|c| c.name == "accuracy").expect("an accuracy check in shadow");
    let (candidate, primary) = (accuracy.candidate.unwrap(), accuracy.primary.unwrap());
    assert!(accuracy.passed && (candidate - primary).abs() < 0.05 && candidate > 0.7, "{accuracy:?}");
    // Version 2 now answers every station.
    let answered_by = |station: String| {
        let mut client = inspect.clone();
        let image = images[0].1.clone();
        async move {
            let request = InspectRequest { image, station_id: station, ..Default::default() };
            client.inspect(request).await.unwrap().into_inner().model_version
        }
    };
    let mut waited = 0;
    while answered_by("line-7".into()).await != "2" {
        waited += 1;
        assert!(waited < 50, "the server never followed the promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for station in 0..8 {
        assert_eq!(answered_by(format!("line-{station}")).await, "2");
    }

    // Version 3: its scores shift; rolled back in the shadow step, the line keeps version 2.
    let by_ben = Change { actor: "ben", reason: "new normalisation", at: chrono::Utc::now() };
    rollout::start(&store, MODEL, "3", &plan(), &by_ben).await.unwrap();
    let (done, _) = drive("3").await;
    assert_eq!((done.state.as_str(), done.step), ("rolled_back", 0), "{}", done.history);
    let failed = rollout::failed_checks(&done, 0);
    assert!(failed.contains(&"score_ks".to_string()), "{failed:?}");
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.primary_version.as_str()), ("single", "2"));
    let audit = store.audit_events(100).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == rollout::CONTROLLER && e.reason.contains("score_ks")));
    println!("{phones} phones inspected during the first rollout");
    monitor.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
