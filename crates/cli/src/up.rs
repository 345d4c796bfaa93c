//! `vigil up`: the embedded default on one box: an edge server with the shipped model, fed by
//! the line client with the sample images, every prediction logged to SQLite through an
//! in-process bus, then queried; the monitor watches the log and serves its dashboard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vigil_server::cli::ServerConfig;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_edge::EdgeConfig;
use vigil_logbus::Emitter;
use vigil_logger::LoggerStats;
use vigil_monitor::MonitorConfig;
use vigil_monitor::views::{Baseline, Scope, Views};
use vigil_serving::RecordEmitter;
use vigil_store::{MAX_QUERY_ROWS, PredictionFilter, PredictionStore, SqliteStore};

use vigil_server::Lifecycle;

use crate::inspect::{InspectArgs, connect, inspect_files};
use crate::query::{Format, print_rows};

/// The stages of `vigil up`, in the order they stop.
const EDGE: &str = "edge";
const RECORDS: &str = "records";
const MONITOR: &str = "monitor";

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Edge server configuration file (defaults serve ./models on loopback).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for the embedded server (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Folders of sample images to send (default: samples/normal and samples/drifted).
    #[arg(long)]
    pub samples: Vec<PathBuf>,
    /// Keep serving after the samples are inspected, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// The embedded prediction log (SQLite).
    #[arg(long, default_value = ".vigil/vigil.db")]
    pub database: PathBuf,
    /// Monitoring configuration (alarm rules, drift tests); deploy/monitor.toml when present.
    #[arg(long)]
    pub monitor_config: Option<PathBuf>,
    /// Address of the monitor's dashboard and /metrics (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8004")]
    pub dashboard: SocketAddr,
}

fn monitor_config(args: &UpArgs, models: &std::path::Path) -> Result<MonitorConfig> {
    let default = PathBuf::from("deploy/monitor.toml");
    let mut config = match &args.monitor_config {
        Some(path) => MonitorConfig::load(path)?,
        None if default.exists() => MonitorConfig::load(&default)?,
        None => MonitorConfig::default(),
    };
    config.models = models.to_path_buf();
    // Catch up within a second of the last sample, so the summary below sees every prediction.
    config.rollups.poll = Duration::from_millis(200);
    Ok(config)
}

/// Prints what the monitor saw: traffic, and drift of the last hour against the training reference.
async fn print_monitoring(views: &Views<SqliteStore>, model: &str) -> Result<()> {
    let scope = Scope { model: model.to_string(), version: None, variant: None };
    let until = chrono::Utc::now() + chrono::Duration::seconds(1);
    let since = until - chrono::Duration::hours(1);
    let total = views.total(&scope, since, until).await?;
    println!("\nmonitor: {} predictions of {model} in the last hour ({} errors)", total.count, total.errors);
    match views.drift(&scope, since, until, &Baseline::Training).await {
        Ok(report) => {
            println!("drift against the {}:", report.baseline);
            for f in report.features.iter().chain(&report.prediction) {
                let r = &f.result;
                let verdict = if r.drifted { "DRIFT" } else { "ok" };
                let method = serde_json::to_value(r.method)?;
                let method = method.as_str().unwrap_or("?");
                match r.p_value {
                    Some(p) => {
                        println!("  {:<11} {verdict:<5} {method} p={p:.3e} (threshold {})", f.feature, r.threshold)
                    }
                    None => println!(
                        "  {:<11} {verdict:<5} {method} {:.3} (threshold {})",
                        f.feature, r.statistic, r.threshold
                    ),
                }
            }
            let d = &report.dataset;
            println!(
                "  dataset drift: {} ({} of {} features)",
                if d.drifted { "yes" } else { "no" },
                d.drifted_features,
                d.total
            );
        }
        Err(e) => {
            println!("drift: {e}");
            return Err(e.into());
        }
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> Result<u8> {
    let mut config = EdgeConfig::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    config.listen = args.listen.parse().map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    config.metrics.listen = "127.0.0.1:0".parse()?;
    let samples = if args.samples.is_empty() {
        vec![PathBuf::from("samples/normal"), PathBuf::from("samples/drifted")]
    } else {
        args.samples.clone()
    };
    for s in &samples {
        if !s.exists() {
            bail!("sample folder {} not found; run from the repository root or pass --samples", s.display());
        }
    }
    // The embedded default: an in-process bus in place of Kafka, SQLite in place of Postgres,
    // through the same emitter, decoding and store interface as production.
    let store = SqliteStore::open(&args.database)
        .await
        .with_context(|| format!("cannot open the prediction log {}", args.database.display()))?;
    PredictionStore::migrate(&store).await.context("preparing the prediction log")?;
    let before = store.count_predictions().await?;
    let (sink, receiver) = vigil_logbus::in_process::channel(10_000);
    let (emitter, forwarder) = Emitter::start(sink, 100_000, 1_000);
    let policy = config.logging.policy.load().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let records = RecordEmitter::new(emitter.clone(), "embedded").with_policy(policy);
    let monitor_config = monitor_config(&args, &config.model_repository)?;
    let monitor_views = Views::new(
        store.clone(),
        Arc::new(vigil_monitor::Catalog::load(&monitor_config.models)?),
        Arc::new(monitor_config.clone()),
    );
    // Stops in order: the edge server drains, then the records it logged reach the log, then
    // the monitor.
    let mut lifecycle = Lifecycle::new();
    lifecycle.stage(EDGE, None).stage(RECORDS, None).stage(MONITOR, None);
    let dashboard = vigil_telemetry::bind_http(args.dashboard, "--dashboard").await?;
    let dashboard_url = format!("http://{}/", dashboard.local_addr()?);
    let monitor_grpc = vigil_monitor::bind("127.0.0.1:0".parse()?).await?;
    let monitor_grpc_addr = monitor_grpc.local_addr()?;
    let monitor = vigil_monitor::start(store.clone(), monitor_config, monitor_grpc, dashboard).await?;
    lifecycle.spawn(MONITOR, "monitor", move |stop| monitor.run_until(stop.stopped()));
    eprintln!("monitor: dashboard on {dashboard_url} (monitoring API on {monitor_grpc_addr})");
    let logger_stats = Arc::new(LoggerStats::default());
    // One batch at a time: SQLite has one writer.
    let batch =
        vigil_logger::BatchSettings { max_records: 1_000, max_wait_ms: 50, max_in_flight: 1, ..Default::default() };
    let logger = vigil_logger::embedded::run(receiver, store.clone(), batch, logger_stats.clone());
    let bus = emitter.clone();
    lifecycle.spawn(RECORDS, "embedded logger", move |stop| async move {
        tokio::pin!(logger);
        tokio::select! {
            () = &mut logger => anyhow::bail!("the embedded logger stopped"),
            () = stop.stopped() => {}
        }
        // The bus closes once every record handed over is forwarded; the logger then writes
        // what it holds and ends.
        if !bus.drain(Duration::from_secs(30)).await {
            tracing::warn!("records still on the in-process bus at exit");
        }
        drop(bus);
        forwarder.await.context("the record forwarder failed")?;
        logger.await;
        Ok(())
    });
    eprintln!("starting the edge server (model repository {}) ...", config.model_repository.display());
    // A server with TLS is reached over https, verified and authenticated by the same flags
    // as any command's (--ca-cert, --token, ...).
    let scheme = if config.security.tls.is_some() { "https" } else { "http" };
    let server = vigil_edge::start_with(config, false, Some(records)).await?;
    let mut addr = server.addr;
    // Listening on every interface: reach it on loopback, in the same address family.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("{scheme}://{addr}");
    let default_model = server.repository.models().first().map(|m| m.name.clone()).unwrap_or_default();
    for entry in server.repository.models() {
        eprintln!("  serving {} version {}", entry.name, entry.default_version);
    }
    lifecycle.spawn(EDGE, "edge server", move |stop| server.run_until(stop.stopped()));
    eprintln!("edge server listening on {url}");
    let mut inspected = 0;
    for folder in &samples {
        println!("\n== {} ==", folder.display());
        let (files, _) = crate::images::collect(std::slice::from_ref(folder))?;
        inspected += files.len();
        let inspect = InspectArgs {
            paths: vec![folder.clone()],
            server: url.clone(),
            station: "demo-line".into(),
            model: String::new(),
            concurrency: 4,
            json: false,
            timeout_ms: 10_000,
        };
        inspect_files(connect(&url).await?, &files, &inspect, true).await?;
    }
    // Every record handed over is in the log once the bus is drained and the logger has written
    // it; then rollup upkeep catches up, and the monitor's figures include every sample.
    emitter.drain(Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let scope = Scope { model: default_model.clone(), version: None, variant: None };
    let mut waited = None;
    while waited.is_none() {
        let until = chrono::Utc::now() + chrono::Duration::seconds(1);
        let stored = store.count_predictions().await?;
        let seen = monitor_views.total(&scope, until - chrono::Duration::days(3650), until).await?.count as i64;
        if stored - before >= inspected as i64 && seen >= stored {
            waited = Some(Ok(()));
        } else if std::time::Instant::now() >= deadline {
            waited = Some(Err(anyhow::anyhow!(
                "after 30 s the log holds {} of the {inspected} predictions and the monitor has seen {seen} of {stored}; the summary below is incomplete",
                stored - before
            )));
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let caught_up = waited.unwrap_or(Ok(()));
    if let Err(e) = &caught_up {
        eprintln!("vigil up: {e}");
    }
    let summary = print_monitoring(&monitor_views, &default_model).await;
    println!("dashboard: {dashboard_url}");
    // Only the logger's task holds the bus now: it closes once the records are forwarded.
    drop(emitter);
    if args.serve {
        eprintln!("\nserving on {url}, dashboard on {dashboard_url}; press Ctrl-C to stop");
        lifecycle.run_until(vigil_telemetry::termination()?).await?;
    } else {
        lifecycle.shutdown().await?;
    }
    let total = store.count_predictions().await?;
    let logged = total - before;
    let url = format!("sqlite://{}", args.database.display());
    println!("\n{logged} predictions logged to {} ({total} in all). The latest:", args.database.display());
    let mut recent = Vec::new();
    let mut filter = PredictionFilter { limit: MAX_QUERY_ROWS, ..Default::default() };
    loop {
        let page = store.query_predictions(&filter).await?;
        let full = page.len() as u32 == MAX_QUERY_ROWS;
        filter.after = page.last().map(|r| r.prediction_id);
        recent.extend(page);
        let keep = recent.len().saturating_sub(5);
        recent.drain(..keep);
        if !full {
            break;
        }
    }
    print_rows(&recent, Format::Table)?;
    println!("query it: vigil query --database-url {url} --verdict DEFECT");
    // What was promised and did not happen fails the run, after everything was shut down.
    caught_up?;
    summary.context("the monitoring summary failed")?;
    Ok(0)
}
