//! The serving core's router seam on the shipped model: a router that answers from one
//! version and shadows another runs the copy in the shadow lane, hands its result to the
//! observer and never to the caller, and a full lane skips the copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigil_inference::InferenceError;
use vigil_inference::image::ImageLimits;
use vigil_inference::repository::{ModelRepository, RepositoryOptions};
use vigil_proto::vigil::v1::{InspectRequest, Variant};
use vigil_serving::infer::{Route, Router, ShadowRun};
use vigil_serving::{Infer, InspectionService, ShadowLane};

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
    fn route(&self, model: &str, _version: &str) -> Result<Route, InferenceError> {
        Ok(Route {
            primary: self.0.get(model, "1")?,
            shadows: vec![self.0.get(model, "2")?],
            variant: Variant::Canary,
            deployment: "d-1".into(),
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
    let infer = Infer::new(Arc::new(ShadowRouter(repository.clone())))
        .with_shadows(lane.clone(), Arc::new(move |run| drop(sender.send(run))));
    let service = InspectionService::new(repository.clone(), MODEL, ImageLimits::default()).with_infer(infer);
    let answer = service.inspect_one(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
    assert_eq!(answer.model_version, "1", "the primary answers");
    let run = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await.unwrap().unwrap();
    assert_eq!(run.model.config.version, 2);
    assert_eq!((run.route_variant, run.deployment.as_str()), (Variant::Canary, "d-1"));
    let shadow_score = run.result.unwrap().outputs[0].to_f32().unwrap()[0];
    assert_eq!(shadow_score, answer.defect_probability, "the same weights saw the same input");
    assert_eq!((lane.started(), lane.skipped()), (1, 0));
    // Statistics: the primary counts the request as a success; the shadow's version only ran it.
    let stats = |v: &str| repository.get(MODEL, v).unwrap().stats.success.get().0;
    assert_eq!((stats("1"), stats("2")), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shadow_lane_skips_the_copy_not_the_request() {
    let (_dir, repository) = two_versions();
    let lane = Arc::new(ShadowLane::new(0));
    let infer = Infer::new(Arc::new(ShadowRouter(repository.clone())))
        .with_shadows(lane.clone(), Arc::new(|_| panic!("no shadow may run")));
    let service = InspectionService::new(repository, MODEL, ImageLimits::default()).with_infer(infer);
    for _ in 0..3 {
        let answer = service.inspect_one(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
        assert_eq!(answer.model_version, "1");
    }
    assert_eq!((lane.started(), lane.skipped()), (0, 3));
}
