//! `vigil dataset export`: a model's logged inputs joined with their labels, verified, written as
//! a content-addressed dataset (see `vigil_datasets`), or refused with the checks that failed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_datasets::{Export, Limits, OnProgress, Progress, Spec};
use vigil_store::{Backend, PredictionStore, ReviewStore};

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Verifies and writes a model's logged inputs with their labels as a dataset.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The prediction log: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true, default_value = "postgres://127.0.0.1/vigil")]
    database_url: String,
    #[arg(long)]
    model: String,
    /// One version only (default: every version).
    #[arg(long)]
    version: Option<String>,
    /// From this time: RFC 3339 or an age (30m, 6h, 7d).
    #[arg(long, default_value = "7d")]
    since: String,
    /// Before this time (same forms; default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only items with a ground-truth label.
    #[arg(long)]
    only_labelled: bool,
    /// Where the dataset's directory is written.
    #[arg(long, default_value = "datasets")]
    out: PathBuf,
    /// The capture store the servers keep raw inputs in (file:///dir, a path, or
    /// s3://bucket/prefix with AWS_ENDPOINT_URL and credentials in the environment): the rows'
    /// captured inputs are copied into the dataset, each checked against its hash.
    #[arg(long)]
    captures: Option<String>,
    /// The most any input column may be missing (share of items).
    #[arg(long, default_value_t = Limits::default().max_missing_share)]
    max_missing_share: f64,
    /// The most items may repeat another's inputs exactly (share of items).
    #[arg(long, default_value_t = Limits::default().max_duplicate_share)]
    max_duplicate_share: f64,
    /// Every class's least share of the labelled items.
    #[arg(long, default_value_t = Limits::default().min_class_share)]
    min_class_share: f64,
    /// The least Fleiss' kappa among items several people labelled.
    #[arg(long, default_value_t = Limits::default().min_kappa)]
    min_kappa: f64,
    /// The most captured inputs may be missing from the capture store or not match their hash
    /// (share of the captured inputs): their rows are kept without their input.
    #[arg(long, default_value_t = Limits::default().max_lost_capture_share)]
    max_lost_capture_share: f64,
}

/// Shows an export's progress on `bar` (on a terminal only): rows read, then inputs fetched.
fn shown(bar: &indicatif::ProgressBar) -> OnProgress {
    let bar = bar.clone();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    OnProgress(std::sync::Arc::new(move |progress| match progress {
        Progress::Rows(rows) => {
            bar.set_message(format!("{rows} rows read from the log"));
        }
        Progress::Inputs { fetched, of } => {
            bar.set_message(format!("{fetched}/{of} captured inputs fetched"));
        }
    }))
}

/// Exit code of a dataset refused by its checks.
pub const REFUSED: u8 = 1;

pub async fn run(args: DatasetArgs) -> Result<u8> {
    let DatasetCommand::Export(args) = args.command;
    let backend = Backend::connect(&args.database_url)
        .await
        .with_context(|| format!("--database-url {}", crate::query::redact(&args.database_url)))?;
    vigil_store::with_store!(backend, store => export(store, args).await)
}

async fn export<S: PredictionStore + ReviewStore>(store: S, args: ExportArgs) -> Result<u8> {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let now = chrono::Utc::now();
    let since = crate::query::parse_time(&args.since, now).context("--since")?;
    let until =
        args.until.as_deref().map(|t| crate::query::parse_time(t, now)).transpose().context("--until")?.unwrap_or(now);
    if !(0.0..=1.0).contains(&args.max_lost_capture_share) {
        anyhow::bail!("--max-lost-capture-share {}: a share, from 0 to 1", args.max_lost_capture_share);
    }
    let spec = Spec {
        model: args.model.clone(),
        version: args.version,
        since,
        until,
        only_labelled: args.only_labelled,
        limits: Limits {
            max_missing_share: args.max_missing_share,
            max_duplicate_share: args.max_duplicate_share,
            min_class_share: args.min_class_share,
            min_kappa: args.min_kappa,
            max_lost_capture_share: args.max_lost_capture_share,
        },
        out: args.out,
        captures: args.captures.as_deref().map(vigil_datasets::Captures::open).transpose().context("--captures")?,
        progress: Some(shown(&bar)),
    };
    let print = |checks: &[vigil_datasets::Check]| {
        for c in checks {
            println!("{:<18} {}  {}", c.name, if c.passed { "ok    " } else { "FAILED" }, c.detail);
        }
    };
    let exported = vigil_datasets::export(&store, &spec).await;
    bar.finish_and_clear();
    match exported? {
        Export::Empty => {
            eprintln!("vigil: no predictions of {} in that range", args.model);
            Ok(REFUSED)
        }
        Export::Refused { checks, failed } => {
            print(&checks);
            eprintln!("vigil: dataset refused ({}); nothing written", failed.join(", "));
            Ok(REFUSED)
        }
        Export::Written(dataset) => {
            print(&dataset.checks);
            println!("{} items ({} labelled) written to {}", dataset.rows, dataset.labelled, dataset.dir.display());
            Ok(0)
        }
    }
}
