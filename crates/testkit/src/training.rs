//! Models built by the project's training recipes (`training/`) with its Python (`VIGIL_PYTHON`,
//! set by `./dev`), for tests that need a model nobody ships as a file.

use std::path::Path;
use std::process::Command;

/// What the anti-spam training recipe writes with `--check`: posts and the answers onnxruntime
/// (the Python package) gives for them with the exported graph.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SpamCheck {
    pub texts: Vec<String>,
    pub label: Vec<String>,
    pub probabilities: Vec<[f32; 2]>,
}

/// What the screening recipe writes with `--check`: patients (features in the model's column
/// order, None where not measured), whether each should see a doctor, and onnxruntime's answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ScreeningCheck {
    pub features: Vec<String>,
    pub patients: Vec<Vec<Option<f32>>>,
    pub truth: Vec<String>,
    pub label: Vec<String>,
    pub probabilities: Vec<[f32; 2]>,
}

/// What the recommendation pipeline's recipe writes with `--check`, per phase (`normal`, and
/// `shifted`: the site's redesign lost the car tracking): users' inputs, whether each owns a
/// car, and onnxruntime's answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PipelineCheck {
    pub normal: PipelinePhase,
    pub shifted: PipelinePhase,
}

/// One phase of a [`PipelineCheck`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PipelinePhase {
    pub inputs: Vec<Vec<f32>>,
    pub owns_car: Vec<u8>,
    pub label: Vec<String>,
    pub probabilities: Vec<Vec<f32>>,
}

/// Trains one model of the recommendation pipeline (`python -m vigil_train.recommender`):
/// `profile` or `recommender`, into `repository/<model>/<version>`, with `users` check users per phase.
pub fn train_pipeline_model(repository: &Path, model: &str, version: u32, users: usize) -> PipelineCheck {
    let args = ["--model", model, "--check-users", &users.to_string()];
    serde_json::from_slice(&run_recipe("vigil_train.recommender", repository, model, version, &args)).unwrap()
}

/// Trains the anti-spam classifier (`python -m vigil_train.spam`) into `repository`'s
/// `spam-filter/<version>` from the generated posts of `seed`; `variant` is `good`,
/// `shuffled` or `all-spam`. Returns the check posts with onnxruntime's answers.
pub fn train_spam_filter(repository: &Path, version: u32, variant: &str, seed: u32) -> SpamCheck {
    let check = run_recipe(
        "vigil_train.spam",
        repository,
        "spam-filter",
        version,
        &["--variant", variant, "--seed", &seed.to_string()],
    );
    serde_json::from_slice(&check).unwrap()
}

/// Trains the symptom-screening classifier (`python -m vigil_train.screening`) into
/// `repository`'s `screening/<version>`. Returns `patients` check patients with onnxruntime's answers.
pub fn train_screening(repository: &Path, version: u32, patients: usize) -> ScreeningCheck {
    let check = run_recipe(
        "vigil_train.screening",
        repository,
        "screening",
        version,
        &["--check-patients", &patients.to_string()],
    );
    serde_json::from_slice(&check).unwrap()
}

/// Runs a recipe writing `repository/<model>/<version>` and its `--check` file; returns the latter.
fn run_recipe(module: &str, repository: &Path, model: &str, version: u32, args: &[&str]) -> Vec<u8> {
    let python = std::env::var("VIGIL_PYTHON").expect(
        "VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with scikit-learn and skl2onnx)",
    );
    let training = crate::speech::repo_root().join("training");
    // Beside the repository, so that the finished version moves in with one rename.
    let staging = tempfile::tempdir_in(repository.parent().unwrap_or(repository)).unwrap();
    let version_dir = staging.path().join(version.to_string());
    let check = staging.path().join("check.json");
    let out = Command::new(python)
        .args(["-m", module, "--version", &version.to_string()])
        .args(args)
        .arg("--out")
        .arg(&version_dir)
        .arg("--check")
        .arg(&check)
        .current_dir(&training)
        .env("PYTHONPATH", &training)
        .output()
        .unwrap();
    assert!(out.status.success(), "{module} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // The version appears whole, as a watched repository expects.
    let model_dir = repository.join(model);
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::rename(&version_dir, model_dir.join(version.to_string())).unwrap();
    std::fs::read(&check).unwrap()
}
