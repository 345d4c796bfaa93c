//! `vigil-monitor`: the monitoring service (today: the analyst query API).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use vigil_store::{AnyStore, PredictionStore};

/// Serves vigil.v1.PredictionLog over the prediction log.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8003")]
    listen: SocketAddr,
    /// The prediction log: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", default_value = "postgres://127.0.0.1/vigil")]
    database_url: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-monitor: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let store = AnyStore::connect(&args.database_url).await?;
    store.migrate().await?;
    let listener = vigil_monitor::bind(args.listen).await?;
    println!("vigil-monitor listening on {}", listener.local_addr()?);
    vigil_monitor::serve(listener, store, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
