//! The monitoring service: rollups of the prediction log, software, input and output metrics,
//! data and concept drift, alarms with webhook notifications, a dashboard, and the analyst and
//! monitoring gRPC APIs (`vigil.v1.PredictionLog`, `vigil.v1.Monitoring`).

pub mod alarms;
pub mod api;
pub mod catalog;
pub mod config;
pub mod http;
pub mod labels;
pub mod notify;
pub mod query;
pub mod rollup;
pub mod sketch;
pub mod telemetry;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use vigil_proto::vigil::v1::monitoring_server::MonitoringServer;
use vigil_proto::vigil::v1::prediction_log_server::PredictionLogServer;
use vigil_store::{MonitorStore, PredictionStore};

pub use api::MonitoringService;
pub use catalog::Catalog;
pub use config::MonitorConfig;
pub use query::PredictionLogService;
pub use views::Views;

/// Serves the analyst query API alone on `listener` until `shutdown` resolves.
pub async fn serve<S: PredictionStore>(
    listener: TcpListener,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    grpc_server(
        tonic::transport::Server::builder().add_service(PredictionLogServer::new(PredictionLogService::new(store))),
        listener,
        shutdown,
    )
    .await
}

async fn grpc_server(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    router
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .context("gRPC server failed")
}

/// The whole monitor: gRPC APIs on `grpc`, dashboard and `/metrics` on `http`, rollup upkeep,
/// alarm evaluation and webhook notifications, until `shutdown` resolves.
pub async fn run<S: PredictionStore + MonitorStore>(
    store: S,
    config: MonitorConfig,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let rules = config.rules()?;
    let catalog = Arc::new(Catalog::load(&config.models)?);
    let config = Arc::new(config);
    let views = Views::new(store.clone(), catalog, config.clone());
    let (registry, metrics) = telemetry::registry();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(rollup::upkeep(
        store.clone(),
        config.rollups.resolutions.clone(),
        config.rollups.poll,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    tasks.spawn(alarms::run(
        views.clone(),
        rules,
        config.alerting.evaluate_every,
        metrics.clone(),
        leading_tx,
        stop_rx.clone(),
    ));
    if let Some(url) = &config.alerting.webhook_url {
        let hook = notify::Webhook {
            url: url.clone(),
            timeout: config.alerting.webhook_timeout,
            max_backoff: config.alerting.webhook_max_backoff,
            max_attempts: config.alerting.webhook_max_attempts,
        };
        tasks.spawn(notify::run(store.clone(), hook, metrics.clone(), leading, stop_rx.clone()));
    }

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_server =
        vigil_telemetry::serve_http(http, http::router(views.clone(), registry), stopped(stop_rx.clone()));
    let grpc_router = tonic::transport::Server::builder()
        .add_service(PredictionLogServer::new(PredictionLogService::new(store.clone())))
        .add_service(MonitoringServer::new(MonitoringService::new(views)));
    let grpc_server = grpc_server(grpc_router, grpc, stopped(stop_rx.clone()));
    let trigger = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let (_, http_result, grpc_result) = tokio::join!(trigger, http_server, grpc_server);
    while tasks.join_next().await.is_some() {}
    http_result?;
    grpc_result
}

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (in use? set --listen)"))
}
