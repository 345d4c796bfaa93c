//! `vigil-logger`: prediction records and labels from Kafka into Postgres.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use vigil_logger::{LoggerConfig, LoggerStats};

/// Consumes vigil.predictions.v1, vigil.labels.v1 and vigil.feedback.v1 into Postgres, exactly once.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "VIGIL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Postgres URL.
    #[arg(long, env = "VIGIL_DATABASE_URL", default_value = "postgres://127.0.0.1/vigil")]
    database_url: String,
    /// Consumer group (instances in one group share the partitions).
    #[arg(long, default_value = "vigil-logger")]
    group: String,
    /// Most records per database transaction.
    #[arg(long, default_value_t = 5000)]
    batch_max_records: usize,
    /// Longest a batch waits to fill, in milliseconds.
    #[arg(long, default_value_t = 200)]
    batch_max_wait_ms: u64,
    /// Batches written at once (each its own transaction); offsets are committed in order.
    #[arg(long, default_value_t = 2)]
    max_batches_in_flight: usize,
    /// HTTP address of the Prometheus /metrics endpoint (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9103")]
    metrics_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing();
    vigil_telemetry::exit_code("vigil-logger", run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_max_records == 0 {
        anyhow::bail!("--batch-max-records must be at least 1");
    }
    if args.max_batches_in_flight == 0 {
        anyhow::bail!("--max-batches-in-flight must be at least 1");
    }
    let config = LoggerConfig {
        brokers: args.brokers,
        group_id: args.group,
        database_url: args.database_url,
        batch_max_records: args.batch_max_records,
        batch_max_wait: Duration::from_millis(args.batch_max_wait_ms),
        max_batches_in_flight: args.max_batches_in_flight,
        ..LoggerConfig::default()
    };
    // Handlers are registered before any work, so an early SIGTERM is a clean stop.
    let shutdown = vigil_telemetry::termination()?;
    let stats = Arc::new(LoggerStats::default());
    let http = vigil_telemetry::bind_http(args.metrics_listen, "--metrics-listen").await?;
    println!(
        "vigil-logger consuming {:?} from {} into Postgres (metrics on http://{}/metrics)",
        config.topics,
        config.brokers,
        http.local_addr()?
    );
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let router = vigil_telemetry::metrics_router(vigil_logger::metrics::registry(&stats));
    let mut metrics = tokio::spawn(vigil_telemetry::serve_http(http, router, async move {
        let _ = metrics_stopped.await;
    }));
    let result = vigil_logger::run(config, stats, shutdown).await;
    let _ = stop_metrics.send(());
    match tokio::time::timeout(Duration::from_secs(1), &mut metrics).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics server failed"),
        Ok(_) => {}
        Err(_) => metrics.abort(),
    }
    result
}
