//! The monitoring service: rollups of the prediction log, software, input and output metrics,
//! data and concept drift, alarms with webhook notifications, a dashboard, and the analyst and
//! monitoring gRPC APIs (`vigil.v1.PredictionLog`, `vigil.v1.Monitoring`), and the control
//! plane servers follow their deployments from (`vigil.v1.Control`).

pub mod alarms;
pub mod api;
pub mod catalog;
pub mod config;
pub mod feedback;
pub mod http;
pub mod labels;
pub mod notify;
pub mod panel;
pub mod query;
pub mod retention;
pub mod retrain;
pub mod review;
pub mod rollout;
pub mod rollup;
pub mod sketch;
pub mod telemetry;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use vigil_proto::vigil::v1::control_server::ControlServer;
use vigil_proto::vigil::v1::monitoring_server::MonitoringServer;
use vigil_proto::vigil::v1::prediction_log_server::PredictionLogServer;
use vigil_server::{GrpcHost, Lifecycle};
use vigil_store::{MonitorStore, PredictionStore};

pub use api::MonitoringService;
pub use catalog::{Catalog, LiveCatalog};
pub use config::MonitorConfig;
pub use query::PredictionLogService;
pub use views::Views;

/// The monitor's stages, in the order they stop: the APIs drain, then the background work.
const SERVE: &str = "serve";
const BACKGROUND: &str = "background";

/// Serves the analyst query API alone on `listener` until `shutdown` resolves, with the
/// monitor's default limits.
pub async fn serve<S: PredictionStore>(
    listener: TcpListener,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut lifecycle = Lifecycle::new();
    let mut host = GrpcHost::on(listener, &[vigil_proto::FILE_DESCRIPTOR_SET])?;
    host.serving_all().await;
    let limits = config::default_limits();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .layer(host.admission(&limits))
        .add_routes(host.routes())
        .add_service(
            PredictionLogServer::new(PredictionLogService::new(store))
                .max_decoding_message_size(limits.max_message_bytes),
        );
    host.serve(router, &mut lifecycle, SERVE, limits.drain_timeout());
    lifecycle.run_until(shutdown).await
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
    start(store, config, grpc, http).await?.run_until(shutdown).await
}

/// Starts the whole monitor (see [`run`]); the returned lifecycle stops it in order.
pub async fn start<S: PredictionStore + MonitorStore>(
    store: S,
    config: MonitorConfig,
    grpc: TcpListener,
    http: TcpListener,
) -> Result<Lifecycle> {
    config.validate()?;
    let security = vigil_security::Security::load(&config.security).map_err(|e| anyhow::anyhow!("security: {e:#}"))?;
    security.check_listen(http.local_addr()?, "--http-listen")?;
    let rules = config.rules()?;
    let pinned = retention::pinned_baselines(&rules);
    let catalog = Arc::new(LiveCatalog::follow(&config.models)?);
    let config = Arc::new(config);
    let views = Views::following(store.clone(), catalog.clone(), config.clone());
    let mut host =
        GrpcHost::on(grpc, &[vigil_proto::FILE_DESCRIPTOR_SET])?.with_security(security.clone(), "--listen")?;
    let admission = host.admission(&config.limits);
    let (registry, metrics) = telemetry::registry_with(&admission);
    let auth_metrics = metrics.auth.clone();
    let mut lifecycle = Lifecycle::new();
    lifecycle.stage(SERVE, None).stage(BACKGROUND, None);

    let upkeep = (store.clone(), config.rollups.resolutions.clone(), config.rollups.poll, metrics.clone());
    lifecycle.spawn(BACKGROUND, "rollup upkeep", move |stop| async move {
        let (store, resolutions, poll, metrics) = upkeep;
        rollup::upkeep(store, resolutions, poll, metrics, stop.into_receiver()).await;
        Ok(())
    });
    lifecycle.spawn(BACKGROUND, "model catalog", move |stop| async move {
        follow_catalog(catalog, stop.into_receiver()).await;
        Ok(())
    });
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let (alarm_views, every, alarm_metrics) = (views.clone(), config.alerting.evaluate_every, metrics.clone());
    lifecycle.spawn(BACKGROUND, "alarms", move |stop| async move {
        alarms::run(alarm_views, rules, every, alarm_metrics, leading_tx, stop.into_receiver()).await;
        Ok(())
    });
    let (rollout_views, checks, rollout_leading) = (views.clone(), config.rollouts.clone(), leading.clone());
    lifecycle.spawn(BACKGROUND, "rollout controller", move |stop| async move {
        rollout::run(rollout_views, checks, rollout_leading, stop.into_receiver()).await;
        Ok(())
    });
    let (store_, retraining, models, retrain_leading) =
        (store.clone(), config.retraining.clone(), config.models.clone(), leading.clone());
    lifecycle.spawn(BACKGROUND, "retraining", move |stop| async move {
        retrain::runner::run(store_, retraining, models, retrain_leading, stop.into_receiver()).await;
        Ok(())
    });
    let retention = (store.clone(), config.retention.clone(), config.rollups.resolutions.clone());
    let (retention_leading, retention_metrics) = (leading.clone(), metrics.clone());
    lifecycle.spawn(BACKGROUND, "retention", move |stop| async move {
        let (store, retention, resolutions) = retention;
        retention::run(
            store,
            retention,
            resolutions,
            pinned,
            retention_leading,
            retention_metrics,
            stop.into_receiver(),
        )
        .await;
        Ok(())
    });
    if let Some(url) = &config.alerting.webhook_url {
        let hook = notify::Webhook {
            url: url.clone(),
            timeout: config.alerting.webhook_timeout,
            max_backoff: config.alerting.webhook_max_backoff,
            max_attempts: config.alerting.webhook_max_attempts,
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        lifecycle.spawn(BACKGROUND, "webhook notifications", move |stop| async move {
            notify::run(store, hook, metrics, leading, stop.into_receiver()).await;
            Ok(())
        });
    }

    let dashboard = http::router(views.clone(), registry);
    let dashboard = security.protect_http(dashboard, vigil_security::auth::http_access, auth_metrics.clone());
    let http_security = security.clone();
    lifecycle.spawn(SERVE, "dashboard", move |stop| async move {
        http_security.serve_http(http, dashboard, stop.stopped()).await
    });
    let control =
        vigil_server::control::ControlService::start(store.clone(), config.control.poll, &mut lifecycle, BACKGROUND);
    host.serving_all().await;
    // A call refused for its token costs no admission budget; a message the admission layer
    // admits is decoded whatever its size up to the limit (tonic's own default is 4 MiB).
    let max = config.limits.max_message_bytes;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(config.limits.max_streams_per_connection)
        .layer(tower::ServiceBuilder::new().layer(security.grpc_layer(auth_metrics)).layer(admission))
        .add_routes(host.routes())
        .add_service(PredictionLogServer::new(PredictionLogService::new(store.clone())).max_decoding_message_size(max))
        .add_service(MonitoringServer::new(MonitoringService::new(views)).max_decoding_message_size(max))
        .add_service(ControlServer::new(control).max_decoding_message_size(max));
    host.serve(router, &mut lifecycle, SERVE, config.limits.drain_timeout());
    Ok(lifecycle)
}

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (in use? set --listen)"))
}

/// How often the monitor looks for versions added to (or changed in) the model repository.
pub const CATALOG_REFRESH: Duration = Duration::from_secs(1);

/// Keeps `catalog` following the model repository until `shutdown`.
async fn follow_catalog(catalog: Arc<LiveCatalog>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CATALOG_REFRESH) => {}
            _ = shutdown.changed() => return,
        }
        let refresh = catalog.clone();
        match tokio::task::spawn_blocking(move || refresh.refresh()).await {
            Ok(Ok(true)) => tracing::info!("model repository changed: catalog read again"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the model repository again; keeping the catalog"),
            Err(e) => tracing::warn!(error = %e, "reading the model repository panicked"),
        }
    }
}
