//! `vigil retrain`: queue a retraining job of a model (the monitor holding the alerting lease runs
//! it: dataset, recipe, candidate, and its rollout with `--rollout`), follow it, list, show,
//! cancel or retry jobs. Every change is an audit event.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use vigil_store::{Change, MonitorStore, PredictionStore, RetrainJob};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RetrainArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Who asks (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
    #[command(subcommand)]
    pub command: Option<RetrainCommand>,
    #[command(flatten)]
    pub start: StartArgs,
}

/// `vigil retrain --model M`: queue a job.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The model to retrain (its recipe in the monitor's [retraining.models.<model>]).
    #[arg(long)]
    pub model: Option<String>,
    /// A dataset written by `vigil dataset export` (default: the monitor exports the labelled
    /// items of the model's dataset window when the job runs).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Roll the candidate out (shadow, then canary steps) when the job succeeds.
    #[arg(long)]
    pub rollout: bool,
    /// Follow the job until it ends; exit 1 when it does not succeed.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum RetrainCommand {
    /// Jobs, newest first (every model's, or one's).
    List { model: Option<String> },
    /// One job, with its log.
    Show { job: String },
    /// Cancel a queued job, or stop a running one.
    Cancel { job: String },
    /// Queue a job again with what a failed or cancelled one was given.
    Retry {
        job: String,
        #[arg(long)]
        wait: bool,
    },
    /// Run queued jobs here, one after another until none is left, for a monitor configured
    /// with `[retraining] runner = "external"` (a Kubernetes Job with the training stack);
    /// exit 1 when one did not succeed. Run one worker at a time.
    Work {
        /// The monitor's configuration: its [retraining] section and model repository.
        #[arg(long, env = "VIGIL_MONITOR_CONFIG")]
        config: std::path::PathBuf,
        /// Run at most this many jobs.
        #[arg(long)]
        max_jobs: Option<usize>,
    },
}

/// Exit code of a job followed to an end other than success.
const NOT_SUCCEEDED: u8 = 1;

pub async fn run(args: RetrainArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    vigil_store::with_store!(backend, store => command(store, args).await)
}

async fn command<S: PredictionStore + MonitorStore>(store: S, args: RetrainArgs) -> Result<u8> {
    store.migrate().await.context("preparing the retraining tables")?;
    let actor = crate::model::whoami(args.by.clone());
    let change = Change { actor: &actor, reason: "manual", at: Utc::now() };
    let (job, wait) = match args.command {
        None => {
            let StartArgs { model, dataset, rollout, wait } = args.start;
            let Some(model) = model else { bail!("give --model MODEL, or a subcommand (see `vigil retrain --help`)") };
            let dataset = match dataset {
                Some(dir) => {
                    vigil_datasets::manifest_of(&dir, &model)?;
                    std::path::absolute(&dir)?.display().to_string()
                }
                None => String::new(),
            };
            let job = RetrainJob::queued(&model, "manual", &dataset, rollout, &change);
            store.enqueue_retrain(&job).await?;
            println!(
                "queued retraining job {} of {model}; the monitor runs it (`vigil retrain show {}`)",
                job.job_id, job.job_id
            );
            (job, wait)
        }
        Some(RetrainCommand::List { model }) => {
            let jobs = store.retrain_jobs(model.as_deref(), 50).await?;
            if jobs.is_empty() {
                println!("no retraining jobs{}", model.map(|m| format!(" of {m}")).unwrap_or_default());
            }
            for job in &jobs {
                println!("{}", describe(job));
            }
            return Ok(0);
        }
        Some(RetrainCommand::Show { job }) => {
            let job = find(&store, &job).await?;
            println!("{}", describe(&job));
            for (name, value) in
                [("trigger", &job.trigger), ("requested by", &job.requested_by), ("dataset", &job.dataset)]
            {
                println!("{name:<13} {value}");
            }
            if !job.error.is_empty() {
                println!("{:<13} {}", "error", job.error);
            }
            if !job.log.is_empty() {
                println!("--- log (tail) ---\n{}", job.log.trim_end());
            }
            return Ok(0);
        }
        Some(RetrainCommand::Work { config, max_jobs }) => return work(store, &config, max_jobs).await,
        Some(RetrainCommand::Cancel { job }) => {
            let job = store.cancel_retrain(&job, &change).await?;
            println!("{}", describe(&job));
            return Ok(0);
        }
        Some(RetrainCommand::Retry { job, wait }) => {
            let old = find(&store, &job).await?;
            if old.is_active() || old.state == "succeeded" {
                bail!("job {} {}: only a failed or cancelled job is retried", old.job_id, old.state);
            }
            let job = RetrainJob::queued(
                &old.model_name,
                &format!("retry of {}", old.job_id),
                &old.dataset,
                old.rollout,
                &change,
            );
            store.enqueue_retrain(&job).await?;
            println!("queued retraining job {} of {} (a retry of {})", job.job_id, job.model_name, old.job_id);
            (job, wait)
        }
    };
    if !wait {
        return Ok(0);
    }
    follow(&store, &job.job_id).await
}

/// Prints each new step of a job until it ends; its exit code.
async fn follow<S: MonitorStore>(store: &S, job_id: &str) -> Result<u8> {
    let mut shown = String::new();
    loop {
        let job = find(store, job_id).await?;
        let line = format!("{:>3.0}%  {}  {}", job.progress * 100.0, job.state, job.step);
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if !job.is_active() {
            println!("{}", describe(&job));
            if !job.error.is_empty() {
                eprintln!("vigil: {}", job.error);
            }
            return Ok(if job.state == "succeeded" { 0 } else { NOT_SUCCEEDED });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn find<S: MonitorStore>(store: &S, job_id: &str) -> Result<RetrainJob> {
    store.retrain_job(job_id).await?.with_context(|| format!("no retraining job {job_id} (see `vigil retrain list`)"))
}

/// `0193... screening succeeded 100% (version 2) in 12.3 s, alarm accuracy-low`.
async fn work<S: PredictionStore + MonitorStore>(
    store: S,
    config: &std::path::Path,
    max_jobs: Option<usize>,
) -> Result<u8> {
    let config = vigil_monitor::MonitorConfig::load(config)?;
    if config.retraining.runner != vigil_monitor::retrain::RunnerPlace::External {
        eprintln!(
            "warning: [retraining] runner is not \"external\": a leading monitor holds the retraining lease and runs the queue itself"
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
    });
    let Some(ran) =
        vigil_monitor::retrain::runner::work(store, config.retraining, config.models, max_jobs, stopped).await?
    else {
        println!(
            "another runner holds the retraining lease (a `vigil retrain work`, or a monitor that runs jobs): leaving the queue to it"
        );
        return Ok(0);
    };
    if ran.is_empty() {
        println!("no queued retraining jobs");
    }
    for job in &ran {
        println!("{}", describe(job));
    }
    Ok(if ran.iter().all(|j| j.state == "succeeded") { 0 } else { NOT_SUCCEEDED })
}

fn describe(job: &RetrainJob) -> String {
    let mut line = format!("{} {} {} {:.0}%", job.job_id, job.model_name, job.state, job.progress * 100.0);
    if let Some(v) = &job.candidate_version {
        line += &format!(" (version {v})");
    }
    if let Some(d) = job.duration(Utc::now()) {
        line += &format!(" in {:.1} s", d.num_milliseconds() as f64 / 1000.0);
    }
    line += &format!(", {} by {} at {}", job.trigger, job.requested_by, job.created_at.format("%Y-%m-%d %H:%M:%S UTC"));
    if job.cancel_requested && job.is_active() {
        line += ", cancel requested";
    }
    line
}
