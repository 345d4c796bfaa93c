//! Speech for Vigil: the pieces the edge front-end (`vigil speak`) and the cloud's voice search
//! share. Models run through [`ModelRunner`] (a loaded repository version's batcher on both
//! sides), so statistics, limits and hot reload are the servers' own.
//!
//! - [`audio`]: PCM16 decoding, WAV files, level (RMS dBFS), loudness normalisation with
//!   clipping counted, padding, splitting long segments at quiet points, a pitch estimate.
//! - [`vad`]: Silero VAD over a stream of chunks (context and state carried) and the speech
//!   spans its probabilities give.
//! - [`asr`]: Moonshine's encoder and greedy decoder with its key/value cache, and its tokenizer.
//! - [`text`]: transcripts normalised for search, and word error rate.
//! - [`espeak`]: synthetic speech for tests, benchmarks and demos.

pub mod asr;
pub mod audio;
pub mod espeak;
pub mod text;
pub mod vad;

use std::future::Future;
use std::sync::Arc;

use vigil_inference::InferenceError;
use vigil_inference::repository::LoadedModel;
use vigil_inference::tensor::Tensor;

/// Errors of the speech pipeline, each saying what was wrong with the audio or the model.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    /// The audio cannot be used (odd byte count, wrong rate, too short, too long).
    #[error("{0}")]
    InvalidAudio(String),
    /// A model refused the request or failed.
    #[error(transparent)]
    Model(#[from] InferenceError),
    /// A model's files or outputs are not what the pipeline expects.
    #[error("{0}")]
    ModelContract(String),
}

/// A model output's values as f32: one of another type breaks the pipeline's contract with the
/// model (the model's fault, not the request's).
pub(crate) fn output_f32(output: &Tensor, what: &str) -> Result<Vec<f32>, SpeechError> {
    output.to_f32().map_err(|e| SpeechError::ModelContract(format!("{what}: {e}")))
}

/// Runs one request through a model: inputs in the model's declared input order, every
/// declared output back in order.
pub trait ModelRunner: Send + Sync {
    fn run(&self, inputs: Vec<Tensor>) -> impl Future<Output = Result<Vec<Tensor>, InferenceError>> + Send;
}

impl ModelRunner for Arc<LoadedModel> {
    async fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        Ok(self.batcher.infer(inputs).await?.outputs)
    }
}

/// The sample rate every model here takes.
pub const SAMPLE_RATE: u32 = 16_000;

impl<T: ModelRunner> ModelRunner for &T {
    fn run(&self, inputs: Vec<Tensor>) -> impl Future<Output = Result<Vec<Tensor>, InferenceError>> + Send {
        (**self).run(inputs)
    }
}

/// A model run in this process without a server: one session, one request at a time (the
/// device side of the speech pipeline, e.g. VAD in `vigil speak`).
pub struct LocalModel {
    session: std::sync::Mutex<vigil_inference::session::ModelSession>,
    name: String,
    version: u64,
}

impl LocalModel {
    /// Loads `dir/model.onnx` as `dir/model.toml` describes it, on `intra_op_threads` threads.
    pub fn load(dir: &std::path::Path, intra_op_threads: usize) -> Result<Self, SpeechError> {
        let config = vigil_inference::config::ModelConfig::load(&dir.join("model.toml"))?;
        let session = vigil_inference::session::ModelSession::load(&dir.join("model.onnx"), &config, intra_op_threads)?;
        Ok(Self { session: std::sync::Mutex::new(session), name: config.name, version: config.version })
    }

    /// The model's name in its `model.toml`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's version in its `model.toml`.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl ModelRunner for LocalModel {
    async fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        session.run(&inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_of_another_type_is_the_models_fault() {
        let ints =
            Tensor { datatype: vigil_inference::tensor::DataType::Int64, shape: vec![1], data: vec![0u8; 8].into() };
        assert!(
            matches!(output_f32(&ints, "VAD: output"), Err(SpeechError::ModelContract(m)) if m.starts_with("VAD: output"))
        );
        assert_eq!(output_f32(&Tensor::from_f32(vec![1], &[0.5]), "VAD: output").unwrap(), [0.5]);
    }
}
