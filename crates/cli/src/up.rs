//! `vigil up`: the embedded default on one box: an edge server with the shipped model, fed by
//! the line client with the sample images, every prediction logged to SQLite through an
//! in-process bus, then queried.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_edge::EdgeConfig;
use vigil_logbus::Emitter;
use vigil_logger::LoggerStats;
use vigil_serving::RecordEmitter;
use vigil_store::{MAX_QUERY_ROWS, PredictionFilter, PredictionStore, SqliteStore};

use crate::inspect::{InspectArgs, connect, inspect_files};
use crate::query::{Format, print_rows};

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
}

pub async fn run(args: UpArgs) -> Result<u8> {
    let mut config = EdgeConfig::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    config.listen = args.listen.parse().map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
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
    let (emitter, _forwarder) = Emitter::start(sink, 100_000, 1_000);
    let records = RecordEmitter::new(emitter.clone(), "embedded");
    let logger_stats = Arc::new(LoggerStats::default());
    let logger = tokio::spawn(vigil_logger::embedded::run(
        receiver,
        store.clone(),
        1_000,
        Duration::from_millis(50),
        logger_stats.clone(),
    ));
    eprintln!("starting the edge server (model repository {}) ...", config.model_repository.display());
    let server = vigil_edge::start_with(config, args.serve, Some(records)).await?;
    let url = format!("http://{}", server.addr);
    for entry in server.repository.models() {
        eprintln!("  serving {} version {}", entry.name, entry.default_version);
    }
    eprintln!("edge server listening on {url}");
    for folder in &samples {
        println!("\n== {} ==", folder.display());
        let (files, _) = crate::images::collect(std::slice::from_ref(folder))?;
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
    if args.serve {
        eprintln!("\nserving on {url}; press Ctrl-C to stop");
        server.wait().await?;
    } else {
        server.shutdown().await?;
    }
    // Every record handed over is in the log once the bus is drained.
    emitter.drain(Duration::from_secs(30)).await;
    drop(emitter);
    logger.await.context("the embedded logger stopped")?;
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
    print_rows(&recent, Format::Table);
    println!("query it: vigil query --database-url {url} --verdict DEFECT");
    Ok(0)
}
