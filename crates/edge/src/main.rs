//! `vigil-edge`: serve the models of a repository over gRPC at the factory edge.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use figment::providers::Serialized;
use vigil_edge::EdgeConfig;

/// Vigil's edge prediction server: Open Inference Protocol v2 and the inspection API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (values can be overridden by VIGIL_... variables and flags).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8001 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Address of the Prometheus /metrics endpoint, e.g. 127.0.0.1:9102 (port 0 picks a free port).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Model repository directory (<name>/<version>/model.onnx + model.toml).
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// ONNX Runtime shared library (libonnxruntime.so).
    #[arg(long)]
    onnxruntime_lib: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    vigil_telemetry::init_tracing_with("info,ort=warn");
    let args = Args::parse();
    vigil_telemetry::exit_code("vigil-edge", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut figment = EdgeConfig::figment(args.config.as_deref());
    if let Some(listen) = &args.listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    if let Some(metrics_listen) = &args.metrics_listen {
        figment = figment.merge(Serialized::default("metrics.listen", metrics_listen));
    }
    if let Some(repo) = &args.model_repository {
        figment = figment.merge(Serialized::default("model_repository", repo));
    }
    if let Some(lib) = &args.onnxruntime_lib {
        figment = figment.merge(Serialized::default("onnxruntime_lib", lib));
    }
    let config: EdgeConfig = figment.extract().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let server = vigil_edge::start(config, true).await?;
    let models: Vec<String> =
        server.repository.models().iter().map(|m| format!("{}@{}", m.name, m.default_version)).collect();
    // The first stdout line is machine-readable: scripts and tests wait for it.
    let metrics = server.metrics_addr.map(|a| format!(" (metrics on http://{a}/metrics)")).unwrap_or_default();
    println!("vigil-edge listening on {}{metrics} serving {}", server.addr, models.join(", "));
    server.wait().await
}
