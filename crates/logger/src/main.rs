//! `vigil-logger`: prediction records, labels and feedback from Kafka into Postgres.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use vigil_logger::{LoggerConfig, LoggerStats};

/// Consumes vigil.predictions.v1, vigil.labels.v1 and vigil.feedback.v1 into Postgres, exactly
/// once. Settings come from the defaults, then `--config`, then VIGIL_LOGGER__... variables
/// (e.g. VIGIL_LOGGER__KAFKA__TOPICS__PARTITIONS=12), then these flags.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (deploy/logger.toml lists every key with its default).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long, env = "VIGIL_KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Postgres URL (database_url).
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Consumer group; instances in one group share the partitions (group_id).
    #[arg(long)]
    group: Option<String>,
    /// Most records per database transaction (batch.max_records).
    #[arg(long)]
    batch_max_records: Option<usize>,
    /// Longest a batch waits to fill, in milliseconds (batch.max_wait_ms).
    #[arg(long)]
    batch_max_wait_ms: Option<u64>,
    /// Batches written at once, each its own transaction (batch.max_in_flight).
    #[arg(long)]
    max_batches_in_flight: Option<usize>,
    /// HTTP address of the Prometheus /metrics endpoint (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9103")]
    metrics_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing();
    vigil_telemetry::exit_code("vigil-logger", run(Args::parse()).await)
}

fn config(args: &Args) -> anyhow::Result<LoggerConfig> {
    let mut figment = Figment::from(Serialized::defaults(LoggerConfig::default()));
    if let Some(path) = &args.config {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed("VIGIL_LOGGER__").split("__"));
    let flags: [(&str, Option<figment::value::Value>); 6] = [
        ("kafka.brokers", args.brokers.clone().map(Into::into)),
        ("database_url", args.database_url.clone().map(Into::into)),
        ("group_id", args.group.clone().map(Into::into)),
        ("batch.max_records", args.batch_max_records.map(|v| (v as u64).into())),
        ("batch.max_wait_ms", args.batch_max_wait_ms.map(Into::into)),
        ("batch.max_in_flight", args.max_batches_in_flight.map(|v| (v as u64).into())),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    let config: LoggerConfig = figment.extract().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    Ok(config)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config(&args)?;
    // Handlers are registered before any work, so an early SIGTERM is a clean stop.
    let shutdown = vigil_telemetry::termination()?;
    let stats = Arc::new(LoggerStats::default());
    let stats_for_metrics = stats.clone();
    let security = vigil_security::Security::load(&config.security).map_err(|e| anyhow::anyhow!("security: {e:#}"))?;
    let http = vigil_telemetry::bind_http(args.metrics_listen, "--metrics-listen").await?;
    security.check_listen(http.local_addr()?, "--metrics-listen")?;
    println!(
        "vigil-logger consuming {:?} from {} into Postgres (metrics on {}://{}/metrics)",
        config.consume,
        config.kafka.brokers,
        security.scheme(),
        http.local_addr()?
    );
    // The pipeline finishes its batches first; /metrics stops last, after a short grace.
    let mut lifecycle = vigil_server::Lifecycle::new();
    lifecycle.stage("pipeline", None).stage("metrics", Some(Duration::from_secs(1)));
    lifecycle.spawn("pipeline", "Kafka to Postgres pipeline", move |stop| {
        vigil_logger::run(config, stats.clone(), stop.stopped())
    });
    let (registry, auth_metrics) = vigil_logger::metrics::registry_with_auth(&stats_for_metrics);
    let router = vigil_telemetry::metrics_router(registry);
    let router = security.protect_http(router, vigil_security::auth::http_access, auth_metrics);
    lifecycle.spawn("metrics", "/metrics server", move |stop| async move {
        security.serve_http(http, router, stop.stopped()).await
    });
    lifecycle.run_until(shutdown).await
}
