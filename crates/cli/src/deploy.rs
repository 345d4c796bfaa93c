//! `vigil deploy`: what each model serves. Shadow a candidate, send it a canary share of the
//! routing keys, switch all traffic to a version (blue-green; the previous one is kept to roll
//! back to), roll back, and show the state. Servers following the store pick changes up within
//! their poll interval; every change is an audit event. `vigil deploy policy` sets who decides
//! each item (the degree of automation), keeping the traffic as it is.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vigil_store::{
    Change, DeploymentRow, DeploymentStore, NextDeployment, PredictionStore, RegistryStore, RolloutStore, Stage,
};

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Who makes the change (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
    /// Why, for the audit log.
    #[arg(long, default_value = "", global = true)]
    pub reason: String,
    #[command(subcommand)]
    pub command: DeployCommand,
}

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Every deployment (or one model's).
    Status { model: Option<String> },
    /// The primary answers; a share of requests is mirrored to the candidate and logged.
    Shadow {
        model: String,
        #[arg(long)]
        candidate: String,
        /// Percent of requests mirrored (0-100, steps of 0.1).
        #[arg(long, default_value_t = 100.0)]
        share: f64,
        /// The version that answers (default: the current primary, else the production version).
        #[arg(long)]
        primary: Option<String>,
    },
    /// The candidate answers a share of routing keys (stations, users), each key sticking to one version.
    Canary {
        model: String,
        #[arg(long)]
        candidate: String,
        /// Percent of routing keys (0-100, steps of 0.1).
        #[arg(long)]
        share: f64,
        #[arg(long)]
        primary: Option<String>,
    },
    /// All traffic to one version at once (blue-green); the previous primary stays for rollback.
    Switch {
        model: String,
        #[arg(long)]
        to: String,
    },
    /// Back to the previous primary after a switch, or the primary alone after a shadow or canary.
    Rollback { model: String },
    /// Who decides each item: human_only (a person; the model is not consulted), shadow (a
    /// person; the model is logged), assist (a person, shown the model's answer), partial (the
    /// model where confident, a person in the review band), full (the model).
    Policy {
        model: String,
        policy: String,
        /// With partial: accept below this score (0-1), overriding the model card.
        #[arg(long, requires = "reject_at")]
        accept_below: Option<f64>,
        /// With partial: reject at or above this score (0-1); a person decides in between.
        #[arg(long, requires = "accept_below")]
        reject_at: Option<f64>,
    },
}

pub async fn run(args: DeployArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    vigil_store::with_store!(backend, store => command(store, args).await)
}

/// A share in percent as a fraction, checked and rounded to steps of 0.1%.
fn share(percent: f64) -> Result<f64> {
    if !(0.0..=100.0).contains(&percent) {
        bail!("--share {percent}: give a percentage between 0 and 100");
    }
    Ok((percent * 10.0).round() / 1000.0)
}

/// The primary a shadow or canary keeps: the one named, else the current primary, else the
/// registry's production version (read only when needed).
async fn primary_of<S: RegistryStore>(
    store: &S,
    model: &str,
    current: Option<&DeploymentRow>,
    named: Option<String>,
) -> Result<String> {
    if let Some(named) = named {
        return Ok(named);
    }
    if let Some(d) = current {
        return Ok(d.primary_version.clone());
    }
    let versions = store.model_versions(Some(model)).await?;
    versions
        .into_iter()
        .find(|v| v.stage == Stage::Production.as_str())
        .map(|v| v.version)
        .with_context(|| format!("{model} has no deployment and no production version: pass --primary"))
}

fn check_candidate(primary: &str, candidate: &str) -> Result<()> {
    if primary == candidate {
        bail!("the candidate is the primary ({primary}): name another version");
    }
    Ok(())
}

async fn command<S: PredictionStore + RegistryStore + DeploymentStore + RolloutStore>(
    store: S,
    args: DeployArgs,
) -> Result<u8> {
    store.migrate().await.context("preparing the deployment tables")?;
    // Every change is made from the model's deployment as read here, and written only while it
    // is still the one stored: another command, or the rollout controller, may replace it
    // meanwhile, and keeping what this one read would undo that.
    let model = match &args.command {
        DeployCommand::Status { .. } => None,
        DeployCommand::Shadow { model, .. }
        | DeployCommand::Canary { model, .. }
        | DeployCommand::Switch { model, .. }
        | DeployCommand::Rollback { model }
        | DeployCommand::Policy { model, .. } => Some(model.clone()),
    };
    let current = match &model {
        Some(model) => store.deployments().await?.into_iter().find(|d| &d.model_name == model),
        None => None,
    };
    let actor = crate::model::whoami(args.by.clone());
    let row = |model: &str, primary: String, candidate: Option<String>, mode: &str, share: f64| DeploymentRow {
        model_name: model.to_string(),
        deployment_id: uuid::Uuid::now_v7().to_string(),
        primary_version: primary,
        candidate_version: candidate,
        mode: mode.into(),
        share,
        updated_by: actor.clone(),
        updated_at: chrono::Utc::now(),
        policy: "partial".into(),
        accept_below: None,
        reject_at: None,
    };
    let next = match args.command {
        DeployCommand::Status { model } => {
            let rows = store.deployments().await?;
            println!("{:<24} {:<36} {:<44} updated", "model", "deployment", "serving");
            for d in rows.iter().filter(|d| model.as_deref().is_none_or(|m| m == d.model_name)) {
                println!(
                    "{:<24} {:<36} {:<44} {} by {}",
                    d.model_name,
                    d.deployment_id,
                    d.describe(),
                    d.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    d.updated_by
                );
            }
            return Ok(0);
        }
        DeployCommand::Shadow { model, candidate, share: percent, primary } => {
            let primary = primary_of(&store, &model, current.as_ref(), primary).await?;
            check_candidate(&primary, &candidate)?;
            row(&model, primary, Some(candidate), "shadow", share(percent)?)
        }
        DeployCommand::Canary { model, candidate, share: percent, primary } => {
            let primary = primary_of(&store, &model, current.as_ref(), primary).await?;
            check_candidate(&primary, &candidate)?;
            row(&model, primary, Some(candidate), "canary", share(percent)?)
        }
        DeployCommand::Switch { model, to } => {
            let previous = current.as_ref().map(|d| d.primary_version.clone()).filter(|p| *p != to);
            row(&model, to, previous, "single", 0.0)
        }
        DeployCommand::Rollback { model } => {
            let Some(d) = current.clone() else { bail!("{model} has no deployment to roll back") };
            match (d.mode.as_str(), d.candidate_version) {
                ("single", Some(previous)) => row(&model, previous, Some(d.primary_version), "single", 0.0),
                ("single", None) => bail!("{model} serves {} alone: nothing to roll back to", d.primary_version),
                (_, _) => row(&model, d.primary_version, None, "single", 0.0),
            }
        }
        DeployCommand::Policy { model, policy, accept_below, reject_at } => {
            // The traffic stays as it is; only who decides changes.
            let base = match current.clone() {
                Some(d) => DeploymentRow { deployment_id: uuid::Uuid::now_v7().to_string(), ..d },
                None => row(&model, primary_of(&store, &model, None, None).await?, None, "single", 0.0),
            };
            let next = DeploymentRow {
                policy,
                accept_below,
                reject_at,
                updated_by: actor.clone(),
                updated_at: chrono::Utc::now(),
                ..base
            };
            return apply(&store, next, current.as_ref(), &actor, &args.reason).await;
        }
    };
    // The traffic of a model in a rollout is the controller's: a change here would be undone by
    // its next step, or judged against versions it no longer serves. (A rollout started after
    // the deployment was read replaced it: the write below is refused then.)
    if let Some(active) = store.rollouts(Some(&next.model_name)).await?.into_iter().find(|r| r.is_active()) {
        bail!(
            "{} has a rollout {} -> {} {}: `vigil rollout abort {}` (or promote) first",
            next.model_name,
            active.primary_version,
            active.candidate_version,
            active.state,
            next.model_name
        );
    }
    // A traffic change keeps the model's degree of automation.
    let next = match &current {
        Some(d) => {
            DeploymentRow { policy: d.policy.clone(), accept_below: d.accept_below, reject_at: d.reject_at, ..next }
        }
        None => next,
    };
    apply(&store, next, current.as_ref(), &actor, &args.reason).await
}

/// Writes `next`, made from `read`, unless another change replaced `read` meanwhile.
async fn apply<S: DeploymentStore>(
    store: &S,
    next: DeploymentRow,
    read: Option<&DeploymentRow>,
    actor: &str,
    reason: &str,
) -> Result<u8> {
    let change = Change { actor, reason, at: next.updated_at };
    store.replace_deployment(NextDeployment::from_read(&next, read), &change).await?;
    println!("{}: {} (deployment {})", next.model_name, next.describe(), next.deployment_id);
    Ok(0)
}
