//! `vigil-cloud`, the cloud prediction server: every model of a repository (several versions
//! each, loaded, reloaded and unloaded as the directory changes) over the Open Inference
//! Protocol v2, with dynamic batching per model, ONNX Runtime on the CPU or CUDA, and the
//! limits, health, reflection, metrics and prediction logging every Vigil server has.

pub mod config;

use anyhow::Result;
pub use config::CloudConfig;
use vigil_server::prediction::{self, ServerSettings};
pub use vigil_server::{MetricsConfig, RunningServer};
use vigil_serving::RecordEmitter;

/// Loads the model repository, binds `config.listen` (and `config.metrics.listen` when enabled)
/// and serves until `shutdown()` or, when `handle_signals`, SIGINT/SIGTERM. Prediction records
/// go to `records` when given, else to Kafka when `config.logging` says so.
pub async fn start(config: CloudConfig, handle_signals: bool, records: Option<RecordEmitter>) -> Result<RunningServer> {
    let settings = ServerSettings {
        name: "vigil-cloud",
        listen: config.listen,
        model_repository: config.model_repository,
        onnxruntime_lib: config.onnxruntime_lib,
        limits: config.limits,
        models: config.models,
        logging: config.logging,
        metrics: config.metrics,
        deployments: config.deployments,
    };
    prediction::start(settings, handle_signals, records, &[vigil_proto::FILE_DESCRIPTOR_SET], prediction::oip_only())
        .await
}
