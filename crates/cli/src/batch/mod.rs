//! `vigil batch`: prediction over many inputs at once beside realtime, through the cloud
//! server, so every item is logged as realtime traffic is. Recordings (WAV files, folders of
//! them, or a table listing them) go through voice search; the rows of a table (CSV or Parquet)
//! are scored by a model with OIP `ModelInfer`. Results are JSON lines in input order, with
//! progress on stderr and a summary at the end. `--in-process` serves from a vigil-cloud started
//! in this process, so a batch needs no running server and still logs every item.

mod recordings;
mod rows;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::speak::SpeakOptions;
pub use table::{Cell, Table};

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Recordings (16 kHz WAV files or folders of them) for voice search, or one table (.csv or
    /// .parquet): its rows scored by --model, or, with a `path` column (and optionally `text`,
    /// what was said), the recordings it lists.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Score each row of the table with this model (OIP ModelInfer on the cloud server).
    #[arg(long)]
    pub model: Option<String>,
    /// The table's columns fed to the model, in the order of its input (default: the columns the
    /// model names, else every numeric column but the id).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// The column identifying each row in the output (default: `id` when there is one).
    #[arg(long)]
    pub id_column: Option<String>,
    /// Rows per ModelInfer request (at most the model's max_batch_size).
    #[arg(long, default_value_t = 64)]
    pub rows_per_request: usize,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Requests (or recordings) in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Serve in this process instead of calling --server: a vigil-cloud started here on a free
    /// loopback port, configured by --config (its [logging] sends the records to Kafka as a
    /// server would) and --model-repository, and stopped once every record is handed over.
    #[arg(long)]
    pub in_process: bool,
    /// vigil-cloud configuration file for --in-process (e.g. deploy/cloud.toml).
    #[arg(long, requires = "in_process")]
    pub config: Option<PathBuf>,
    /// Model repository for --in-process (default: the configuration's).
    #[arg(long, requires = "in_process")]
    pub model_repository: Option<PathBuf>,
    #[command(flatten)]
    pub speak: SpeakOptions,
}

pub async fn run(mut args: BatchArgs) -> Result<u8> {
    if args.concurrency == 0 || args.rows_per_request == 0 {
        bail!("--concurrency and --rows-per-request must be at least 1");
    }
    if !args.in_process {
        return score(&args).await;
    }
    let server = start_in_process(&args).await?;
    args.speak.server = format!("http://{}", server.addr);
    let outcome = score(&args).await;
    // Shutting down drains the records still queued for Kafka (or the spool).
    server.shutdown().await.context("stopping the in-process server")?;
    outcome
}

/// A vigil-cloud in this process, on a free loopback port, without `/metrics`.
async fn start_in_process(args: &BatchArgs) -> Result<vigil_cloud::RunningServer> {
    use vigil_server::cli::{ServerConfig, ServerFlags};
    let flags = ServerFlags {
        config: args.config.clone(),
        listen: Some("127.0.0.1:0".into()),
        model_repository: args.model_repository.clone(),
        ..ServerFlags::default()
    };
    let mut config = vigil_cloud::CloudConfig::from_flags(&flags).context("--in-process")?;
    config.metrics.enabled = false;
    if args.model.is_some() {
        // Scoring a table needs no catalog.
        config.voice_search.enabled = false;
    }
    vigil_cloud::start(config, false, None).await.context("starting the in-process server")
}

async fn score(args: &BatchArgs) -> Result<u8> {
    let tables: Vec<&PathBuf> = args.inputs.iter().filter(|p| Table::is_table(p)).collect();
    match (tables.as_slice(), &args.model) {
        ([], Some(model)) => bail!("--model {model} scores the rows of a table: give one .csv or .parquet file"),
        ([], None) => recordings::run(recordings::from_paths(&args.inputs)?, args).await,
        ([path], _) if args.inputs.len() == 1 => {
            let table = Table::read(path)?;
            match &args.model {
                Some(model) => rows::run(&table, model, args).await,
                None => recordings::run(recordings::from_table(&table, path)?, args).await,
            }
        }
        _ => bail!("give recordings, or one table: not a table together with other inputs"),
    }
}

/// Where the JSON lines go: `--output` or stdout.
fn output(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    })
}

/// A progress bar on stderr counting `unit`.
fn progress(len: usize, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
