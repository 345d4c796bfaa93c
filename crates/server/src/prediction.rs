//! A prediction server on the host: the model repository loaded (and watched), the Open
//! Inference Protocol v2 behind the request-metrics and admission layers, deployments followed,
//! predictions logged, `/metrics` served, and the ordered stop (drain requests, let the shadow
//! copies finish, then records, then the metrics endpoint). Each server binary adds its own APIs
//! beside OIP (the edge its inspection API) through [`ServerApis`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tonic::service::Routes;
use vigil_inference::repository::ModelRepository;
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use vigil_serving::{
    DeploymentRouter, Infer, InferenceService, RecordEmitter, RequestMetricsLayer, ServingMetrics, ShadowLane,
};

use crate::{DeploymentsConfig, GrpcHost, Lifecycle, Limits, LoggingConfig, MetricsConfig, ModelOptions};

/// The stages of a prediction server, in the order they stop.
const SERVE: &str = "serve";
const SHADOWS: &str = "shadows";
const RECORDS: &str = "records";
const METRICS: &str = "metrics";

/// What every prediction server is told (each binary's configuration holds these keys).
#[derive(Debug)]
pub struct ServerSettings {
    /// The server's name in OIP metadata and logs (`vigil-edge`, `vigil-cloud`).
    pub name: &'static str,
    pub listen: SocketAddr,
    /// Directory of `<name>/<version>/model.onnx` + `model.toml`.
    pub model_repository: PathBuf,
    /// ONNX Runtime shared library; None: search the usual places.
    pub onnxruntime_lib: Option<PathBuf>,
    pub limits: Limits,
    pub models: ModelOptions,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub deployments: DeploymentsConfig,
    /// Inputs kept for retraining (`[capture]`), started by the server binary; ModelInfer items
    /// are captured through it, and a server's own APIs get it in [`Serving`].
    pub capture: Option<vigil_capture::Capturer>,
    /// The capture spool's task (from [`vigil_capture::Capturer::start`]): at shutdown, once
    /// the requests have drained, it is waited for (at most the drain timeout) while it writes
    /// what is still queued to the spool on disk.
    pub capture_spool: Option<tokio::task::JoinHandle<()>>,
    /// TLS and tokens on both ports (`[security]`).
    pub security: vigil_security::SecurityConfig,
}

/// What a server's own APIs are built from.
pub struct Serving {
    pub repository: Arc<ModelRepository>,
    pub metrics: ServingMetrics,
    /// Prediction logging, when enabled.
    pub records: Option<RecordEmitter>,
    /// The core that routes through the followed deployments, when deployments are followed.
    pub infer: Option<Infer>,
    /// The largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// The server's Prometheus registry: an API registers its own metrics here.
    pub registry: prometheus_client::registry::Registry,
    /// Inputs kept for retraining, when `[capture]` is on.
    pub capture: Option<vigil_capture::Capturer>,
    /// Work an API runs beside its calls (a streaming call's task): at shutdown, once the
    /// requests have drained, waited for (at most the drain timeout) before the records are,
    /// so what it logs on its way out is not lost.
    pub tasks: tokio_util::task::TaskTracker,
}

/// A server's own APIs beside OIP: given the serving parts and the routes so far, the routes
/// with its services added and their names (reported SERVING by the health service).
pub type ServerApis = Box<dyn FnOnce(&mut Serving, Routes) -> Result<(Routes, Vec<&'static str>)> + Send>;

/// A server running in the background.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// `https` when TLS is on, else `http`.
    pub scheme: &'static str,
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

/// Loads the model repository, binds `settings.listen` (and the metrics address when enabled)
/// and serves OIP plus `apis` until `shutdown()` or, when `handle_signals`, SIGINT/SIGTERM.
/// Prediction records go to `records` when given (the embedded default's in-process bus), else
/// to Kafka when `settings.logging` says so. `descriptor_sets` describe the served APIs to
/// reflection.
pub async fn start(
    mut settings: ServerSettings,
    handle_signals: bool,
    records: Option<RecordEmitter>,
    descriptor_sets: &[&[u8]],
    apis: ServerApis,
) -> Result<RunningServer> {
    // Handlers are installed before any work, so that a signal during start-up is a clean stop.
    let terminated = match handle_signals {
        true => Some(Box::pin(vigil_telemetry::termination()?) as Pin<Box<dyn Future<Output = ()> + Send>>),
        false => None,
    };
    let repository =
        crate::models::load(settings.onnxruntime_lib.as_deref(), &settings.model_repository, &settings.models).await?;
    let security =
        vigil_security::Security::load(&settings.security).map_err(|e| anyhow::anyhow!("security: {e:#}"))?;
    let host = GrpcHost::bind(settings.listen, "--listen", descriptor_sets).await?;
    let mut host = host.with_security(security.clone(), "--listen")?;
    let metrics_listener = if settings.metrics.enabled {
        Some(vigil_telemetry::bind_http(settings.metrics.listen, "--metrics-listen or metrics.listen").await?)
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;
    if let Some(addr) = metrics_addr {
        security.check_listen(addr, "--metrics-listen or metrics.listen")?;
    }

    let mut lifecycle = Lifecycle::new();
    lifecycle.stage(SERVE, None).stage(SHADOWS, None).stage(RECORDS, None).stage(METRICS, Some(Duration::from_secs(1)));
    let drain = settings.limits.drain_timeout();
    let records = match records {
        Some(external) => Some(external),
        None => crate::records::start(&settings.logging, &mut lifecycle, RECORDS, drain)?,
    }
    .map(|records| records.with_closing(host.closing()));
    crate::models::watch(repository.clone(), &settings.models, &mut lifecycle, SERVE);

    let methods = host.method_paths().collect::<Vec<_>>();
    let admission = host.admission(&settings.limits);
    let mut registry = vigil_telemetry::registry();
    let metrics = ServingMetrics::register(&mut registry, repository.clone(), &admission, records.as_ref());
    let auth_metrics = vigil_security::auth::AuthMetrics::register(&mut registry);
    let mut inference = InferenceService::new(repository.clone(), settings.name)
        .with_metrics(metrics.clone())
        .with_readiness(host.readiness());
    let mut infer = None;
    if settings.deployments.enabled() {
        // Every API routes through the deployments the server follows.
        let router = Arc::new(DeploymentRouter::new(repository.clone()));
        crate::deployments::follow(
            &settings.deployments,
            &settings.logging.server_id,
            router.clone(),
            repository.clone(),
            &mut lifecycle,
            SERVE,
        )
        .await;
        let lane = Arc::new(ShadowLane::new(settings.deployments.shadow_concurrency));
        vigil_serving::metrics::register_shadow_lane(&mut registry, lane.clone());
        // Once the listener has drained, the shadow copies its calls started finish and record
        // before the records are drained.
        let running = lane.clone();
        lifecycle.spawn(SHADOWS, "shadow copies", move |stop| async move {
            stop.stopped().await;
            if !running.settle(drain).await {
                tracing::warn!(
                    running = running.running(),
                    "shadow copies still running at exit: their records are not written"
                );
            }
            Ok(())
        });
        let core = Infer::new(router).with_shadow_lane(lane);
        inference = inference.with_infer(core.clone());
        infer = Some(core);
    }
    if let Some(records) = &records {
        inference = inference.with_records(records.clone());
    }
    if let Some(capturer) = &settings.capture {
        inference = inference.with_capture(capturer.clone());
    }
    if let Some(spool) = settings.capture_spool.take() {
        // After the serve stage, whose services held the capturers: with the last one dropped,
        // the spool writer takes what is queued and ends.
        lifecycle.spawn(RECORDS, "capture spool", move |stop| async move {
            stop.stopped().await;
            if tokio::time::timeout(drain, spool).await.is_err() {
                tracing::warn!("captured inputs still queued at exit (the spool writer did not finish in time)");
            }
            Ok(())
        });
    }
    let tasks = tokio_util::task::TaskTracker::new();
    let running = tasks.clone();
    lifecycle.spawn(SHADOWS, "request tasks", move |stop| async move {
        stop.stopped().await;
        running.close();
        if tokio::time::timeout(drain, running.wait()).await.is_err() {
            tracing::warn!(
                running = running.len(),
                "request tasks still running at exit: their records are not written"
            );
        }
        Ok(())
    });
    let max = settings.limits.max_message_bytes;
    let oip = GrpcInferenceServiceServer::new(inference).max_decoding_message_size(max).max_encoding_message_size(max);
    // The whole server too (the empty name, which probes ask by default): NOT_SERVING once
    // the drain starts, with the services.
    host.serving_all().await;
    host.serving::<GrpcInferenceServiceServer<InferenceService>>().await;
    let mut serving = Serving {
        repository: repository.clone(),
        metrics: metrics.clone(),
        records,
        infer,
        max_message_bytes: max,
        registry,
        capture: settings.capture.clone(),
        tasks,
    };
    let (routes, names) = match apis(&mut serving, host.routes().add_service(oip)) {
        Ok(apis) => apis,
        Err(e) => {
            // Whatever started already (records, watches) stops before the error is returned;
            // the capture spool ends once no capturer is left.
            drop((serving, settings.capture.take()));
            let _ = lifecycle.shutdown().await;
            return Err(e);
        }
    };
    for name in names {
        host.serving_name(name).await;
    }
    let addr = host.addr();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(settings.limits.max_streams_per_connection)
        // Outermost first: every call is counted, those refused for their token and those the
        // admission layer sheds or ends too; a refused call costs no admission budget.
        .layer(
            tower::ServiceBuilder::new()
                .layer(RequestMetricsLayer::new(metrics).with_methods(methods))
                .layer(security.grpc_layer(auth_metrics.clone()))
                .layer(admission),
        )
        .add_routes(routes);
    host.serve(router, &mut lifecycle, SERVE, drain);
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %metrics_addr.expect("bound"), "serving /metrics");
        crate::serve_metrics(listener, serving.registry, &security, auth_metrics, &mut lifecycle, METRICS);
    }
    let records = serving.records;
    let scheme = security.scheme();
    Ok(RunningServer { addr, metrics_addr, scheme, repository, records, lifecycle, terminated })
}

/// The APIs of a server that adds none beside OIP.
pub fn oip_only() -> ServerApis {
    Box::new(|_, routes| Ok((routes, Vec::new())))
}
