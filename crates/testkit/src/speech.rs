//! Spoken test audio (espeak-ng through `vigil_speech::espeak`), the project's spoken queries
//! with the product each must find, and the fetched speech models.

use std::path::{Path, PathBuf};

use vigil_speech::audio::SAMPLES_PER_MS;

pub use vigil_speech::espeak::{ADULT, Voice};

/// `text` spoken by `voice` (see [`vigil_speech::espeak::say`]); panics saying what to install.
pub fn say(text: &str, voice: Voice) -> Vec<f32> {
    vigil_speech::espeak::say(text, voice).unwrap_or_else(|e| panic!("{e}"))
}

/// `ms` milliseconds of silence.
pub fn silence(ms: usize) -> Vec<f32> {
    vec![0.0; ms * SAMPLES_PER_MS]
}

/// One spoken query of `tests/speech/queries.txt` and the product it must find.
#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    pub product_id: String,
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The spoken queries.
pub fn queries() -> Vec<Query> {
    std::fs::read_to_string(repo_root().join("tests/speech/queries.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (text, id) = l.split_once('|').unwrap();
            Query { text: text.trim().into(), product_id: id.trim().into() }
        })
        .collect()
}

/// The models `./dev setup` fetched for the cloud server (`VIGIL_CLOUD_MODELS`, else
/// `.vigil/cloud-models`), with a clear failure when they are missing.
pub fn cloud_models() -> PathBuf {
    let dir = std::env::var("VIGIL_CLOUD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".vigil/cloud-models"));
    for model in ["silero-vad", "moonshine-tiny-en-encoder", "moonshine-tiny-en-decoder"] {
        assert!(
            dir.join(model).join("1/model.onnx").is_file(),
            "{} has no {model}: run ./dev setup (it fetches the models from PyPI)",
            dir.display()
        );
    }
    dir
}
