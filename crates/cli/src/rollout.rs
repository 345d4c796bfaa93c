//! `vigil rollout`: hand a candidate to the monitor's rollout controller, which steps its
//! canary share up as long as it does as well as the primary and rolls it back at the first
//! step where it does not; see where each rollout stands and why; pause, resume, promote or
//! abort one by hand. Every change is an audit event.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vigil_monitor::rollout::{self, Manual};
use vigil_store::{Change, MonitorStore, PredictionStore, RolloutRow, RolloutStep, StepMode};

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Who makes the change (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
    /// Why, for the audit log.
    #[arg(long, default_value = "", global = true)]
    pub reason: String,
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Roll a registered version out from the model's current primary, step by step.
    Start {
        model: String,
        #[arg(long)]
        candidate: String,
        /// The candidate's share of routing keys at each step, percent, rising to 100.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<f64>,
        /// Each step lasts at least this long (e.g. 10m, 1h).
        #[arg(long, default_value = "10m")]
        step_duration: humantime::Duration,
        /// ... and until the candidate answered this many requests in it.
        #[arg(long, default_value_t = 500)]
        min_requests: u64,
        /// A step still without a verdict this long after it started pauses for a person
        /// (e.g. 2h); unset: it waits for its requests however long it takes.
        #[arg(long)]
        step_deadline: Option<humantime::Duration>,
        /// First mirror every request to the candidate for this long (a shadow step judged
        /// like the others, with its agreement with the primary), e.g. 30m.
        #[arg(long)]
        shadow: Option<humantime::Duration>,
    },
    /// Every rollout (or one model's), newest first, with its last decision.
    Status { model: Option<String> },
    /// Hold the current step; the controller leaves the rollout alone.
    Pause { model: String },
    /// Judge the current step again, its window starting now.
    Resume { model: String },
    /// Skip the remaining steps: the candidate becomes the primary.
    Promote { model: String },
    /// Stop: all traffic back to the primary.
    Abort { model: String },
}

pub async fn run(args: RolloutArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    vigil_store::with_store!(backend, store => command(store, args).await)
}

/// The plan of `start`: shares in percent to steps.
fn plan(
    steps: &[f64],
    duration: std::time::Duration,
    min_requests: u64,
    deadline: Option<std::time::Duration>,
    shadow: Option<std::time::Duration>,
) -> Result<Vec<RolloutStep>> {
    let steps: Vec<RolloutStep> = steps
        .iter()
        .map(|&percent| RolloutStep {
            share: (percent * 10.0).round() / 1000.0,
            min_duration_s: duration.as_secs(),
            min_requests,
            max_duration_s: deadline.map(|d| d.as_secs()),
            mode: StepMode::Canary,
            approval: false,
        })
        .collect();
    let steps = match shadow {
        // A first step mirroring every request to the candidate, judged as the others.
        Some(d) => std::iter::once(RolloutStep {
            share: 1.0,
            mode: StepMode::Shadow,
            min_duration_s: d.as_secs(),
            max_duration_s: None,
            ..steps[0]
        })
        .chain(steps)
        .collect(),
        None => steps,
    };
    vigil_store::registry::rollouts::validate_plan(&steps).map_err(|e| anyhow::anyhow!("--steps: {e}"))?;
    Ok(steps)
}

async fn command<S: PredictionStore + MonitorStore>(store: S, args: RolloutArgs) -> Result<u8> {
    store.migrate().await.context("preparing the rollout tables")?;
    let actor = crate::model::whoami(args.by.clone());
    // The database's clock, not this machine's: an operator's machine may be minutes off, and
    // a started or resumed step's window is judged against the servers' times.
    let at = store.clock().await.context("reading the database's clock")?;
    let change = Change { actor: &actor, reason: &args.reason, at };
    let (model, action) = match args.command {
        RolloutCommand::Start { model, candidate, steps, step_duration, min_requests, step_deadline, shadow } => {
            let deadline = step_deadline.map(Into::into);
            let steps = plan(&steps, step_duration.into(), min_requests, deadline, shadow.map(Into::into))?;
            let r = rollout::start(&store, &model, &candidate, &steps, &change).await?;
            println!("{}", describe(&r));
            return Ok(0);
        }
        RolloutCommand::Status { model } => {
            let rollouts = store.rollouts(model.as_deref()).await?;
            if rollouts.is_empty() {
                println!("no rollouts{}", model.map(|m| format!(" of {m}")).unwrap_or_default());
            }
            for r in &rollouts {
                println!("{}", describe(r));
            }
            return Ok(0);
        }
        RolloutCommand::Pause { model } => (model, Manual::Pause),
        RolloutCommand::Resume { model } => (model, Manual::Resume),
        RolloutCommand::Promote { model } => (model, Manual::Promote),
        RolloutCommand::Abort { model } => (model, Manual::Abort),
    };
    if args.reason.is_empty() && matches!(action, Manual::Promote | Manual::Abort) {
        bail!("--reason is required to promote or abort by hand (it goes into the audit log)");
    }
    let r = rollout::manual(&store, &model, action, &change).await?;
    println!("{}", describe(&r));
    Ok(0)
}

/// `scratch-detector 1 -> 2: running, step 2 of 5 (5%) since ...; last: next_step (error_rate ok, ...)`.
fn describe(r: &RolloutRow) -> String {
    let steps = r.steps().unwrap_or_default();
    let (share, mode) = steps.get(r.step as usize).map_or((0.0, StepMode::Canary), |s| (s.share * 100.0, s.mode));
    let mode = if mode == StepMode::Shadow { "shadow " } else { "" };
    let mut line = format!(
        "{} {} -> {}: {}, step {} of {} ({mode}{share}%) since {}",
        r.model_name,
        r.primary_version,
        r.candidate_version,
        r.state,
        r.step + 1,
        steps.len(),
        r.step_started_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let decisions = r.decisions();
    if let Some(last) = decisions.last() {
        let checks: Vec<String> = rollout::decision_checks(r, decisions.len() - 1)
            .into_iter()
            .map(|c| format!("{} {}", c.name, if c.passed { "ok" } else { "FAILED" }))
            .collect();
        line += &format!("; last decision: {}", last["decision"].as_str().unwrap_or("?"));
        if !checks.is_empty() {
            line += &format!(" ({})", checks.join(", "));
        }
    }
    line
}
