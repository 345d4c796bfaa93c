//! The gRPC listener every server binary uses: bound with TCP_NODELAY, the health service
//! (each served API marked SERVING, then NOT_SERVING when the drain starts) and reflection in
//! both `grpc.reflection.v1` and `v1alpha` (grpcurl and tonic speak v1; Python's
//! grpcio-reflection, Postman and older tools only v1alpha), served in a [`Lifecycle`] stage
//! that drains in-flight calls within a bound; over TLS when the server's [`Security`] says so.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};

use vigil_security::Security;
use vigil_serving::oip::Readiness;

use crate::lifecycle::Lifecycle;

/// A bound gRPC listener with its health reporter, before it serves.
pub struct GrpcHost {
    listener: TcpListener,
    addr: SocketAddr,
    health: HealthReporter,
    routes: Routes,
    served: Vec<&'static str>,
    security: Security,
    readiness: Readiness,
    draining: CancellationToken,
    closing: CancellationToken,
    /// Every served method's path, and whether it streams, from the descriptor sets.
    methods: Vec<(String, bool)>,
}

/// How long, once the drain timeout has passed and the calls still running were ended, the
/// server waits for their connections to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl GrpcHost {
    /// Binds `addr`; the error names `setting` (the flag or key that sets the address).
    pub async fn bind(addr: SocketAddr, setting: &str, descriptor_sets: &[&[u8]]) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (is another server using it? set {setting})"))?;
        Self::on(listener, descriptor_sets)
    }

    /// Serves on a listener bound by the caller; reflection describes `descriptor_sets`.
    pub fn on(listener: TcpListener, descriptor_sets: &[&[u8]]) -> Result<Self> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "listening beyond loopback");
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for set in descriptor_sets {
                builder = builder.register_encoded_file_descriptor_set(set);
            }
            builder
        };
        let v1 = reflection().build_v1().context("building the reflection service")?;
        let v1alpha = reflection().build_v1alpha().context("building the reflection service")?;
        let routes = Routes::new(health_service).add_service(v1).add_service(v1alpha);
        let methods = descriptor_sets.iter().flat_map(|set| vigil_serving::admission::grpc_methods(set)).collect();
        Ok(Self {
            methods,
            listener,
            addr,
            health,
            routes,
            served: Vec::new(),
            security: Security::none(),
            readiness: Readiness::default(),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
        })
    }

    /// Serves over `security`'s TLS (when on); refuses plaintext beyond loopback unless allowed
    /// (`setting` names what sets the address).
    pub fn with_security(mut self, security: Security, setting: &str) -> Result<Self> {
        security.check_listen(self.addr, setting)?;
        self.security = security;
        Ok(self)
    }

    /// The admission layer for this host's calls under `limits`: it knows which methods
    /// stream, refuses new calls once the host drains and ends the running ones when it closes.
    pub fn admission(&self, limits: &crate::config::Limits) -> vigil_serving::admission::AdmissionLayer {
        let streaming = self.methods.iter().filter(|(_, streams)| *streams).map(|(path, _)| path.clone()).collect();
        vigil_serving::admission::AdmissionLayer::new(limits.admission())
            .with_streaming_methods(streaming)
            .with_draining(self.draining())
            .with_closing(self.closing())
    }

    /// Every served method's path (from the descriptor sets given at the start).
    pub fn method_paths(&self) -> impl Iterator<Item = String> + '_ {
        self.methods.iter().map(|(path, _)| path.clone())
    }

    /// Cancelled when the drain starts, once the served APIs are NOT_SERVING: the health
    /// watches are to end then
    /// ([`AdmissionLayer::with_draining`](vigil_serving::admission::AdmissionLayer::with_draining)).
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Cancelled when the drain timeout passes: the calls still running are to end then
    /// ([`AdmissionLayer::with_closing`](vigil_serving::admission::AdmissionLayer::with_closing)).
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ready until the drain starts: for OIP's ServerReady.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Marks `S` SERVING in the health service until the drain starts.
    pub async fn serving<S: NamedService>(&mut self) {
        self.health.set_serving::<S>().await;
        self.served.push(S::NAME);
    }

    /// Marks the service named `name` (its full gRPC name) SERVING until the drain starts.
    pub async fn serving_name(&mut self, name: &'static str) {
        self.health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        self.served.push(name);
    }

    /// Marks the whole server (the empty service name) SERVING until the drain starts.
    pub async fn serving_all(&mut self) {
        self.health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        self.served.push("");
    }

    /// Health and reflection, to which the server adds its own services:
    /// `Server::builder().layer(..).add_routes(host.routes()).add_service(..)`.
    pub fn routes(&mut self) -> Routes {
        std::mem::take(&mut self.routes)
    }

    /// Serves `router` in `lifecycle`'s `stage`: when the stage is told to stop, the served
    /// APIs turn NOT_SERVING, new connections are refused, and in-flight calls get `drain` to
    /// finish; then [`GrpcHost::closing`] is cancelled, so that the calls still running end
    /// (streams included), and their connections get a moment more to close.
    pub fn serve<L, ResBody>(self, router: Router<L>, lifecycle: &mut Lifecycle, stage: &'static str, drain: Duration)
    where
        L: Layer<Routes> + Send + 'static,
        L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send,
        <L::Service as Service<http::Request<Body>>>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Self { listener, health, served, security, readiness, draining: drain_started, closing, .. } = self;
        lifecycle.spawn(stage, "gRPC server", move |stop| async move {
            let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
            let signal = async move {
                stop.stopped().await;
                tracing::info!("shutting down: draining in-flight requests");
                readiness.draining();
                for name in served {
                    health.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
                }
                drain_started.cancel();
                let _ = draining_tx.send(());
            };
            let result = match security.tls() {
                None => {
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    drained(router.serve_with_incoming_shutdown(incoming, signal), draining, drain, closing).await
                }
                Some(tls) => {
                    let incoming = tls.grpc_incoming(listener);
                    drained(router.serve_with_incoming_shutdown(incoming, signal), draining, drain, closing).await
                }
            };
            result.context("gRPC server failed")
        });
    }
}

/// Runs `serve` until it finishes by itself (an error, or nothing left to drain), or, once
/// `draining` fires, for at most `drain` more; then cancels `closing` (the calls still running
/// end) and waits at most [`CLOSE_GRACE`] for their connections.
async fn drained<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    draining: tokio::sync::oneshot::Receiver<()>,
    drain: Duration,
    closing: CancellationToken,
) -> Result<(), E> {
    tokio::pin!(serve);
    let finished = tokio::select! {
        result = &mut serve => Some(result),
        _ = draining => None,
    };
    match finished {
        Some(result) => result,
        None => match tokio::time::timeout(drain, &mut serve).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(?drain, "drain timeout reached; ending the calls still running (UNAVAILABLE)");
                closing.cancel();
                match tokio::time::timeout(CLOSE_GRACE, serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("connections still open after their calls were ended; leaving them");
                        Ok(())
                    }
                }
            }
        },
    }
}

/// Serves Prometheus `GET /metrics` from `registry` on `listener` in `lifecycle`'s `stage`
/// (give it a short grace period: it is the last thing to stop), over `security`'s TLS and
/// behind its tokens unless `/metrics` is open.
pub fn serve_metrics(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    security: &Security,
    auth_metrics: vigil_security::auth::AuthMetrics,
    lifecycle: &mut Lifecycle,
    stage: &'static str,
) {
    let router = vigil_telemetry::metrics_router(std::sync::Arc::new(registry));
    let router = security.protect_http(router, vigil_security::auth::http_access, auth_metrics);
    let security = security.clone();
    lifecycle.spawn(stage, "/metrics server", move |stop| async move {
        security.serve_http(listener, router, stop.stopped()).await
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_server_is_ready_until_its_drain_starts() {
        let mut host = GrpcHost::bind("127.0.0.1:0".parse().unwrap(), "test", &[]).await.unwrap();
        let readiness = host.readiness();
        let router = tonic::transport::Server::builder().add_routes(host.routes());
        let mut lifecycle = Lifecycle::new();
        lifecycle.stage("serve", None);
        host.serve(router, &mut lifecycle, "serve", Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(readiness.is_ready(), "ready while serving");
        lifecycle.shutdown().await.unwrap();
        assert!(!readiness.is_ready(), "not ready once it drains");
    }
}
