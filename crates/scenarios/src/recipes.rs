//! The project's training recipes (`training/`, Python with scikit-learn and skl2onnx), run to
//! build the scenarios' models: each writes a model version directory and, with `--check`, inputs
//! with onnxruntime's answers to them, which the scenarios compare with the servers'.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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

/// Generated patients (`python -m vigil_data.patients`): features in the model's column order
/// (None where not measured) and whether each should see a doctor.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Patients {
    pub features: Vec<String>,
    pub patients: Vec<Vec<Option<f32>>>,
    pub truth: Vec<String>,
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

/// Where the recipes and their Python are.
#[derive(Debug, Clone)]
pub struct Recipes {
    python: PathBuf,
    training: PathBuf,
}

impl Recipes {
    /// The Python of `VIGIL_PYTHON`, else the one `./dev setup` prepares
    /// (`~/.cache/vigil/venv`); the recipes of `VIGIL_TRAINING_DIR`, else `training/` here,
    /// else the source tree's.
    pub fn locate() -> Result<Self> {
        let python = match std::env::var_os("VIGIL_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => {
                let venv = std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/vigil/venv/bin/python"))
                    .filter(|p| p.is_file());
                venv.context("no Python with scikit-learn found: run ./dev setup, or set VIGIL_PYTHON")?
            }
        };
        let candidates = [
            std::env::var_os("VIGIL_TRAINING_DIR").map(PathBuf::from),
            Some(PathBuf::from("training")),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training")),
        ];
        let training = candidates.into_iter().flatten().find(|dir| dir.join("vigil_train").is_dir()).context(
            "cannot find the training recipes (training/): run this from a Vigil checkout, or set VIGIL_TRAINING_DIR",
        )?;
        Ok(Self { python, training: training.canonicalize()? })
    }

    /// The Python the recipes run with.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The recipes' directory (`training/`).
    pub fn training(&self) -> &Path {
        &self.training
    }

    /// `n` patients of `population` (`normal` or `shifted`) from `seed`.
    pub fn patients(&self, n: usize, seed: u64, population: &str) -> Result<Patients> {
        let out = Command::new(&self.python)
            .args(["-m", "vigil_data.patients", "--n", &n.to_string(), "--seed", &seed.to_string()])
            .args(["--population", population])
            .current_dir(&self.training)
            .env("PYTHONPATH", &self.training)
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !out.status.success() {
            bail!("vigil_data.patients failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `n` line-camera images of `conditions` (`normal` or `drifted`) from `seed`, written as
    /// PNG files into `dir` (`python -m vigil_data.images`): (the truth, `ok` or `defect`, PNG).
    pub fn images(&self, n: usize, seed: u64, conditions: &str, dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
        let out = Command::new(&self.python)
            .args(["-m", "vigil_data.images", "--n", &n.to_string(), "--seed", &seed.to_string()])
            .args(["--conditions", conditions, "--out"])
            .arg(dir)
            .current_dir(&self.training)
            .env("PYTHONPATH", &self.training)
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !out.status.success() {
            bail!("vigil_data.images failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        read_phones(dir)
    }

    /// The anti-spam classifier (`python -m vigil_train.spam`) into
    /// `repository/spam-filter/<version>`, from the generated posts of `seed`; `variant` is
    /// `good`, `shuffled` or `all-spam`. Returns the check posts with onnxruntime's answers.
    pub fn spam_filter(&self, repository: &Path, version: u32, variant: &str, seed: u32) -> Result<SpamCheck> {
        let args = ["--variant", variant, "--seed", &seed.to_string()];
        Ok(serde_json::from_slice(&self.run("vigil_train.spam", repository, "spam-filter", version, &args)?)?)
    }

    /// The symptom-screening classifier (`python -m vigil_train.screening`) into
    /// `repository/screening/<version>`, with `patients` check patients.
    pub fn screening(&self, repository: &Path, version: u32, patients: usize) -> Result<ScreeningCheck> {
        let args = ["--check-patients", &patients.to_string()];
        Ok(serde_json::from_slice(&self.run("vigil_train.screening", repository, "screening", version, &args)?)?)
    }

    /// One model of the recommendation pipeline (`python -m vigil_train.recommender`):
    /// `profile` or `recommender`, into `repository/<model>/<version>`, `users` check users per phase.
    pub fn pipeline_model(&self, repository: &Path, model: &str, version: u32, users: usize) -> Result<PipelineCheck> {
        let args = ["--model", model, "--check-users", &users.to_string()];
        Ok(serde_json::from_slice(&self.run("vigil_train.recommender", repository, model, version, &args)?)?)
    }

    /// Runs a recipe writing `repository/<model>/<version>` and its `--check` file; returns the latter.
    fn run(&self, module: &str, repository: &Path, model: &str, version: u32, args: &[&str]) -> Result<Vec<u8>> {
        std::fs::create_dir_all(repository)?;
        // Beside the repository, so that the finished version moves in with one rename.
        let staging = tempfile::tempdir_in(repository.parent().unwrap_or(repository))?;
        let version_dir = staging.path().join(version.to_string());
        let check = staging.path().join("check.json");
        let out = Command::new(&self.python)
            .args(["-m", module, "--version", &version.to_string()])
            .args(args)
            .arg("--out")
            .arg(&version_dir)
            .arg("--check")
            .arg(&check)
            .current_dir(&self.training)
            .env("PYTHONPATH", &self.training)
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !out.status.success() {
            bail!(
                "{module} failed (needs scikit-learn and skl2onnx: ./dev setup):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The version appears whole, as a watched repository expects.
        let model_dir = repository.join(model);
        std::fs::create_dir_all(&model_dir)?;
        std::fs::rename(&version_dir, model_dir.join(version.to_string()))?;
        Ok(std::fs::read(&check)?)
    }
}

/// A file or directory of the Vigil checkout (`models/`, `samples/`): here, else the source
/// tree's.
pub fn project_path(relative: &str) -> Result<PathBuf> {
    let here = PathBuf::from(relative);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative);
    [here, source]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("cannot find {relative}: run this from a Vigil checkout"))
}

/// The PNG files of `dir` in name order, each with its truth from its name (`..._ok.png`: `ok`,
/// else `defect`), as the generator and the shipped samples name them.
pub fn read_phones(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let truth = if p.to_string_lossy().ends_with("_ok.png") { "ok" } else { "defect" };
            Ok((truth.to_string(), std::fs::read(&p)?))
        })
        .collect()
}
