//! `vigil-logger`: prediction records and labels from Kafka into Postgres.

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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.batch_max_records == 0 {
        eprintln!("vigil-logger: --batch-max-records must be at least 1");
        return ExitCode::from(2);
    }
    let config = LoggerConfig {
        brokers: args.brokers,
        group_id: args.group,
        database_url: args.database_url,
        batch_max_records: args.batch_max_records,
        batch_max_wait: Duration::from_millis(args.batch_max_wait_ms),
        ..LoggerConfig::default()
    };
    let stats = Arc::new(LoggerStats::default());
    println!("vigil-logger consuming {:?} from {} into Postgres", config.topics, config.brokers);
    // Handlers are registered before any work, so an early SIGTERM is a clean stop.
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil-logger: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
    };
    match vigil_logger::run(config, stats, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-logger: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
