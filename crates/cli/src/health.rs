//! `vigil health`: a readiness probe for containers and orchestrators. Asks a server's
//! `grpc.health.v1.Health/Check` (every Vigil gRPC server answers it, without a token), or
//! `GET /healthz` on an HTTP port (the logger's and every /metrics port); exit code 0 when
//! serving, 1 when not, 2 when the address or flags are wrong.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Exit code when the server answers but is not serving, or does not answer in time.
pub const NOT_SERVING: u8 = 1;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// A gRPC server (http:// or https://, e.g. http://127.0.0.1:8001), or with --http an
    /// HTTP endpoint (e.g. http://127.0.0.1:9103/healthz).
    pub url: String,
    /// The gRPC service to ask about ("" is the server as a whole).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Check an HTTP endpoint (200 is healthy) instead of gRPC health.
    #[arg(long)]
    pub http: bool,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=crate::bench::MAX_TIMEOUT_MS))]
    pub timeout_ms: u64,
}

pub async fn run(args: HealthArgs) -> Result<u8> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let status = if args.http { http(&args.url, timeout).await? } else { grpc(&args, timeout).await? };
    println!("{status}");
    Ok(if status == "SERVING" { 0 } else { NOT_SERVING })
}

async fn grpc(args: &HealthArgs, timeout: Duration) -> Result<String> {
    let security = crate::connect::security();
    let endpoint = security
        .endpoint(&args.url)
        .with_context(|| format!("invalid server address '{}' (expected e.g. http://127.0.0.1:8001)", args.url))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match security.connect_endpoint(endpoint).await {
        Ok(channel) => channel,
        Err(e) => return Ok(format!("UNREACHABLE ({e:#})")),
    };
    let request = HealthCheckRequest { service: args.service.clone() };
    match HealthClient::new(channel).check(request).await {
        Ok(answer) => {
            let status = ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown);
            Ok(status.as_str_name().to_string())
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            bail!("the server knows no service '{}'", args.service)
        }
        Err(status) => Ok(format!("UNHEALTHY ({:?}: {})", status.code(), status.message())),
    }
}

async fn http(url: &str, timeout: Duration) -> Result<String> {
    if !url.starts_with("http://") {
        bail!("--http takes an http:// address (for TLS ports, ask the server's gRPC health)");
    }
    let client = reqwest::Client::builder().timeout(timeout).build().context("HTTP client")?;
    Ok(match client.get(url).send().await {
        Ok(response) if response.status().is_success() => "SERVING".to_string(),
        Ok(response) => format!("NOT_SERVING (HTTP {})", response.status()),
        Err(e) => format!("UNREACHABLE ({e})"),
    })
}
