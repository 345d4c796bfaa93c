//! `vigil review`: the human review queue. `next` claims the oldest open item for a reviewer
//! (with a lease, so two reviewers never hold one item) and shows what the policy lets them
//! see; `submit` decides it, and the decision becomes the item's ground-truth label; `status`
//! shows the queue.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_store::{PredictionStore, ReviewError, ReviewOutcome, ReviewStore, RolloutStore};

#[derive(Args, Debug)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    #[command(subcommand)]
    pub command: ReviewCommand,
}

#[derive(Subcommand, Debug)]
pub enum ReviewCommand {
    /// Claim the oldest open item and show it (exit code 3 when none waits).
    Next {
        /// Who reviews (default: $USER).
        #[arg(long)]
        reviewer: Option<String>,
        /// Only items of this model.
        #[arg(long)]
        model: Option<String>,
        /// How long the claim holds, in seconds (at most an hour).
        #[arg(long, default_value_t = vigil_monitor::review::DEFAULT_LEASE_S,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(vigil_monitor::review::MAX_LEASE_S)))]
        lease_s: u32,
        /// Write the item's input (the image) to this file.
        #[arg(long)]
        save_input: Option<PathBuf>,
    },
    /// Decide an item: its label (e.g. ok, defect), stored as ground truth.
    Submit {
        /// The item's prediction id (from `vigil review next`).
        id: uuid::Uuid,
        label: String,
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// Items open, claimed and decided, and the age of the oldest open one.
    Status {
        #[arg(long)]
        model: Option<String>,
    },
}

/// Exit code of `vigil review next` when no item waits.
pub const NOTHING_TO_REVIEW: u8 = 3;

pub async fn run(args: ReviewArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    vigil_store::with_store!(backend, store => command(store, args.command).await)
}

async fn command<S: PredictionStore + ReviewStore + RolloutStore>(store: S, command: ReviewCommand) -> Result<u8> {
    store.migrate().await.context("preparing the review queue")?;
    // The database's clock, not this machine's: a claim's lease is read by every reviewer
    // against one clock, and the decision's label is timed as the monitor's are.
    let now = store.clock().await.context("reading the database's clock")?;
    match command {
        ReviewCommand::Next { reviewer, model, lease_s, save_input } => {
            let reviewer = crate::model::whoami(reviewer);
            let lease = chrono::Duration::seconds(i64::from(lease_s));
            let Some(item) = store.claim_review(&reviewer, model.as_deref(), lease, now).await? else {
                println!("no item waits for review");
                return Ok(NOTHING_TO_REVIEW);
            };
            println!("item        {}", item.prediction_id);
            println!("model       {} version {}", item.model_name, item.model_version);
            println!("station     {}  part {}", item.station_id, item.part_id);
            println!("queued      {}", item.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            println!("policy      {} ({})", item.policy, item.reason);
            match (&item.suggestion, item.score) {
                (Some(label), Some(score)) => println!("suggestion  {label} (score {score:.3})"),
                (Some(label), None) => println!("suggestion  {label}"),
                _ => println!("suggestion  (not shown under this policy)"),
            }
            let size = item.input.as_ref().map_or(0, Vec::len);
            match (&item.input, save_input) {
                (Some(input), Some(path)) => {
                    std::fs::write(&path, input).with_context(|| format!("--save-input {}", path.display()))?;
                    println!("input       {} ({size} bytes) written to {}", item.content_type, path.display());
                }
                (Some(_), None) => {
                    println!("input       {} ({size} bytes; --save-input FILE to see it)", item.content_type)
                }
                (None, _) => println!("input       (none carried)"),
            }
            println!(
                "claimed by  {reviewer} until {}",
                item.claimed_until.unwrap_or(now).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(0)
        }
        ReviewCommand::Submit { id, label, reviewer } => {
            let reviewer = crate::model::whoami(reviewer);
            match store.submit_review(id, &reviewer, label.trim(), now).await {
                Ok(ReviewOutcome::Decided { decision }) if decision == label.trim() => {
                    println!("{id}: {decision} by {reviewer}, stored as its label");
                    Ok(0)
                }
                Ok(ReviewOutcome::Decided { decision }) => {
                    println!("{id}: {} by {reviewer}; the panel decided {decision}, stored as its label", label.trim());
                    Ok(0)
                }
                Ok(ReviewOutcome::Awaiting { decisions, required }) => {
                    println!(
                        "{id}: {} by {reviewer} recorded; {decisions} of {required} reviewers have decided",
                        label.trim()
                    );
                    Ok(0)
                }
                Err(ReviewError::Database(e)) => Err(e.into()),
                Err(refused) => {
                    eprintln!("vigil: {refused}");
                    Ok(1)
                }
            }
        }
        ReviewCommand::Status { model } => {
            let s = store.review_stats(model.as_deref(), now).await?;
            let age = s.oldest_open.map_or("-".into(), |t| format!("{} s", (now - t).num_seconds()));
            println!("open {}  claimed {}  decided {}  oldest open {age}", s.open, s.claimed, s.decided);
            Ok(0)
        }
    }
}
