//! `vigil-edge`: serve the models of a repository over gRPC at the factory edge.

use std::process::ExitCode;

use clap::Parser;
use vigil_edge::EdgeConfig;
use vigil_server::cli::ServerFlags;

/// Vigil's edge prediction server: Open Inference Protocol v2 and the inspection API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    flags: ServerFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing_with("info,ort=warn");
    let args = Args::parse();
    vigil_telemetry::exit_code("vigil-edge", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let figment = args.flags.figment(EdgeConfig::default(), vigil_edge::config::ENV_KEYS);
    let config: EdgeConfig = figment.extract().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let server = vigil_edge::start(config, true).await?;
    vigil_server::cli::announce("vigil-edge", &server);
    server.wait().await
}
