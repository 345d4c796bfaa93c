//! The monitoring service. Today it serves the analyst query API (`vigil.v1.PredictionLog`)
//! over the prediction log; metrics, drift and alarms join it next.

pub mod query;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use vigil_proto::vigil::v1::prediction_log_server::PredictionLogServer;
use vigil_store::PredictionStore;

pub use query::PredictionLogService;

/// Serves the monitoring APIs on `listener` until `shutdown` resolves.
pub async fn serve<S: PredictionStore>(
    listener: TcpListener,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PredictionLogServer<PredictionLogService<S>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(PredictionLogServer::new(PredictionLogService::new(store)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .context("gRPC server failed")
}

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (in use? set --listen)"))
}
