//! `vigil-monitor`: the monitoring service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vigil_monitor::MonitorConfig;
use vigil_store::{Backend, MonitorStore, PredictionStore};

/// Watches the prediction log: metrics, drift, alarms, a dashboard, and the monitoring APIs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// gRPC address (vigil.v1.Monitoring and PredictionLog; loopback by default).
    #[arg(long, default_value = "127.0.0.1:8003")]
    listen: SocketAddr,
    /// HTTP address of the dashboard and /metrics.
    #[arg(long, default_value = "127.0.0.1:8004")]
    http_listen: SocketAddr,
    /// The prediction log: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true, default_value = "postgres://127.0.0.1/vigil")]
    database_url: String,
    /// Monitoring configuration (TOML: rollups, drift, alarm rules, webhook); defaults without.
    #[arg(long, env = "VIGIL_MONITOR_CONFIG")]
    config: Option<PathBuf>,
    /// The model repository (overrides the config's `models`).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Allow plaintext on an address other than loopback (without [security.tls]); warns.
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing();
    vigil_telemetry::exit_code("vigil-monitor", run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => MonitorConfig::load(path)?,
        None => MonitorConfig::default(),
    };
    if let Some(models) = &args.models {
        config.models = models.clone();
    }
    config.security.insecure |= args.insecure;
    let shutdown = vigil_telemetry::termination()?;
    let backend = Backend::connect(&args.database_url).await?;
    vigil_store::with_store!(backend, store => serve(store, config, &args, shutdown).await)
}

/// Migrates `store`, binds both ports and serves until `shutdown`.
async fn serve<S: PredictionStore + MonitorStore>(
    store: S,
    config: MonitorConfig,
    args: &Args,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    store.migrate().await?;
    let grpc = vigil_monitor::bind(args.listen).await?;
    let http = vigil_telemetry::bind_http(args.http_listen, "--http-listen").await?;
    let scheme = if config.security.tls.is_some() { "https" } else { "http" };
    println!("vigil-monitor: gRPC on {}, dashboard on {scheme}://{}/", grpc.local_addr()?, http.local_addr()?);
    vigil_monitor::run(store, config, grpc, http, shutdown).await
}
