//! The edge server on the shared prediction server: OIP v2 plus the inspection API, both
//! routed through the deployments the server follows and logged alike.

use anyhow::{Result, anyhow};
use tonic::server::NamedService;
use vigil_proto::vigil::v1::inspection_server::InspectionServer;
use vigil_server::prediction::{self, ServerSettings};
use vigil_serving::{InspectionService, RecordEmitter};

use crate::config::EdgeConfig;

pub use vigil_server::RunningServer;

/// Loads the model repository, binds `config.listen` (and `config.metrics.listen` when enabled)
/// and serves until `shutdown()` or, when `handle_signals`, SIGINT/SIGTERM. Prediction records
/// go to Kafka when `config.logging` says so.
pub async fn start(config: EdgeConfig, handle_signals: bool) -> Result<RunningServer> {
    start_with(config, handle_signals, None).await
}

/// As [`start`], with prediction records going to `records` (the embedded default's in-process
/// bus) instead of the configured Kafka.
pub async fn start_with(
    config: EdgeConfig,
    handle_signals: bool,
    records: Option<RecordEmitter>,
) -> Result<RunningServer> {
    let capture = match config.capture.enabled {
        true => Some(vigil_capture::Capturer::start(config.capture).await?),
        false => None,
    };
    let settings = ServerSettings {
        name: "vigil-edge",
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
    let (default_model, images) = (config.default_model, config.images);
    let inspection: vigil_server::ServerApis = Box::new(move |serving, routes| {
        serving.repository.entry(&default_model).map_err(|e| anyhow!("default_model: {e}"))?;
        let mut inspection = InspectionService::new(serving.repository.clone(), default_model, images)
            .with_metrics(serving.metrics.clone());
        if let Some(infer) = &serving.infer {
            inspection = inspection.with_infer(infer.clone());
        }
        if let Some(records) = &serving.records {
            inspection = inspection.with_records(records.clone());
        }
        if let Some(capturer) = &serving.capture {
            inspection = inspection.with_capture(capturer.clone());
        }
        let max = serving.max_message_bytes;
        let service = InspectionServer::new(inspection).max_decoding_message_size(max).max_encoding_message_size(max);
        Ok((routes.add_service(service), vec![<InspectionServer<InspectionService> as NamedService>::NAME]))
    });
    prediction::start(settings, handle_signals, records, &[vigil_proto::FILE_DESCRIPTOR_SET], inspection).await
}
