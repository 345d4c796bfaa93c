//! Errors of the inference layer, classified so that servers can map them to precise statuses.

use thiserror::Error;

/// Everything that can go wrong between a request and a model's output.
#[derive(Debug, Clone, Error)]
pub enum InferenceError {
    /// The caller sent something the model cannot take (wrong datatype, shape, size, bad image).
    #[error("{0}")]
    InvalidInput(String),
    /// No such model or version in the repository.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot serve now (shutting down, failed to load).
    #[error("{0}")]
    Unavailable(String),
    /// A bounded queue is full; the caller should back off and retry.
    #[error("{0}")]
    QueueFull(String),
    /// ONNX Runtime failed while running the model.
    #[error("model execution failed: {0}")]
    Runtime(String),
    /// A model repository or configuration problem found at start-up.
    #[error("{0}")]
    Config(String),
}

impl InferenceError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }
}

impl From<ort::Error> for InferenceError {
    fn from(error: ort::Error) -> Self {
        Self::Runtime(error.to_string())
    }
}
