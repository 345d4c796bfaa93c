//! The edge server follows deployments from the registry's database: a switch and a canary
//! take effect within the poll interval, and a deployment naming an artifact other than the
//! registered one is refused while the model keeps what it served; a slow or failing shadow
//! never delays or fails the primary's answers and is logged beside them.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use prost::Message;
use vigil_logbus::Emitter;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::{
    InferParameter, ModelInferRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest, infer_parameter,
};
use vigil_proto::vigil::v1::{Decision, InspectRequest, PredictionRecord, RecordStatus, Variant};
use vigil_serving::RecordEmitter;
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
        policy: "partial".into(),
        accept_below: None,
        reject_at: None,
    }
}

/// A model repository with versions 1 to `versions` of the shipped model and a migrated
/// registry database beside it: their directory, the repository, the database's URL, the store.
async fn versions_and_registry(versions: u64) -> (tempfile::TempDir, std::path::PathBuf, String, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    for version in 1..=versions {
        copy_version(&model_dir(), &repo.join(MODEL), version, None);
    }
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (dir, repo, url, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_switches_and_canaries_and_refuses_a_foreign_artifact() {
    let (_dir, repo, url, store) = versions_and_registry(3).await;
    // Version 3 takes other batch sizes: what a client reads from ModelConfig tells them apart.
    let toml = repo.join(MODEL).join("3/model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    assert_eq!(text.matches("\nmax_batch_size = 64\n").count(), 1, "{text}");
    std::fs::write(&toml, text.replace("\nmax_batch_size = 64\n", "\nmax_batch_size = 48\n")).unwrap();
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    store.register_version(&registered("1", digest.clone()), "").await.unwrap();
    store.register_version(&registered("2", digest), "").await.unwrap();
    // Version 3 is registered with another artifact than the one this server has.
    store.register_version(&registered("3", "0".repeat(64)), "").await.unwrap();

    let mut config = config();
    config.model_repository = repo.clone();
    // The model's policy loads the newest version only: the versions deployments name load too.
    config.deployments.database_url = url.clone();
    config.deployments.poll_interval_ms = 100;
    let server = start(config).await;
    let (inspect, oip) = clients(&server).await;
    // What a client sizing its requests reads: the version answering requests that name none.
    let described_max_batch = || {
        let mut oip = oip.clone();
        async move {
            let request = vigil_proto::inference::ModelConfigRequest { name: MODEL.into(), version: String::new() };
            oip.model_config(request).await.unwrap().into_inner().config.unwrap().max_batch_size
        }
    };
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
    assert_eq!(described_max_batch().await, 48);
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("d1", "1", None, "single", 0.0), &change).await.unwrap();
    until_served("1").await;
    assert_eq!(described_max_batch().await, 64, "the deployment's primary is described, not the newest version");
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
    // Version 4 on disk is registered but cannot load: its deployment is refused, and the model
    // keeps serving.
    let broken = b"not an ONNX model".to_vec();
    copy_version(&model_dir(), &repo.join(MODEL), 4, Some(&broken));
    store
        .register_version(&registered("4", sha256_file(&repo.join(MODEL).join("4/model.onnx")).unwrap()), "")
        .await
        .unwrap();
    store.set_deployment(&deployment("d5", "4", None, "single", 0.0), &change).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(version_for("line-1").await, "1", "a version that cannot load changes nothing");
    store.set_deployment(&deployment("d6", "2", None, "single", 0.0), &change).await.unwrap();
    until_served("2").await;
    // Version 1, loaded only for deployments and named by none now, goes out of service; the
    // policy's own (3) stays.
    let (_, mut oip) = clients(&server).await;
    let named = |version: &str| ModelInferRequest { model_version: version.into(), ..black_images_request("", 1) };
    let mut released = false;
    for _ in 0..50 {
        if oip.model_infer(named("1")).await.is_err_and(|s| s.code() == tonic::Code::NotFound) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "version 1 still serves after no deployment names it");
    oip.model_infer(named("3")).await.expect("the policy's version serves");
    // An operator unloads the model: following the deployments does not bring it back.
    let unload = RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_unload(unload).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let request = InspectRequest { image: image.clone(), station_id: "line-1".into(), ..Default::default() };
    let status = inspect.clone().inspect(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "ten polls later, still unloaded: {status:?}");
    assert!(status.message().contains("(unloaded)"), "{status:?}");
    server.shutdown().await.unwrap();
}

/// Records read so far from the in-process bus.
struct Logged {
    bus: tokio::sync::mpsc::Receiver<vigil_logbus::Envelope>,
    records: Vec<PredictionRecord>,
}

impl Logged {
    fn read(&mut self) -> &[PredictionRecord] {
        while let Ok(envelope) = self.bus.try_recv() {
            self.records.push(PredictionRecord::decode(envelope.payload.as_slice()).unwrap());
        }
        &self.records
    }
}

/// The count of `vigil_shadow_copies_total` with this outcome.
fn shadow_copies(metrics: std::net::SocketAddr, outcome: &str) -> f64 {
    sample(&scrape(metrics).1, "vigil_shadow_copies_total", &[("outcome", outcome)]).unwrap()
}

/// A deployed version's file replaced in place (the watch reloads it) is not served under the
/// deployment: the registered artifact is checked at every request, not once when the
/// deployment was applied; the registered file back, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_version_replaced_on_disk_is_not_served_until_its_registered_file_is_back() {
    let (_dir, repo, url, store) = versions_and_registry(2).await;
    let artifact = repo.join(MODEL).join("2/model.onnx");
    let original = std::fs::read(&artifact).unwrap();
    for version in ["1", "2"] {
        store.register_version(&registered(version, sha256_file(&artifact).unwrap()), "").await.unwrap();
    }
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("d1", "2", None, "single", 0.0), &change).await.unwrap();
    let mut config = config();
    config.model_repository = repo.clone();
    config.models.watch_interval_ms = 50;
    config.deployments.database_url = url.clone();
    config.deployments.poll_interval_ms = 100;
    let server = start(config).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), station_id: "line-1".into(), ..Default::default() };
    let ready = vigil_proto::inference::ModelReadyRequest { name: MODEL.into(), version: String::new() };
    let named = || ModelInferRequest { model_version: "2".into(), ..black_images_request("", 1) };
    let mut answers = Vec::new();
    for _ in 0..100 {
        answers.push(inspect.inspect(request()).await.map(|r| r.into_inner().model_version));
        if answers.last().is_some_and(|a| a.as_deref().is_ok_and(|v| v == "2")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answers.pop().unwrap().unwrap(), "2", "the deployment's version serves");
    // Another model in the same file's place (the same graph with a field ONNX does not read:
    // it loads, with another digest), moved in whole as a deployment tool would.
    let mut replaced = original.clone();
    replaced.extend_from_slice(&[0xa0, 0x06, 0x01]);
    let incoming = repo.join(MODEL).join("2/.model.onnx.incoming");
    std::fs::write(&incoming, &replaced).unwrap();
    std::fs::rename(&incoming, &artifact).unwrap();
    let refused = async |inspect: &mut vigil_proto::vigil::v1::inspection_client::InspectionClient<_>| {
        for _ in 0..200 {
            match inspect.inspect(request()).await {
                Err(status) => return Some(status),
                Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        None
    };
    let status = refused(&mut inspect).await.expect("the replaced file was served under the deployment");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("is not the registered artifact"), "{status:?}");
    // Refused for as long as the file is not the registered one, by name too; not ready.
    let again = inspect.inspect(request()).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable, "still refused: {again:?}");
    let by_name = oip.model_infer(named()).await.unwrap_err();
    assert_eq!(by_name.code(), tonic::Code::Unavailable, "named: {by_name:?}");
    assert!(!oip.model_ready(ready.clone()).await.unwrap().into_inner().ready);
    std::fs::write(&incoming, &original).unwrap();
    std::fs::rename(&incoming, &artifact).unwrap();
    let mut served = false;
    for _ in 0..200 {
        if inspect.inspect(request()).await.is_ok_and(|r| r.into_inner().model_version == "2") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(served, "the registered file back, the version serves again");
    assert!(oip.model_ready(ready).await.unwrap().into_inner().ready);
    oip.model_infer(named()).await.expect("served by name again");
    server.shutdown().await.unwrap();
}

/// Every started shadow copy ends in one record: waits for the copies still running, so that
/// the shadow lane is empty.
async fn settle(logged: &mut Logged, emitter: &Emitter, metrics: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(emitter.drain(Duration::from_secs(10)).await);
        let shadows = logged.read().iter().filter(|r| r.variant == Variant::Shadow as i32).count();
        let started = shadow_copies(metrics, "started");
        if shadows as f64 >= started {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{shadows} shadow records of {started} copies");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p50 and p99 of `latencies`, in milliseconds.
fn percentiles(latencies: &mut [Duration]) -> (f64, f64) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_shadow_never_delays_or_fails_the_primary_and_is_logged_with_its_trace_id() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    let fixture = |name: &str| std::fs::read(repo_root().join("tests/fixtures").join(name).join("model.onnx")).unwrap();
    copy_version(&model_dir(), &repo.join(MODEL), 1, None);
    copy_version(&model_dir(), &repo.join(MODEL), 2, Some(&fixture("slow-model")));
    copy_version(&model_dir(), &repo.join(MODEL), 3, Some(&fixture("broken-model")));
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    for version in ["1", "2", "3"] {
        let digest = sha256_file(&repo.join(MODEL).join(version).join("model.onnx")).unwrap();
        store.register_version(&registered(version, digest), "").await.unwrap();
    }
    let mut config = config();
    config.model_repository = repo;
    config.models.load_all_versions = true;
    config.deployments.database_url = url;
    config.deployments.poll_interval_ms = 100;
    config.deployments.shadow_concurrency = 2;
    let (sink, bus) = vigil_logbus::in_process::channel(100_000);
    let (emitter, _forwarder) = Emitter::start(sink, 100_000, 100);
    let server = vigil_edge::start_with(config, false, Some(RecordEmitter::new(emitter.clone(), "edge-1")))
        .await
        .expect("edge server starts");
    let metrics = server.metrics_addr.unwrap();
    let (inspect, _) = clients(&server).await;
    let mut logged = Logged { bus, records: Vec::new() };
    let image = samples("normal").remove(0).1;
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };

    let mut table = Vec::new();
    for (id, candidate) in [("plain", None), ("slow-shadow", Some("2")), ("failing-shadow", Some("3"))] {
        let mode = if candidate.is_some() { "shadow" } else { "single" };
        store.set_deployment(&deployment(id, "1", candidate, mode, 1.0), &change).await.unwrap();
        // Taken once a request's record names the deployment.
        loop {
            let request = InspectRequest { image: image.clone(), station_id: "probe".into(), ..Default::default() };
            // Before the first deployment the newest version, the broken one, answers.
            let _ = inspect.clone().inspect(request).await;
            assert!(emitter.drain(Duration::from_secs(10)).await);
            if logged.read().last().is_some_and(|r| r.deployment_id == id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let copies = |outcome: &str| shadow_copies(metrics, outcome);
        settle(&mut logged, &emitter, metrics).await;
        let (started_before, skipped_before) = (copies("started"), copies("skipped"));
        let seen_before = logged.read().len();

        let load: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (mut inspect, image) = (inspect.clone(), image.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for i in 0..PER_CLIENT {
                        let request = InspectRequest {
                            image: image.clone(),
                            station_id: format!("line-{c}"),
                            request_id: format!("{c}-{i}"),
                            ..Default::default()
                        };
                        let started = std::time::Instant::now();
                        let answer = inspect.inspect(request).await.map(|r| r.into_inner());
                        answers.push((started.elapsed(), answer));
                    }
                    answers
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in load {
            for (elapsed, answer) in task.await.unwrap() {
                let answer = answer.unwrap_or_else(|e| panic!("{id}: the primary's answer failed: {e}"));
                assert_eq!(answer.model_version, "1", "{id}: only the primary answers");
                latencies.push(elapsed);
            }
        }
        let requests = (CLIENTS * PER_CLIENT) as f64;
        let started = copies("started") - started_before;
        let skipped = copies("skipped") - skipped_before;
        settle(&mut logged, &emitter, metrics).await;
        let phase: Vec<&PredictionRecord> = logged.read()[seen_before..].iter().collect();
        let primaries: Vec<&PredictionRecord> =
            phase.iter().copied().filter(|r| r.variant == Variant::Primary as i32).collect();
        let shadows: Vec<&PredictionRecord> =
            phase.iter().copied().filter(|r| r.variant == Variant::Shadow as i32).collect();
        assert_eq!(primaries.len() as f64, requests, "{id}: one primary record per request");
        assert!(primaries.iter().all(|r| r.status == RecordStatus::Ok as i32 && r.model_version == "1"));
        match candidate {
            None => assert_eq!((started, skipped, shadows.len()), (0.0, 0.0, 0), "no shadow without a candidate"),
            Some(version) => {
                // Share 1.0: every request was copied, or skipped because the lane was full.
                assert_eq!(started + skipped, requests, "{id}");
                assert!(started >= 1.0, "{id}: no copy ran");
                assert_eq!(shadows.len() as f64, started, "{id}: one shadow record per copy");
                for shadow in &shadows {
                    let primary = primaries
                        .iter()
                        .find(|p| p.trace_id == shadow.trace_id)
                        .unwrap_or_else(|| panic!("{id}: no primary record with trace id {}", shadow.trace_id));
                    assert_ne!(shadow.prediction_id, primary.prediction_id);
                    assert_eq!((shadow.model_version.as_str(), shadow.deployment_id.as_str()), (version, id));
                    assert_eq!(
                        (shadow.station_id.as_str(), shadow.request_id.as_str()),
                        (primary.station_id.as_str(), primary.request_id.as_str())
                    );
                    if version == "3" {
                        assert_eq!(shadow.status, RecordStatus::Error as i32, "the NaN score is refused");
                        assert!(shadow.error.contains("non-finite"), "{}", shadow.error);
                    } else {
                        assert_eq!(shadow.status, RecordStatus::Ok as i32);
                    }
                }
            }
        }
        let (p50, p99) = percentiles(&mut latencies);
        table.push(format!("| {id} | {p50:.2} | {p99:.2} | {started} | {skipped} |"));
    }
    // A version asked for by name is outside the deployment's split: not mirrored, and its
    // record is no variant's (a rollout compares only the traffic the deployment routed).
    let seen_before = logged.read().len();
    let request = InspectRequest {
        image: image.clone(),
        model_version: "1".into(),
        station_id: "named".into(),
        ..Default::default()
    };
    assert_eq!(inspect.clone().inspect(request).await.unwrap().into_inner().model_version, "1");
    settle(&mut logged, &emitter, metrics).await;
    let named: Vec<&PredictionRecord> =
        logged.read()[seen_before..].iter().filter(|r| r.station_id == "named").collect();
    assert_eq!(named.len(), 1, "no shadow copy of a named request: {named:?}");
    assert_eq!((named[0].variant, named[0].deployment_id.as_str()), (Variant::Unspecified as i32, "failing-shadow"));
    println!("| primary's latency under | p50 ms | p99 ms | shadow copies run | skipped |");
    println!("|---|---:|---:|---:|---:|");
    for row in table {
        println!("{row}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_and_rollbacks_under_load_fail_no_request() {
    let (_dir, repo, url, store) = versions_and_registry(2).await;
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    for version in ["1", "2"] {
        store.register_version(&registered(version, digest.clone()), "").await.unwrap();
    }
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("blue", "1", None, "single", 0.0), &change).await.unwrap();
    let mut config = config();
    config.model_repository = repo;
    config.models.load_all_versions = true;
    config.deployments.database_url = url;
    config.deployments.poll_interval_ms = 50;
    let server = start(config).await;
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;

    // Four line clients send without pause while the deployment flips five times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let (mut inspect, image, stop) = (inspect.clone(), image.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut versions, mut failures) = (std::collections::BTreeMap::<String, u64>::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request =
                        InspectRequest { image: image.clone(), station_id: format!("line-{c}"), ..Default::default() };
                    match inspect.inspect(request).await {
                        Ok(answer) => *versions.entry(answer.into_inner().model_version).or_default() += 1,
                        Err(status) => failures.push(status),
                    }
                }
                (versions, failures)
            })
        })
        .collect();
    for (i, (id, primary, previous)) in
        [("green", "2", "1"), ("blue-2", "1", "2"), ("green-2", "2", "1"), ("blue-3", "1", "2"), ("green-3", "2", "1")]
            .into_iter()
            .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let row = deployment(id, primary, Some(previous), "single", 0.0);
        store.set_deployment(&row, &change).await.unwrap_or_else(|e| panic!("switch {i}: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = std::collections::BTreeMap::<String, u64>::new();
    for task in load {
        let (versions, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "requests failed during the switches: {failures:?}");
        for (version, n) in versions {
            *served.entry(version).or_default() += n;
        }
    }
    assert!(served.get("1").is_some_and(|n| *n > 0) && served.get("2").is_some_and(|n| *n > 0), "{served:?}");
    println!("answers by version across five switches: {served:?}");
    server.shutdown().await.unwrap();
}

/// One ModelInfer request per routing key, `streams` at a time; the version that answered each.
async fn versions_by_key(
    oip: &GrpcInferenceServiceClient<tonic::transport::Channel>,
    keys: std::ops::Range<usize>,
    streams: usize,
) -> Vec<(usize, String)> {
    futures::stream::iter(keys)
        .map(|key| {
            let mut oip = oip.clone();
            let request = ModelInferRequest {
                parameters: [(
                    vigil_serving::oip::ROUTING_KEY_PARAMETER.to_string(),
                    InferParameter {
                        parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(format!("station-{key}"))),
                    },
                )]
                .into(),
                ..black_images_request("", 1)
            };
            async move { (key, oip.model_infer(request).await.unwrap().into_inner().model_version) }
        })
        .buffer_unordered(streams)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_of_keys_keeps_each_key_on_one_version_and_only_grows() {
    let (_dir, repo, url, store) = versions_and_registry(2).await;
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    store.register_version(&registered("1", digest.clone()), "").await.unwrap();
    store.register_version(&registered("2", digest), "").await.unwrap();
    let change = Change { actor: "ben", reason: "canary", at: chrono::Utc::now() };
    store.set_deployment(&deployment("ten", "1", Some("2"), "canary", 0.1), &change).await.unwrap();

    let mut config = config();
    config.model_repository = repo.clone();
    config.models.load_all_versions = true;
    config.deployments.database_url = url.clone();
    config.deployments.poll_interval_ms = 100;
    let server = start(config).await;
    let (_, oip) = clients(&server).await;

    // 10% over 10,000 keys (one request each): the candidate's share within 4 binomial sigmas.
    const KEYS: usize = 10_000;
    let at_ten: std::collections::HashMap<usize, String> =
        versions_by_key(&oip, 0..KEYS, 16).await.into_iter().collect();
    let on_candidate =
        |served: &std::collections::HashMap<usize, String>| served.values().filter(|v| *v == "2").count();
    let sigma = (KEYS as f64 * 0.1 * 0.9).sqrt();
    let share = on_candidate(&at_ten);
    assert!((share as f64 - 1_000.0).abs() < 4.0 * sigma, "{share} of {KEYS} keys on the candidate at 10%");
    assert!(at_ten.values().all(|v| v == "1" || v == "2"), "only the deployment's versions answer");
    // Sticky: each of 2,000 keys asked again lands where it did.
    for (key, version) in versions_by_key(&oip, 0..2_000, 16).await {
        assert_eq!(version, at_ten[&key], "station-{key} moved at an unchanged share");
    }
    // Raised to 20%: about twice the keys, and no key goes back to the primary.
    store.set_deployment(&deployment("twenty", "1", Some("2"), "canary", 0.2), &change).await.unwrap();
    let sample_before = (0..500).filter(|k| at_ten[k] == "2").count();
    let mut applied = false;
    for _ in 0..100 {
        let sample = versions_by_key(&oip, 0..500, 16).await;
        if sample.iter().filter(|(_, v)| v == "2").count() > sample_before {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(applied, "the 20% canary never applied");
    let at_twenty: std::collections::HashMap<usize, String> =
        versions_by_key(&oip, 0..KEYS, 16).await.into_iter().collect();
    let sigma = (KEYS as f64 * 0.2 * 0.8).sqrt();
    let grown = on_candidate(&at_twenty);
    assert!((grown as f64 - 2_000.0).abs() < 4.0 * sigma, "{grown} of {KEYS} keys on the candidate at 20%");
    let back: Vec<usize> = at_ten.iter().filter(|(k, v)| *v == "2" && at_twenty[*k] == "1").map(|(k, _)| *k).collect();
    assert!(back.is_empty(), "raising the share moved keys back to the primary: {back:?}");

    // Who decides holds for a version asked for by name too: under `human_only` no item of any
    // version is decided by the model.
    let (mut inspect, _) = clients(&server).await;
    // An image the model decides by itself under the `partial` policy in force (outside the band).
    let mut image = None;
    for (_, sample) in samples("normal") {
        let request = InspectRequest { image: sample.clone(), ..Default::default() };
        if inspect.inspect(request).await.unwrap().into_inner().decision() != Decision::HumanReview {
            image = Some(sample);
            break;
        }
    }
    let image = image.expect("a normal sample the model accepts by itself");
    let human_only =
        DeploymentRow { policy: "human_only".into(), ..deployment("people", "1", Some("2"), "canary", 0.2) };
    store.set_deployment(&human_only, &change).await.unwrap();
    let ask =
        |version: &str| InspectRequest { image: image.clone(), model_version: version.into(), ..Default::default() };
    let mut decided = None;
    for _ in 0..100 {
        decided = Some(inspect.inspect(ask("")).await.unwrap().into_inner().decision());
        if decided == Some(Decision::HumanReview) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(decided, Some(Decision::HumanReview), "the human_only policy never applied");
    for version in ["1", "2"] {
        let answer = inspect.inspect(ask(version)).await.unwrap().into_inner();
        assert_eq!((answer.model_version.as_str(), answer.decision()), (version, Decision::HumanReview));
    }

    // The candidate's folder removed and the model reloaded without it: the keys the canary sent
    // there fall back to the primary instead of failing, and so does every other key.
    std::fs::remove_dir_all(repo.join(MODEL).join("2")).unwrap();
    let load = RepositoryModelLoadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.clone().repository_model_load(load).await.unwrap();
    let after = versions_by_key(&oip, 0..2_000, 16).await;
    let elsewhere: Vec<_> = after.iter().filter(|(_, v)| v != "1").collect();
    assert!(elsewhere.is_empty(), "with its candidate gone every key is the primary's: {elsewhere:?}");
    server.shutdown().await.unwrap();
}

/// An alarm's raised capture rate reaches the edge with its deployment: nothing is captured at
/// the server's own rate of 0, every image while the rate is raised to 1, nothing again once
/// the raise ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_capture_rate_reaches_the_edge_with_the_deployment() {
    use vigil_store::{CaptureBoost, CaptureBoostStore};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    copy_version(&model_dir(), &repo.join(MODEL), 1, None);
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let digest = sha256_file(&repo.join(MODEL).join("1/model.onnx")).unwrap();
    store.register_version(&registered("1", digest), "").await.unwrap();
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("d1", "1", None, "single", 0.0), &change).await.unwrap();
    let captures = dir.path().join("captures");
    let mut config = config();
    config.model_repository = repo.clone();
    config.deployments.database_url = url.clone();
    config.deployments.poll_interval_ms = 100;
    config.capture = toml::from_str(&format!(
        "enabled = true\nrate = 0.0\nstore = \"{}\"\nspool = \"{}\"\n",
        captures.display(),
        dir.path().join("spool").display()
    ))
    .unwrap();
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    // An image the model decides by itself (items going to a person are always captured).
    let mut image = Vec::new();
    for (_, candidate) in samples("normal") {
        let request = InspectRequest { image: candidate.clone(), station_id: "line-1".into(), ..Default::default() };
        if inspect.inspect(request).await.unwrap().into_inner().decision != Decision::HumanReview as i32 {
            image = candidate;
            break;
        }
    }
    let captured = || std::fs::read_dir(captures.join(MODEL).join("predictions")).map_or(0, |d| d.count());
    // Captures are stored in the background: counted once the count stood still for a second.
    let settled = async || {
        let (mut count, mut since) = (captured(), std::time::Instant::now());
        while since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if captured() != count {
                (count, since) = (captured(), std::time::Instant::now());
            }
        }
        count
    };
    let reviewed = settled().await;
    let mut send = async |n: usize| {
        for _ in 0..n {
            let request = InspectRequest { image: image.clone(), station_id: "line-1".into(), ..Default::default() };
            inspect.inspect(request).await.unwrap();
        }
    };
    send(20).await;
    assert_eq!(settled().await, reviewed, "the server's own rate is 0");

    let boost = CaptureBoost {
        model_name: MODEL.into(),
        rule: "brightness-drift".into(),
        rate: 1.0,
        since: chrono::Utc::now(),
    };
    store.raise_capture(&boost).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while captured() == reviewed {
        assert!(std::time::Instant::now() < deadline, "the raised rate never reached the edge");
        send(1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = captured();
    send(10).await;
    let until = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while captured() < n {
            assert!(std::time::Instant::now() < deadline, "{} of {n} captures stored", captured());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until(before + 10).await;

    assert!(store.end_capture_boost(MODEL, "brightness-drift").await.unwrap());
    // The end reaches the edge with its next poll: once five requests in a row went uncaptured
    // (at the raised rate every one was), twenty more must go uncaptured too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut before = settled().await;
    loop {
        send(5).await;
        let after = settled().await;
        if after == before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the boost's end never reached the edge");
        before = after;
    }
    send(20).await;
    assert_eq!(settled().await, before, "back to the server's own rate");
    server.shutdown().await.unwrap();
}

/// A server that stops lets the shadow copies its requests started finish and record before
/// its records are drained: a slow shadow's record is written by the time the stop returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_lets_running_shadow_copies_finish_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    let slow = std::fs::read(repo_root().join("tests/fixtures/slow-model/model.onnx")).unwrap();
    copy_version(&model_dir(), &repo.join(MODEL), 1, None);
    copy_version(&model_dir(), &repo.join(MODEL), 2, Some(&slow));
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    for version in ["1", "2"] {
        let digest = sha256_file(&repo.join(MODEL).join(version).join("model.onnx")).unwrap();
        store.register_version(&registered(version, digest), "").await.unwrap();
    }
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&deployment("slow-shadow", "1", Some("2"), "shadow", 1.0), &change).await.unwrap();
    let mut config = config();
    config.model_repository = repo;
    config.models.load_all_versions = true;
    config.deployments.database_url = url;
    config.deployments.poll_interval_ms = 100;
    let (sink, bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = Emitter::start(sink, 1_000, 100);
    let server = vigil_edge::start_with(config, false, Some(RecordEmitter::new(emitter.clone(), "edge-1")))
        .await
        .expect("edge server starts");
    let metrics = server.metrics_addr.unwrap();
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let mut logged = Logged { bus, records: Vec::new() };
    // Until a request is answered under the deployment (and so copied to the shadow).
    loop {
        let request = InspectRequest { image: image.clone(), station_id: "line-1".into(), ..Default::default() };
        let answer = inspect.clone().inspect(request).await.unwrap().into_inner();
        assert!(emitter.drain(Duration::from_secs(10)).await);
        if logged.read().iter().any(|r| r.deployment_id == "slow-shadow") {
            assert_eq!(answer.model_version, "1");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = shadow_copies(metrics, "started");
    assert!(started >= 1.0, "the request was copied to the shadow");
    // The slow shadow (several hundred milliseconds a run) is still running: stop now.
    let running = logged.read().iter().filter(|r| r.variant == Variant::Shadow as i32).count();
    assert!((running as f64) < started, "a copy still running when the server is told to stop");
    server.shutdown().await.unwrap();
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let shadows: Vec<_> = logged.read().iter().filter(|r| r.variant == Variant::Shadow as i32).cloned().collect();
    assert_eq!(shadows.len() as f64, started, "every copy started before the stop is recorded by its end");
    assert!(shadows.iter().all(|r| r.model_version == "2" && r.status == RecordStatus::Ok as i32));
}
