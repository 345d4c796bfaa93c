//! What every Vigil service shares: a Prometheus registry served at `/metrics` (with process
//! memory and CPU), the logging set-up, and the error-to-exit-code wrapper of `main`.

pub mod process;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use process::ProcessCollector;
pub use prometheus_client;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry with the process collector already in it.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ProcessCollector));
    r
}

/// A router answering `GET /metrics` from `registry` and `GET /healthz` (200 while the process
/// serves: a liveness probe); merge it with a service's own routes.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response(),
                }
            }
        }),
    )
}

/// Binds an HTTP listener, with an error that names the flag to change.
pub async fn bind_http(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (in use? set {flag})"))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.context("HTTP server failed")
}

/// Logs to stderr, filtered by `VIGIL_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with("info");
}

/// Logs to stderr, filtered by `VIGIL_LOG`, else by `default` (e.g. `info,ort=warn`).
pub fn init_tracing_with(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
}

/// Turns a service's result into its exit code: 0, or a one-line error and 2.
pub fn exit_code(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed before this returns, so a signal
/// that arrives while the service starts is not lost.
pub fn termination() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// In a `/metrics` text, the sum of the samples of `name` whose labels include `labels`; None
/// when there is none (for checks and scrapers; label values must not contain commas).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let pairs: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if series_name == name && labels.iter().all(|l| pairs.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// The header every benchmark prints before its table: the command as run, the commit it was
/// built from (with `+changes` when the tree differs from it), and the machine's cores, so a
/// table in the README can be traced to the run that printed it.
pub fn benchmark_header() -> String {
    let command: Vec<String> = std::env::args().collect();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("command: {}\ncommit: {commit}{}\ncores: {cores}\n", command.join(" "), if dirty { "+changes" } else { "" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_the_samples_whose_labels_match() {
        let text = "# TYPE r counter\nr_total{model=\"m\",status=\"Ok\"} 3\nr_total{model=\"m\",status=\"NotFound\"} 1\n\
                    r_total{model=\"n\",status=\"Ok\"} 2\ng 7.5\n";
        assert_eq!(super::sample(text, "r_total", &[("status", "Ok")]), Some(5.0));
        assert_eq!(super::sample(text, "r_total", &[("model", "m"), ("status", "Ok")]), Some(3.0));
        assert_eq!(super::sample(text, "g", &[]), Some(7.5));
        assert_eq!(super::sample(text, "missing", &[]), None);
    }
}
