//! `vigil up`: the embedded default on one box: an edge server with the shipped model, fed by
//! the line client with the sample images.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use vigil_edge::EdgeConfig;

use crate::inspect::{InspectArgs, connect, inspect_files};

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
    eprintln!("starting the edge server (model repository {}) ...", config.model_repository.display());
    let server = vigil_edge::start(config, args.serve).await?;
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
    Ok(0)
}
