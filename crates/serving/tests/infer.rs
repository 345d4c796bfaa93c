//! The serving core's router seam on the shipped model: a router that answers from one
//! version and shadows another runs the copy in the shadow lane, hands its result to the
//! observer and never to the caller, and a full lane skips the copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigil_inference::InferenceError;
use vigil_inference::image::ImageLimits;
use vigil_inference::repository::{ModelRepository, RepositoryOptions};
use vigil_inference::tensor::Tensor;
use vigil_proto::vigil::v1::{InspectRequest, Variant};
use vigil_serving::infer::{Route, Router, ShadowObserver, ShadowRun};
use vigil_serving::{Deployment, DeploymentRouter, Infer, InspectionService, Mode, RecordEmitter, ShadowLane};

const MODEL: &str = "scratch-detector";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The shipped model as versions 1 and 2 (same weights), both loaded.
fn two_versions() -> (tempfile::TempDir, Arc<ModelRepository>) {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_root().join("models").join(MODEL).join("1");
    for version in [1, 2] {
        let dst = dir.path().join(MODEL).join(version.to_string());
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(src.join("model.onnx"), dst.join("model.onnx")).unwrap();
        let toml = std::fs::read_to_string(src.join("model.toml"))
            .unwrap()
            .replace("version = 1", &format!("version = {version}"));
        std::fs::write(dst.join("model.toml"), toml).unwrap();
    }
    vigil_inference::runtime::environment(None).unwrap();
    let options = RepositoryOptions { load_all_versions: true, ..Default::default() };
    let repository = Arc::new(ModelRepository::load(dir.path(), &options).unwrap());
    (dir, repository)
}

/// Answers from version 1 as a canary of deployment "d-1", shadowing version 2.
struct ShadowRouter(Arc<ModelRepository>);

impl Router for ShadowRouter {
    fn route(&self, model: &str, _version: &str, _key: &str) -> Result<Route, InferenceError> {
        Ok(Route {
            primary: self.0.get(model, "1")?,
            shadows: vec![self.0.get(model, "2")?],
            variant: Variant::Canary,
            deployment: "d-1".into(),
            automation: Default::default(),
            capture_rate: 0.0,
        })
    }
}

fn image() -> Vec<u8> {
    let dir = repo_root().join("samples/normal");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    std::fs::read(&files[0]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_gets_a_copy_and_the_caller_gets_the_primary() {
    let (_dir, repository) = two_versions();
    let (sender, mut runs) = tokio::sync::mpsc::unbounded_channel::<ShadowRun>();
    let lane = Arc::new(ShadowLane::new(1));
    let infer = Infer::new(Arc::new(ShadowRouter(repository.clone()))).with_shadow_lane(lane.clone());
    let route = infer.route(MODEL, "", "").unwrap();
    let input = Tensor::from_f32(vec![1, 1, 128, 128], &vec![0.25; 128 * 128]);
    let observer: ShadowObserver = Arc::new(move |run| drop(sender.send(run)));
    let started = std::time::Instant::now();
    let answer = infer.run(&route, vec![input], Some(observer)).await;
    infer.account(&route, started, &answer);
    let answer = answer.unwrap();
    assert_eq!(answer.model.config.version, 1, "the primary answers");
    let run = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await.unwrap().unwrap();
    assert_eq!((run.model.config.version, run.deployment.as_str()), (2, "d-1"));
    let shadow_score = run.result.unwrap().outputs[0].to_f32().unwrap()[0];
    let primary_score = answer.output.outputs[0].to_f32().unwrap()[0];
    assert_eq!(shadow_score, primary_score, "the same weights saw the same input");
    assert_eq!((lane.started(), lane.skipped()), (1, 0));
    // Statistics: the primary counts the request as a success; the shadow's version only ran it.
    let stats = |v: &str| repository.get(MODEL, v).unwrap().stats.success.get().0;
    assert_eq!((stats("1"), stats("2")), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shadow_lane_skips_the_copy_not_the_request() {
    let (_dir, repository) = two_versions();
    let lane = Arc::new(ShadowLane::new(0));
    let infer = Infer::new(Arc::new(ShadowRouter(repository.clone()))).with_shadow_lane(lane.clone());
    let service = InspectionService::new(repository, MODEL, ImageLimits::default()).with_infer(infer);
    for _ in 0..3 {
        let answer = service.inspect_one(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
        assert_eq!(answer.model_version, "1");
    }
    assert_eq!((lane.started(), lane.skipped()), (0, 3));
}

/// A shadow that prepares images its own way prepares them in the same memory budget as the
/// requests: with room, its copy runs on its own tensor; without room it is skipped (never
/// waiting, never recorded), and the primary answers either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_preparing_its_own_image_takes_room_in_the_preparing_budget_or_is_skipped() {
    use prost::Message as _;
    use vigil_proto::vigil::v1::PredictionRecord;
    let (dir, _) = two_versions();
    // Version 2 normalises differently: its tensor, and so its score, differ from the primary's.
    let toml = dir.path().join(MODEL).join("2/model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    assert_eq!(text.matches("mean = 0.5").count(), 1);
    std::fs::write(&toml, text.replace("mean = 0.5", "mean = 0.3")).unwrap();
    let options = RepositoryOptions { load_all_versions: true, ..Default::default() };
    let repository = Arc::new(ModelRepository::load(dir.path(), &options).unwrap());
    let image = image();
    let needed = vigil_inference::image::preparing_bytes(&image, &ImageLimits::default()).unwrap();
    assert!(
        vigil_inference::image::is_quick_to_prepare(
            &image,
            repository.get(MODEL, "1").unwrap().config.preprocess.as_ref().unwrap()
        ),
        "the primary prepares this image inline, outside the budget"
    );
    for (budget, runs) in [(512 << 20, true), (needed / 2, false)] {
        let limits = ImageLimits { max_preparing_bytes_in_flight: budget, ..Default::default() };
        let lane = Arc::new(ShadowLane::new(4));
        let infer = Infer::new(Arc::new(ShadowRouter(repository.clone()))).with_shadow_lane(lane.clone());
        let (sink, mut bus) = vigil_logbus::in_process::channel(100);
        let (emitter, _forward) = vigil_logbus::Emitter::start(sink, 100, 10);
        let service = InspectionService::new(repository.clone(), MODEL, limits)
            .with_infer(infer)
            .with_records(RecordEmitter::new(emitter.clone(), "edge-1"));
        let answer = service.inspect_one(InspectRequest { image: image.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(answer.model_version, "1", "the primary answers");
        assert!(lane.settle(Duration::from_secs(30)).await, "the copy ended");
        assert!(emitter.drain(Duration::from_secs(10)).await);
        let mut records = Vec::new();
        while let Ok(envelope) = bus.try_recv() {
            records.push(PredictionRecord::decode(envelope.payload.as_slice()).unwrap());
        }
        let shadows: Vec<_> = records.iter().filter(|r| r.variant == Variant::Shadow as i32).collect();
        if runs {
            assert_eq!((lane.started(), lane.skipped(), lane.failed()), (1, 0, 0));
            assert_eq!(shadows.len(), 1);
            let primary = records.iter().find(|r| r.variant != Variant::Shadow as i32).unwrap();
            let scores = |r: &PredictionRecord| r.output.as_ref().unwrap().scores.clone();
            assert_ne!(scores(shadows[0]), scores(primary), "the shadow ran on the image as it prepares it");
        } else {
            assert_eq!((lane.started(), lane.skipped()), (0, 1), "no room to prepare: skipped");
            assert!(shadows.is_empty(), "a skipped copy is not recorded");
        }
    }
}

fn deployment(primary: &str, candidate: Option<&str>, mode: Mode) -> Deployment {
    Deployment {
        id: "d-7".into(),
        model: MODEL.into(),
        primary: primary.into(),
        candidate: candidate.map(Into::into),
        mode,
        automation: Default::default(),
        capture_rate: 0.0,
        artifacts: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_of_stations_and_keeps_each_one() {
    let (_dir, repository) = two_versions();
    let router = Arc::new(DeploymentRouter::new(repository.clone()));
    router.set([deployment("1", Some("2"), Mode::Canary { share: 0.1 })]);
    let infer = Infer::new(router.clone());
    let version_of = |key: &str| {
        let route = infer.route(MODEL, "", key).unwrap();
        (route.primary.config.version, route.variant, route.deployment)
    };
    const STATIONS: usize = 10_000;
    let first: Vec<u64> = (0..STATIONS).map(|i| version_of(&format!("line-{i}")).0).collect();
    let on_candidate = first.iter().filter(|v| **v == 2).count() as f64;
    // Binomial: 1,000 expected, sigma = sqrt(10,000 x 0.1 x 0.9) = 30; allow 4 sigma.
    assert!((on_candidate - 1_000.0).abs() <= 120.0, "{on_candidate} of {STATIONS} stations on the canary");
    assert_eq!(version_of("line-3").2, "d-7", "the deployment id goes with the route");
    // Sticky: every station asks again and gets the same version; its variant says which.
    for (i, v) in first.iter().enumerate() {
        let (again, variant, _) = version_of(&format!("line-{i}"));
        assert_eq!(again, *v);
        assert_eq!(variant, if *v == 2 { Variant::Canary } else { Variant::Primary });
    }
    // Raising the share only moves stations towards the candidate.
    router.set([deployment("1", Some("2"), Mode::Canary { share: 0.5 })]);
    let raised: Vec<u64> = (0..STATIONS).map(|i| version_of(&format!("line-{i}")).0).collect();
    assert!(first.iter().zip(&raised).all(|(was, is)| *was == 1 || *is == 2), "no station left the canary");
    let on_candidate = raised.iter().filter(|v| **v == 2).count() as f64;
    assert!((on_candidate - 5_000.0).abs() <= 200.0, "{on_candidate}");
    // A request naming a version gets it, whatever the deployment.
    assert_eq!(infer.route(MODEL, "1", "line-0").unwrap().primary.config.version, 1);

    // End to end: the station's answer comes from its version.
    let service = InspectionService::new(repository, MODEL, ImageLimits::default()).with_infer(infer.clone());
    let station = (0..STATIONS).find(|i| raised[*i] == 2).map(|i| format!("line-{i}")).unwrap();
    let request = InspectRequest { image: image(), station_id: station, ..Default::default() };
    assert_eq!(service.inspect_one(request).await.unwrap().model_version, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mirrors_its_share_and_a_switch_rolls_back_at_once() {
    let (_dir, repository) = two_versions();
    let router = Arc::new(DeploymentRouter::new(repository.clone()));
    router.set([deployment("1", Some("2"), Mode::Shadow { share: 0.25 })]);
    let infer = Infer::new(router.clone());
    let routes: Vec<Route> = (0..400).map(|_| infer.route(MODEL, "", "").unwrap()).collect();
    assert!(routes.iter().all(|r| r.primary.config.version == 1 && r.variant == Variant::Primary));
    let mirrored: Vec<usize> = routes.iter().map(|r| r.shadows.len()).collect();
    assert_eq!(mirrored.iter().sum::<usize>(), 100, "exactly a quarter mirrored");
    assert!(mirrored.chunks(4).all(|c| c.iter().sum::<usize>() == 1), "spread evenly: {mirrored:?}");
    assert!(routes.iter().flat_map(|r| &r.shadows).all(|s| s.config.version == 2));

    // Blue-green: switch to 2 (1 kept as the candidate), then roll back.
    router.set([deployment("2", Some("1"), Mode::Single)]);
    assert!((0..50).all(|i| infer.route(MODEL, "", &format!("k{i}")).unwrap().primary.config.version == 2));
    router.set([deployment("1", Some("2"), Mode::Single)]);
    assert_eq!(infer.route(MODEL, "", "k1").unwrap().primary.config.version, 1);
    // A deployment naming a version that is not loaded is a clear error, not a silent fallback.
    router.set([deployment("9", None, Mode::Single)]);
    let error = infer.route(MODEL, "", "").err().expect("version 9 is not loaded");
    assert!(error.to_string().contains('9'), "{error}");
}
