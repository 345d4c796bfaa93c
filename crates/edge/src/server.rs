//! Wiring on the server host: load the models, serve OIP v2 and inspection behind the admission
//! layer, log predictions, expose `/metrics`, and stop in order (drain requests, then records,
//! then the metrics endpoint).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use vigil_inference::repository::ModelRepository;
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use vigil_proto::vigil::v1::inspection_server::InspectionServer;
use vigil_server::{GrpcHost, Lifecycle};
use vigil_serving::{
    AdmissionLayer, DeploymentRouter, Infer, InferenceService, InspectionService, RecordEmitter, RequestMetricsLayer,
    ServingMetrics, ShadowLane,
};

use crate::config::EdgeConfig;

/// The stages of the edge server, in the order they stop.
const SERVE: &str = "serve";
const RECORDS: &str = "records";
const METRICS: &str = "metrics";

/// A server running in the background.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The loaded models.
    pub repository: Arc<ModelRepository>,
    /// Prediction logging, when enabled.
    pub records: Option<RecordEmitter>,
    lifecycle: Lifecycle,
    /// SIGINT/SIGTERM, when the server handles signals.
    terminated: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), hands the
    /// last records over, and waits for every task.
    pub async fn shutdown(self) -> Result<()> {
        self.lifecycle.shutdown().await
    }

    /// Serves until `stop` resolves or the server fails, then shuts down in order.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<()> {
        self.lifecycle.run_until(stop).await
    }

    /// Waits until the server stops by itself (SIGINT/SIGTERM when it handles signals, or a
    /// failure), then shuts down in order.
    pub async fn wait(self) -> Result<()> {
        match self.terminated {
            Some(terminated) => self.lifecycle.run_until(terminated).await,
            None => self.lifecycle.run_until(std::future::pending()).await,
        }
    }
}

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
    // Handlers are installed before any work, so that a signal during start-up is a clean stop.
    let terminated = match handle_signals {
        true => Some(Box::pin(vigil_telemetry::termination()?) as Pin<Box<dyn Future<Output = ()> + Send>>),
        false => None,
    };
    let repository =
        vigil_server::models::load(config.onnxruntime_lib.as_deref(), &config.model_repository, &config.models).await?;
    repository.entry(&config.default_model).map_err(|e| anyhow!("default_model: {e}"))?;
    let mut host = GrpcHost::bind(config.listen, "--listen", &[vigil_proto::FILE_DESCRIPTOR_SET]).await?;
    let metrics_listener = if config.metrics.enabled {
        Some(vigil_telemetry::bind_http(config.metrics.listen, "--metrics-listen or metrics.listen").await?)
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;

    let mut lifecycle = Lifecycle::new();
    lifecycle.stage(SERVE, None).stage(RECORDS, None).stage(METRICS, Some(Duration::from_secs(1)));
    let drain = config.limits.drain_timeout();
    let records = match records {
        Some(external) => Some(external),
        None => vigil_server::records::start(&config.logging, &mut lifecycle, RECORDS, drain)?,
    };
    vigil_server::models::watch(repository.clone(), &config.models, &mut lifecycle, SERVE);

    let methods = vigil_serving::admission::grpc_methods(vigil_proto::FILE_DESCRIPTOR_SET);
    let streaming = methods.iter().filter(|(_, streams)| *streams).map(|(path, _)| path.clone()).collect();
    let methods = methods.into_iter().map(|(path, _)| path);
    let admission = AdmissionLayer::new(config.limits.admission()).with_streaming_methods(streaming);
    let mut registry = vigil_telemetry::registry();
    let metrics = ServingMetrics::register(&mut registry, repository.clone(), &admission, records.as_ref());
    let mut inference = InferenceService::new(repository.clone(), "vigil-edge").with_metrics(metrics.clone());
    let mut inspection = InspectionService::new(repository.clone(), config.default_model.clone(), config.images)
        .with_metrics(metrics.clone());
    if config.deployments.enabled() {
        // Both APIs route through the deployments the server follows.
        let router = Arc::new(DeploymentRouter::new(repository.clone()));
        vigil_server::deployments::follow(
            &config.deployments,
            &config.logging.server_id,
            router.clone(),
            repository.clone(),
            &mut lifecycle,
            SERVE,
        )
        .await;
        let lane = Arc::new(ShadowLane::new(config.deployments.shadow_concurrency));
        vigil_serving::metrics::register_shadow_lane(&mut registry, lane.clone());
        let infer = Infer::new(router).with_shadow_lane(lane);
        inference = inference.with_infer(infer.clone());
        inspection = inspection.with_infer(infer);
    }
    if let Some(records) = &records {
        inference = inference.with_records(records.clone());
        inspection = inspection.with_records(records.clone());
    }
    let max = config.limits.max_message_bytes;
    let oip = GrpcInferenceServiceServer::new(inference).max_decoding_message_size(max).max_encoding_message_size(max);
    let inspection = InspectionServer::new(inspection).max_decoding_message_size(max).max_encoding_message_size(max);
    host.serving::<GrpcInferenceServiceServer<InferenceService>>().await;
    host.serving::<InspectionServer<InspectionService>>().await;
    let addr = host.addr();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Outermost first: every call is counted, those the admission layer sheds or ends too.
        .layer(
            tower::ServiceBuilder::new()
                .layer(RequestMetricsLayer::new(metrics.clone()).with_methods(methods))
                .layer(admission),
        )
        .add_routes(host.routes())
        .add_service(oip)
        .add_service(inspection);
    host.serve(router, &mut lifecycle, SERVE, drain);
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %metrics_addr.expect("bound"), "serving /metrics");
        vigil_server::serve_metrics(listener, registry, &mut lifecycle, METRICS);
    }
    Ok(RunningServer { addr, metrics_addr, repository, records, lifecycle, terminated })
}
