//! The live model repository on a running edge server: versions dropped into the directory
//! are picked up under load without a failed request, a corrupt version never replaces a
//! working one, and the OIP repository calls load and unload.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tonic::Code;
use vigil_proto::inference::{RepositoryIndexRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest};
use vigil_proto::vigil::v1::InspectRequest;

/// A private copy of the shipped repository (the newest version only), and that version.
fn repository_copy() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    let version: u64 = src.file_name().unwrap().to_str().unwrap().parse().unwrap();
    copy_version(&src, &dir.path().join(MODEL), version, None);
    (dir, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_dropped_in_under_load_take_over_without_a_failed_request() {
    let (repo, v1) = repository_copy();
    let model_dir = repo.path().join(MODEL);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.models.watch_interval_ms = 100;
    let server = start(config).await;
    let (inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;

    // Two closed-loop clients record the version of every answer, and every failure, each in
    // its own list: one client's requests run one after the other, so its answers are in the
    // order the server looked the model up.
    let stop = Arc::new(AtomicBool::new(false));
    type Answers = Arc<parking_lot::Mutex<Vec<Result<u64, String>>>>;
    let answers: Vec<Answers> = (0..2).map(|_| Answers::default()).collect();
    let clients: Vec<_> = answers
        .iter()
        .map(|mine| {
            let (mut c, image, stop, mine) = (inspect.clone(), image.clone(), stop.clone(), mine.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.inspect(InspectRequest { image: image.clone(), ..Default::default() }).await;
                    let r = r.map(|r| r.into_inner().model_version.parse().unwrap()).map_err(|s| format!("{s:?}"));
                    mine.lock().push(r);
                }
            })
        })
        .collect();
    let latest = |answers: &[Answers]| -> Vec<Option<u64>> {
        answers.iter().map(|a| a.lock().last().and_then(|r| r.as_ref().ok().copied())).collect()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new version dropped in takes over; then the old one is removed from disk.
    let v2 = v1 + 1;
    copy_version(&model_dir.join(v1.to_string()), &model_dir, v2, None);
    let mut switched = false;
    for _ in 0..2_000 {
        if latest(&answers).iter().all(|v| *v == Some(v2)) {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(switched, "version {v2} never took over: {:?}", latest(&answers));
    std::fs::remove_dir_all(model_dir.join(v1.to_string())).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A corrupt version dropped in never serves: the working one keeps answering.
    let v3 = v2 + 1;
    copy_version(&model_dir.join(v2.to_string()), &model_dir, v3, Some(b"this is not an ONNX model"));
    let mut index = Vec::new();
    for _ in 0..500 {
        index = oip.repository_index(RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
        if index.iter().any(|m| m.version == v3.to_string() && m.reason.contains("load failed")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v3_row = index.iter().find(|m| m.version == v3.to_string()).expect("version 3 in the index");
    assert_eq!(v3_row.state, "UNAVAILABLE", "{index:?}");
    assert!(v3_row.reason.contains("load failed") && v3_row.reason.contains("cannot load model"), "{index:?}");
    let v2_row = index.iter().find(|m| m.version == v2.to_string()).expect("version 2 in the index");
    assert_eq!(v2_row.state, "READY", "{index:?}");
    let before_corrupt: Vec<usize> = answers.iter().map(|a| a.lock().len()).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for (client, answers) in answers.iter().enumerate() {
        let answers = answers.lock().clone();
        let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(
            failures.is_empty(),
            "client {client}: {} of {} requests failed: {failures:?}",
            failures.len(),
            answers.len()
        );
        let versions: Vec<u64> = answers.iter().map(|a| *a.as_ref().unwrap()).collect();
        // Answers switch once, from the old version to the new, and never back.
        let first_v2 = versions.iter().position(|&v| v == v2).expect("the new version answered");
        assert!(first_v2 > 0 && versions[..first_v2].iter().all(|&v| v == v1), "client {client}: {versions:?}");
        assert!(versions[first_v2..].iter().all(|&v| v == v2), "client {client}: an old or corrupt version answered");
        assert!(versions.len() > before_corrupt[client], "client {client}: requests kept being served");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_api_unloads_and_loads_models() {
    let (repo, v1) = repository_copy();
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    let server = start(config).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), ..Default::default() };

    let unload = RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_unload(unload.clone()).await.unwrap();
    let gone = inspect.inspect(request()).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "as Triton answers: {gone:?}");
    assert!(gone.message().contains("has no available versions (unloaded)"), "{gone:?}");
    let index = oip.repository_index(RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    assert_eq!(index.len(), 1);
    assert_eq!((index[0].state.as_str(), index[0].reason.as_str()), ("UNAVAILABLE", "unloaded"));
    let ready_only = RepositoryIndexRequest { ready: true, ..Default::default() };
    assert!(oip.repository_index(ready_only.clone()).await.unwrap().into_inner().models.is_empty());
    assert_eq!(oip.repository_model_unload(unload).await.unwrap_err().code(), Code::NotFound);

    // A path instead of a name never reaches outside the repository.
    let outside = repo.path().with_extension("outside");
    copy_version(&model_dir(), &outside.join(MODEL), v1, None);
    for path in [
        format!("../{}/{MODEL}", outside.file_name().unwrap().to_str().unwrap()),
        outside.join(MODEL).display().to_string(),
    ] {
        let request = RepositoryModelLoadRequest { model_name: path.clone(), ..Default::default() };
        let refused = oip.repository_model_load(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{path}: {refused:?}");
        assert!(refused.message().contains("is not a model's name"), "{refused:?}");
    }
    std::fs::remove_dir_all(&outside).unwrap();
    let load = RepositoryModelLoadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_load(load.clone()).await.unwrap();
    let answer = inspect.inspect(request()).await.unwrap().into_inner();
    assert_eq!(answer.model_version, v1.to_string());
    // Warm-up requests are not counted: the statistics show the one real request.
    let stats = oip
        .model_statistics(vigil_proto::inference::ModelStatisticsRequest { name: MODEL.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.model_stats[0].inference_count, 1);
    let ready = oip.repository_index(ready_only).await.unwrap().into_inner().models;
    assert_eq!((ready.len(), ready[0].state.as_str()), (1, "READY"));

    let unknown = RepositoryModelLoadRequest { model_name: "no-such-model".into(), ..Default::default() };
    assert_eq!(oip.repository_model_load(unknown).await.unwrap_err().code(), Code::NotFound);
    let other = RepositoryModelLoadRequest { repository_name: "elsewhere".into(), ..load.clone() };
    assert_eq!(oip.repository_model_load(other).await.unwrap_err().code(), Code::NotFound);
    let mut with_config = load;
    with_config.parameters.insert("config".into(), Default::default());
    let refused = oip.repository_model_load(with_config).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_waits_for_the_requests_in_flight() {
    // The slow model keeps a request running while the unload is asked for.
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    let server = start(config).await;
    let (inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let mut c = inspect.clone();
    // A whole call first, for the time a run takes on this machine now.
    let started = std::time::Instant::now();
    c.inspect(InspectRequest { image: image.clone(), ..Default::default() }).await.unwrap();
    let run = started.elapsed();
    let running = tokio::spawn(async move { c.inspect(InspectRequest { image, ..Default::default() }).await });
    until_metric(server.metrics_addr.unwrap(), "vigil_running_batches", &[("model", MODEL)], 1.0).await;
    let unload = RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_unload(unload).await.unwrap();
    // The run takes several hundred milliseconds; had the unload not waited for it, the answer
    // would still be about that far away.
    let answer = tokio::time::timeout(run / 2, running)
        .await
        .expect("the unload answered before the request it waited for")
        .unwrap()
        .expect("the request in flight finished on its version");
    assert!((0.0..=1.0).contains(&answer.into_inner().defect_probability));
    server.shutdown().await.unwrap();
}

/// A version whose `model.toml` lists a file it lacks (`required_files`) is refused at load and
/// named in the index with the missing file, the version before it serving meanwhile; once the
/// file is there the watch loads it and it takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_missing_a_required_file_is_refused_until_the_file_comes() {
    let (repo, v1, server) = watched_copy().await;
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), ..Default::default() };
    let model_dir = repo.path().join(MODEL);
    let v2 = v1 + 1;
    copy_version(&model_dir.join(v1.to_string()), &model_dir, v2, None);
    let toml_path = model_dir.join(v2.to_string()).join("model.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let staged = model_dir.join(".model.toml.new");
    std::fs::write(&staged, toml.replacen("\n[", "\nrequired_files = [\"labels.txt\"]\n\n[", 1)).unwrap();
    std::fs::rename(&staged, &toml_path).unwrap();

    let v2_row = async |oip: &mut vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        tonic::transport::Channel,
    >| {
        let index = oip.repository_index(RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
        index.into_iter().find(|m| m.version == v2.to_string())
    };
    let mut refused = None;
    for _ in 0..500 {
        if let Some(row) = v2_row(&mut oip).await.filter(|row| row.reason.contains("load failed")) {
            refused = Some(row);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("the version without its required file shows as refused");
    assert_eq!(refused.state, "UNAVAILABLE", "{refused:?}");
    assert!(
        refused.reason.contains("labels.txt (required_files in its model.toml)"),
        "the reason names the missing file: {refused:?}"
    );
    // Several looks later the version before it still answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = inspect.inspect(request()).await.unwrap().into_inner();
    assert_eq!(answer.model_version, v1.to_string());

    std::fs::write(model_dir.join(v2.to_string()).join("labels.txt"), "normal\nscratch\n").unwrap();
    for _ in 0..500 {
        if inspect.inspect(request()).await.unwrap().into_inner().model_version == v2.to_string() {
            assert_eq!(v2_row(&mut oip).await.unwrap().state, "READY");
            server.shutdown().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the version was never served once its required file came");
}

/// A server on a [`repository_copy`] whose directory it watches (every 50 ms).
async fn watched_copy() -> (tempfile::TempDir, u64, vigil_edge::RunningServer) {
    let (repo, version) = repository_copy();
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.models.watch_interval_ms = 50;
    let server = start(config).await;
    (repo, version, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_watch_on_an_unloaded_model_stays_unloaded_until_its_files_change() {
    let (repo, v1, server) = watched_copy().await;
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), ..Default::default() };
    let unload = RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_unload(unload).await.unwrap();
    // Ten polls later the directory, unchanged, has not brought it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(inspect.inspect(request()).await.unwrap_err().code(), Code::NotFound);
    // New files are a new deployment: the watch loads them.
    let version_dir = repo.path().join(MODEL).join(v1.to_string());
    let toml = std::fs::read_to_string(version_dir.join("model.toml")).unwrap();
    std::fs::write(version_dir.join("model.toml"), format!("{toml}\n# redeployed\n")).unwrap();
    for _ in 0..500 {
        if inspect.inspect(request()).await.is_ok() {
            server.shutdown().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the changed model was never loaded");
}

/// A model unloaded and loaded again through the API, whose files then change and change back
/// (a backup moved into place with its times kept), serves the files it has each time: the
/// files it had when unloaded are not held back once it serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_watch_files_that_change_back_are_served_again() {
    let (repo, v1, server) = watched_copy().await;
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), ..Default::default() };
    let original = inspect.inspect(request()).await.unwrap().into_inner().defect_probability;
    oip.repository_model_unload(RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() })
        .await
        .unwrap();
    oip.repository_model_load(RepositoryModelLoadRequest { model_name: MODEL.into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(inspect.inspect(request()).await.unwrap().into_inner().defect_probability, original);
    // Other preprocessing, so another score for the same image.
    let path = repo.path().join(MODEL).join(v1.to_string()).join("model.toml");
    let (text, modified) =
        (std::fs::read_to_string(&path).unwrap(), std::fs::metadata(&path).unwrap().modified().unwrap());
    assert_eq!(text.matches("std = 0.5 ").count(), 1, "{text}");
    std::fs::write(&path, text.replace("std = 0.5 ", "std = 0.25 ")).unwrap();
    let score_becomes = async |inspect: &mut vigil_proto::vigil::v1::inspection_client::InspectionClient<_>,
                               changed: bool| {
        for _ in 0..500 {
            let score = inspect.inspect(request()).await.unwrap().into_inner().defect_probability;
            if (score != original) == changed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(score_becomes(&mut inspect, true).await, "the changed files were never served");
    // Back as they were, times and all.
    std::fs::write(&path, &text).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
    assert!(score_becomes(&mut inspect, false).await, "the files changed back were never served");
    server.shutdown().await.unwrap();
}

/// The watch unloads a model whose directory is gone, and loads it again when the same files
/// come back (a directory swapped by renames); a repository it cannot list for a while (a
/// network mount that blinked) unloads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_watch_a_model_whose_directory_comes_back_serves_again() {
    let (repo, _, server) = watched_copy().await;
    let (mut inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let request = || InspectRequest { image: image.clone(), ..Default::default() };
    let serves = async |inspect: &mut vigil_proto::vigil::v1::inspection_client::InspectionClient<_>, want: bool| {
        for _ in 0..500 {
            if inspect.inspect(request()).await.is_ok() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(serves(&mut inspect, true).await, "serving at start");
    // The whole repository out of reach for several looks: the model keeps serving.
    let away = repo.path().with_extension("away");
    std::fs::rename(repo.path(), &away).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answered = inspect.inspect(request()).await;
    std::fs::rename(&away, repo.path()).unwrap();
    assert!(answered.is_ok(), "unloaded while the repository could not be listed: {answered:?}");
    let (model, aside) = (repo.path().join(MODEL), repo.path().join(format!(".{MODEL}.old")));
    std::fs::rename(&model, &aside).unwrap();
    assert!(serves(&mut inspect, false).await, "unloaded once its directory is gone");
    std::fs::rename(&aside, &model).unwrap();
    assert!(serves(&mut inspect, true).await, "the same files back: served again");
    server.shutdown().await.unwrap();
}

/// Loading a model takes longer than a unary call may (here 1 ms): the repository calls are
/// timed like streams, so a load that goes through is answered OK, not DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_and_unloading_are_not_cut_off_by_the_unary_deadline() {
    let (repo, _) = repository_copy();
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.request_timeout_ms = 1;
    let server = start(config).await;
    let (_, mut oip) = clients(&server).await;
    let started = std::time::Instant::now();
    let load = RepositoryModelLoadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_load(load).await.expect("a load of more than 1 ms is answered");
    assert!(started.elapsed() > std::time::Duration::from_millis(1), "the load took longer than a unary call may");
    let unload = RepositoryModelUnloadRequest { model_name: MODEL.into(), ..Default::default() };
    oip.repository_model_unload(unload).await.expect("an unload is answered");
    server.shutdown().await.unwrap();
}
