//! `vigil`: the command-line client.
//!
//! - `vigil inspect PATH...`: the factory line client (images in, verdicts out, exit code for
//!   the control software).
//! - `vigil up`: the embedded all-in-one: an edge server with the shipped model, fed with the
//!   sample images.
//! - `vigil bench`: a load generator comparing the server with raw ONNX Runtime.
//! - `vigil label`, `vigil query`: ground truth in, the prediction log out.
//! - `vigil metrics`, `vigil drift`, `vigil alerts`: the monitor's figures and alarms.

mod batch;
mod bench;
mod bench_h2load;
mod bench_voice;
mod connect;
mod database;
mod dataset;
mod demo;
mod deploy;
mod forget;
mod health;
mod images;
mod inspect;
mod kafka;
mod label;
mod migrate;
mod model;
mod monitoring;
mod query;
mod retrain;
mod review;
mod rollout;
mod speak;
mod token;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Vigil: run machine-learning models in production, at the factory edge and in the cloud.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connect: connect::ConnectOptions,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send images to an edge server and print each verdict (the factory line client).
    Inspect(inspect::InspectArgs),
    /// Run the embedded default: an edge server with the shipped model, fed with sample images.
    Up(up::UpArgs),
    /// Measure throughput and latency of the server against raw ONNX Runtime.
    Bench(bench::BenchArgs),
    /// Send ground-truth labels for predictions (one, or a CSV file) to the label topic.
    Label(label::LabelArgs),
    /// Query the prediction log (filters, pages of rows; table, CSV or JSON).
    Query(query::QueryArgs),
    /// Per-window metrics of a model from the monitor (traffic, errors, latency, verdicts).
    Metrics(monitoring::MetricsArgs),
    /// Data drift per feature and on the score, and accuracy from labels, from the monitor.
    Drift(monitoring::DriftArgs),
    /// Alarms from the monitor (exit code 1 while any is firing).
    Alerts(monitoring::AlertsArgs),
    /// Kafka administration: `vigil kafka init` creates Vigil's topics where missing.
    Kafka(kafka::KafkaArgs),
    /// The model registry: register, list, show and promote model versions.
    Model(model::ModelArgs),
    /// Who changed what in the registry, when and why (newest first).
    Audit(model::AuditArgs),
    /// What each model serves: shadow, canary, switch, rollback, status, policy.
    Deploy(deploy::DeployArgs),
    /// Progressive delivery: the monitor steps a candidate's canary up, or rolls it back, by itself.
    Rollout(rollout::RolloutArgs),
    /// The human review queue: claim the next item, submit a decision, see the queue.
    Review(review::ReviewArgs),
    /// Voice search from recordings: VAD here, only the speech to vigil-cloud, transcript and results back.
    Speak(speak::SpeakArgs),
    /// Batch prediction through vigil-cloud: recordings (voice search) or the rows of a CSV/Parquet table (--model).
    Batch(batch::BatchArgs),
    /// Voice search benchmark: VAD and recognition real-time factors, the user's wait at 1 and 8 streams.
    BenchVoice(bench_voice::VoiceBenchArgs),
    /// Datasets for retraining: a model's logged inputs with their labels, verified, versioned by content.
    Dataset(dataset::DatasetArgs),
    /// Retraining jobs: queue one (the monitor runs the model's recipe on its labelled data), follow, list, cancel, retry.
    Retrain(retrain::RetrainArgs),
    /// Bearer tokens for secured servers: `vigil token new --name line-3 --scope infer`.
    Token(token::TokenArgs),
    /// Delete every record of one station, device or part (predictions, labels, feedback, review items, captured inputs).
    Forget(forget::ForgetArgs),
    /// Apply the database migrations (the logger and the monitor also do at start).
    Migrate(migrate::MigrateArgs),
    /// Readiness probe: a server's gRPC health (or an HTTP /healthz); exit code 0 when serving.
    Health(health::HealthArgs),
    /// Play one of the seed's examples (phone-line, anti-spam, screening, recommender) end to end on this machine.
    Demo(demo::DemoArgs),
}

/// The servers this binary hosts in process (and the benchmark's client) allocate request buffers
/// at a high rate; mimalloc reuses them where glibc's malloc returned them to the kernel.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    connect::init(cli.connect.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return ExitCode::from(inspect::exit::USAGE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Inspect(args) => inspect::run(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Bench(args) => bench::run(args).await.map(|()| 0),
            Command::Label(args) => label::run(args).await,
            Command::Query(args) => query::run(args).await,
            Command::Metrics(args) => monitoring::metrics(args).await,
            Command::Drift(args) => monitoring::drift(args).await,
            Command::Kafka(args) => kafka::run(args).await,
            Command::Alerts(args) => monitoring::alerts(args).await,
            Command::Model(args) => model::run(args).await,
            Command::Audit(args) => model::audit(args).await,
            Command::Deploy(args) => deploy::run(args).await,
            Command::Rollout(args) => rollout::run(args).await,
            Command::Review(args) => review::run(args).await,
            Command::Speak(args) => speak::run(args).await,
            Command::Batch(args) => batch::run(args).await,
            Command::BenchVoice(args) => bench_voice::run(args).await.map(|()| 0),
            Command::Demo(args) => demo::run(args).await,
            Command::Dataset(args) => dataset::run(args).await,
            Command::Retrain(args) => retrain::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Forget(args) => forget::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Health(args) => health::run(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::from(inspect::exit::USAGE)
        }
    }
}
