//! `vigil-cloud`, the cloud prediction server: every model of a repository (several versions
//! each, loaded, reloaded and unloaded as the directory changes) over the Open Inference
//! Protocol v2, with dynamic batching per model, ONNX Runtime on the CPU or CUDA, and the
//! limits, health, reflection, metrics and prediction logging every Vigil server has; and
//! voice search (`vigil.v1.VoiceSearch`): speech segments in, transcript and catalog results out.

pub mod catalog;
pub mod config;
pub mod voice_metrics;
pub mod voice_search;

use anyhow::Result;
pub use config::CloudConfig;
use tonic::server::NamedService;
use vigil_proto::vigil::v1::voice_search_server::VoiceSearchServer;
use vigil_server::prediction::{self, ServerSettings};
pub use vigil_server::{MetricsConfig, RunningServer};
use vigil_serving::RecordEmitter;
use voice_search::VoiceSearchService;

/// Loads the model repository, binds `config.listen` (and `config.metrics.listen` when enabled)
/// and serves until `shutdown()` or, when `handle_signals`, SIGINT/SIGTERM. Prediction records
/// go to `records` when given, else to Kafka when `config.logging` says so.
pub async fn start(config: CloudConfig, handle_signals: bool, records: Option<RecordEmitter>) -> Result<RunningServer> {
    let capture = match config.capture.enabled {
        true => Some(vigil_capture::Capturer::start(config.capture).await?),
        false => None,
    };
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
        // Captured inputs wait in the spool on disk: nothing is lost when the server stops
        // (what is queued is written there before the server exits).
        capture: capture.as_ref().map(|(capturer, _)| capturer.clone()),
        capture_spool: capture.map(|(_, spool)| spool),
        security: config.security,
    };
    let voice_search = config.voice_search;
    let apis: vigil_server::ServerApis = Box::new(move |serving, routes| {
        if !voice_search.enabled {
            return Ok((routes, Vec::new()));
        }
        let metrics = voice_metrics::VoiceSearchMetrics::register(&mut serving.registry);
        let service = VoiceSearchService::new(
            serving.repository.clone(),
            serving.infer.clone(),
            voice_search,
            serving.records.clone(),
            serving.capture.clone(),
            metrics,
        )?
        .with_tasks(serving.tasks.clone());
        let max = serving.max_message_bytes;
        let service = VoiceSearchServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
        Ok((routes.add_service(service), vec![<VoiceSearchServer<VoiceSearchService> as NamedService>::NAME]))
    });
    prediction::start(settings, handle_signals, records, &[vigil_proto::FILE_DESCRIPTOR_SET], apis).await
}
