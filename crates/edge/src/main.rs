//! `vigil-edge`: serve the models of a repository over gRPC at the factory edge.

use std::process::ExitCode;

use clap::Parser;
use vigil_edge::EdgeConfig;
use vigil_server::cli::{ServerConfig, ServerFlags};

/// Vigil's edge prediction server: Open Inference Protocol v2 and the inspection API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    flags: ServerFlags,
}

/// mimalloc keeps freed request buffers for reuse, where glibc's malloc handed them back to the
/// kernel (madvise) and faulted them in again on the next request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing_with("info,ort=warn");
    let args = Args::parse();
    vigil_telemetry::exit_code("vigil-edge", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = EdgeConfig::from_flags(&args.flags)?;
    let server = vigil_edge::start(config, true).await?;
    vigil_server::cli::announce("vigil-edge", &server);
    server.wait().await
}
