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

/// Trains the anti-spam classifier (`python -m vigil_train.spam`) into `repository`'s
/// `spam-filter/<version>` from the generated posts of `seed`; `variant` is `good`,
/// `shuffled` or `all-spam`. Returns the check posts with onnxruntime's answers.
pub fn train_spam_filter(repository: &Path, version: u32, variant: &str, seed: u32) -> SpamCheck {
    let python = std::env::var("VIGIL_PYTHON").expect(
        "VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with scikit-learn and skl2onnx)",
    );
    let training = crate::speech::repo_root().join("training");
    // Beside the repository, so that the finished version moves in with one rename.
    let staging = tempfile::tempdir_in(repository.parent().unwrap_or(repository)).unwrap();
    let version_dir = staging.path().join(version.to_string());
    let check = staging.path().join("check.json");
    let out = Command::new(python)
        .args(["-m", "vigil_train.spam", "--variant", variant, "--version", &version.to_string()])
        .args(["--seed", &seed.to_string()])
        .arg("--out")
        .arg(&version_dir)
        .arg("--check")
        .arg(&check)
        .current_dir(&training)
        .env("PYTHONPATH", &training)
        .output()
        .unwrap();
    assert!(out.status.success(), "training the spam filter failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let check: SpamCheck = serde_json::from_slice(&std::fs::read(&check).unwrap()).unwrap();
    // The version appears whole, as a watched repository expects.
    let model = repository.join("spam-filter");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::rename(&version_dir, model.join(version.to_string())).unwrap();
    check
}
