//! Wiring: load models, bind, serve OIP v2 + inspection + health + reflection behind the
//! admission layer and Prometheus `/metrics` over HTTP, drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use vigil_inference::repository::{ModelRepository, RepositoryOptions};
use vigil_logbus::Emitter;
use vigil_logbus::kafka::KafkaSink;
use vigil_logbus::spool::Spool;
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use vigil_proto::vigil::v1::inspection_server::InspectionServer;
use vigil_serving::{
    AdmissionLayer, AdmissionLimits, InferenceService, InspectionService, RecordEmitter, ServingMetrics,
};

use crate::config::EdgeConfig;

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
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), and waits.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server stops by itself (a signal, or an error).
    pub async fn wait(mut self) -> Result<()> {
        let task = &mut self.task;
        task.await.context("server task panicked")?
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
    mut records: Option<RecordEmitter>,
) -> Result<RunningServer> {
    vigil_inference::runtime::environment(config.onnxruntime_lib.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let options = RepositoryOptions {
        load_all_versions: config.models.load_all_versions,
        pinned_versions: config.models.pinned_versions.clone(),
        intra_op_threads: config.models.intra_op_threads,
    };
    let root = config.model_repository.clone();
    let repository = tokio::task::spawn_blocking(move || ModelRepository::load(&root, &options))
        .await
        .context("model loading panicked")?
        .map_err(|e| anyhow!("{e}"))?;
    let repository = Arc::new(repository);
    repository.entry(&config.default_model).map_err(|e| anyhow!("default_model: {e}"))?;
    let watch = (config.models.watch_interval_ms > 0)
        .then(|| watch_repository(repository.clone(), Duration::from_millis(config.models.watch_interval_ms)));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another server using it? set --listen)", config.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback");
    }
    let metrics_listener = if config.metrics.enabled {
        Some(vigil_telemetry::bind_http(config.metrics.listen, "--metrics-listen or metrics.listen").await?)
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?;

    let max = config.limits.max_message_bytes;
    let mut inspection_service =
        InspectionService::new(repository.clone(), config.default_model.clone(), config.images);
    let mut emitter_task = None;
    if let Some(external) = &records {
        inspection_service = inspection_service.with_records(external.clone());
    } else if config.logging.enabled {
        let producer = config
            .logging
            .kafka
            .producer()
            .with_context(|| format!("cannot create the Kafka producer for {}", config.logging.kafka.brokers))?;
        let sink = KafkaSink::new(producer);
        if config.logging.kafka.topics.create {
            // Best effort, off the start-up path: the logger creates the topics too, and records
            // sent before the topic exists wait in the producer or the spool.
            let kafka = config.logging.kafka.clone();
            tokio::spawn(async move {
                if let Err(e) = vigil_logbus::kafka::ensure_topics(&kafka, &[vigil_logbus::topics::PREDICTIONS]).await {
                    tracing::warn!(error = %e, "records topic not checked; the logger creates it when it starts");
                }
            });
        }
        let spool = match &config.logging.spool {
            Some(spool_config) => {
                let spool = Spool::open(spool_config.clone())
                    .with_context(|| format!("cannot open the spool in {}", spool_config.dir.display()))?;
                if !spool.is_empty() {
                    tracing::info!(records = spool.len(), "replaying records spooled by an earlier run");
                }
                Some(spool)
            }
            None => None,
        };
        let (emitter, _task) = Emitter::start_with_spool(
            sink.clone(),
            config.logging.queue_capacity,
            config.logging.max_in_flight,
            spool,
            Duration::from_millis(500),
        );
        let record_emitter = RecordEmitter::new(emitter.clone(), config.logging.server_id.clone());
        inspection_service = inspection_service.with_records(record_emitter.clone());
        records = Some(record_emitter);
        emitter_task = Some((emitter, sink));
    }
    let admission = AdmissionLayer::new(AdmissionLimits {
        max_concurrent_requests: config.limits.max_concurrent_requests,
        request_timeout: config.request_timeout(),
        stream_timeout: Duration::from_millis(config.limits.stream_timeout_ms),
        stream_idle_timeout: Duration::from_millis(config.limits.stream_idle_timeout_ms),
        max_stream_messages: config.limits.max_stream_messages,
        max_request_bytes_in_flight: config.limits.max_request_bytes_in_flight,
    })
    .with_streaming_methods(vigil_serving::admission::streaming_methods(vigil_proto::FILE_DESCRIPTOR_SET));
    let mut registry = vigil_telemetry::registry();
    let metrics = ServingMetrics::register(&mut registry, repository.clone(), &admission, records.as_ref());
    let admission = admission.with_metrics(metrics.clone());
    let mut inference_service = InferenceService::new(repository.clone(), "vigil-edge").with_metrics(metrics.clone());
    if let Some(records) = &records {
        inference_service = inference_service.with_records(records.clone());
    }
    let oip = GrpcInferenceServiceServer::new(inference_service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let inspection = InspectionServer::new(inspection_service.with_metrics(metrics))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GrpcInferenceServiceServer<InferenceService>>().await;
    health.set_serving::<InspectionServer<InspectionService>>().await;
    // Both reflection versions: grpcurl and tonic speak v1, Python's grpcio-reflection, Postman
    // and older tools only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building the reflection service")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("building the reflection service")?;

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let drain = Duration::from_millis(config.limits.drain_timeout_ms);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(admission)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(oip)
        .add_service(inspection);
    // Handlers are installed now, so that a signal right after start-up is a clean stop.
    let terminated: Pin<Box<dyn Future<Output = ()> + Send>> =
        if handle_signals { Box::pin(vigil_telemetry::termination()?) } else { Box::pin(std::future::pending()) };
    // The metrics server stops when the gRPC server has drained (or failed: the sender drops).
    let (metrics_stop, metrics_stopped) = oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|listener| {
        tracing::info!(addr = %metrics_addr.expect("bound"), "serving /metrics");
        let router = vigil_telemetry::metrics_router(Arc::new(registry));
        tokio::spawn(vigil_telemetry::serve_http(listener, router, async move {
            let _ = metrics_stopped.await;
        }))
    });
    let task = tokio::spawn(async move {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let signal = async move {
            tokio::select! {
                _ = shutdown_rx => {}
                _ = terminated => {}
            }
            tracing::info!("shutting down: draining in-flight requests");
            health.set_not_serving::<InspectionServer<InspectionService>>().await;
            health.set_not_serving::<GrpcInferenceServiceServer<InferenceService>>().await;
            let _ = stop_tx.send(());
        };
        let serve = router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
        tokio::pin!(serve);
        // The server may finish by itself (no connections to drain, or an error); the records
        // below are handed over and the spool closed either way.
        let finished = tokio::select! {
            result = &mut serve => Some(result),
            _ = stop_rx => None,
        };
        let served = match finished {
            Some(result) => result.context("gRPC server failed"),
            None => match tokio::time::timeout(drain, serve).await {
                Ok(result) => result.context("gRPC server failed"),
                Err(_) => {
                    tracing::warn!(?drain, "drain timeout reached; closing remaining connections");
                    Ok(())
                }
            },
        };
        // Hand the last prediction records to the broker before exiting.
        if let Some((emitter, sink)) = emitter_task {
            if !emitter.drain(drain).await {
                tracing::warn!("prediction records still queued at exit");
            }
            if let Err(e) = sink.flush(drain) {
                tracing::warn!(error = %e, "records not flushed to Kafka before exit");
            }
            // What is still on disk is the next run's to replay.
            emitter.close_spool();
        }
        if let Some(watch) = watch {
            watch.abort();
        }
        let _ = metrics_stop.send(());
        if let Some(mut metrics_task) = metrics_task {
            match tokio::time::timeout(Duration::from_secs(1), &mut metrics_task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics server failed"),
                Ok(_) => {}
                Err(_) => metrics_task.abort(),
            }
        }
        served
    });
    Ok(RunningServer { addr, metrics_addr, repository, records, shutdown: Some(shutdown_tx), task })
}

/// Every `interval`, loads the models whose files changed and unloads those removed
/// ([`ModelRepository::sync_with_disk`]), off the async threads.
fn watch_repository(repository: Arc<ModelRepository>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let repository = repository.clone();
            match tokio::task::spawn_blocking(move || repository.sync_with_disk()).await {
                Ok(changed) if !changed.is_empty() => tracing::info!(?changed, "model repository changed"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "model repository watch failed"),
            }
        }
    })
}
