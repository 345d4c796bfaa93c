//! `vigil-cloud`: serve every model of a repository over gRPC in the cloud.

use std::process::ExitCode;

use clap::Parser;
use vigil_cloud::CloudConfig;
use vigil_server::cli::{ServerConfig, ServerFlags};

/// Vigil's cloud prediction server: many models over the Open Inference Protocol v2.
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
    vigil_telemetry::exit_code("vigil-cloud", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = CloudConfig::from_flags(&args.flags)?;
    let server = vigil_cloud::start(config, true, None).await?;
    vigil_server::cli::announce("vigil-cloud", &server);
    server.wait().await
}
