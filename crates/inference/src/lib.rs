//! ONNX Runtime inference shared by Vigil's servers.
//!
//! The pieces, from the bottom up:
//! - [`runtime`]: finds and loads the ONNX Runtime shared library (with a clear error when missing).
//! - [`tensor`]: datatypes and raw little-endian tensors as the Open Inference Protocol carries them.
//! - [`config`]: a model's `model.toml` (inputs, outputs, preprocessing, thresholds, batching).
//! - [`session`]: one ONNX Runtime session running raw tensors.
//! - [`batcher`]: dynamic batching per model (max batch size, max queue delay, max queue depth),
//!   with queue time and compute time measured apart.
//! - [`repository`]: a Triton-like model repository (`<name>/<version>/model.onnx` + `model.toml`).
//! - [`image`] and [`features`]: image decoding, preprocessing and input features.
//! - [`stats`]: per-model counters in the shape of Triton's model statistics.

pub mod batcher;
pub mod config;
pub mod error;
pub mod features;
pub mod image;
pub mod repository;
pub mod runtime;
pub mod session;
pub mod stats;
pub mod tensor;
pub mod text;

pub use error::InferenceError;
