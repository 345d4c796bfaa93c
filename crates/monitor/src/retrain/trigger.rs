//! Automatic retraining: while an alarm rule with the `retrain` action fires, its model is
//! retrained once enough new labelled items exist, at most once per cooldown, never while a job
//! or a rollout of the model is active.

use chrono::{DateTime, Utc};
use vigil_store::monitoring::OutcomeQuery;
use vigil_store::{Change, MonitorStore, RetrainJob};

use crate::config::Rule;
use crate::views::ViewError;

use super::RetrainingConfig;

/// The actor of jobs that alarms start, in the audit log.
pub const ALARM_ACTOR: &str = "monitor";

/// Why a firing rule starts no job now, or the job it queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Considered {
    Queued(Box<RetrainJob>),
    Waiting(String),
}

/// Queues a retraining job of `model` for the firing `rule` when the model's conditions allow.
pub async fn consider<S: MonitorStore>(
    store: &S,
    config: &RetrainingConfig,
    rule: &Rule,
    model: &str,
    now: DateTime<Utc>,
) -> Result<Considered, ViewError> {
    let wait = |why: String| Ok(Considered::Waiting(why));
    let Some(settings) = config.models.get(model) else {
        return wait(format!("{model} has no [retraining.models.{model}]"));
    };
    let jobs = store.retrain_jobs(Some(model), 100).await?;
    if let Some(active) = jobs.iter().find(|j| j.is_active()) {
        return wait(format!("job {} is {}", active.job_id, active.state));
    }
    let rollouts = store.rollouts(Some(model)).await?;
    if let Some(rollout) = rollouts.iter().find(|r| r.is_active()) {
        return wait(format!(
            "rollout {} of version {} is {}",
            rollout.rollout_id, rollout.candidate_version, rollout.state
        ));
    }
    let cooldown = chrono::Duration::from_std(settings.cooldown).unwrap_or(chrono::Duration::MAX);
    // The version a rollout left serving gets a cooldown of its own before an alarm (whose
    // window still holds the version before) retrains it away.
    if let Some(ended) = rollouts.iter().max_by_key(|r| r.updated_at)
        && now - ended.updated_at < cooldown
    {
        return wait(format!(
            "rollout {} of version {} ended ({}) at {}; the cooldown is {}",
            ended.rollout_id,
            ended.candidate_version,
            ended.state,
            ended.updated_at.to_rfc3339(),
            humantime::format_duration(settings.cooldown)
        ));
    }
    if let Some(last) = jobs.iter().find(|j| j.trigger.starts_with("alarm "))
        && now - last.created_at < cooldown
    {
        return wait(format!(
            "an alarm started job {} at {}; the cooldown is {}",
            last.job_id,
            last.created_at.to_rfc3339(),
            humantime::format_duration(settings.cooldown)
        ));
    }
    // New items: logged since the last successful job's data was taken (or in the window).
    let window = chrono::Duration::from_std(settings.dataset_window).unwrap_or(chrono::Duration::days(30));
    let since = jobs.iter().find(|j| j.state == "succeeded").map_or(now - window, |j| j.created_at.max(now - window));
    let new_items = OutcomeQuery {
        model_name: model.into(),
        model_version: None,
        variant: None,
        since,
        until: now,
        resolution_s: u32::MAX,
        events_before: None,
    };
    let labelled =
        u64::try_from(store.labeled_counts(&new_items).await?.iter().map(|g| g.count).sum::<i64>()).unwrap_or(0);
    if labelled < settings.min_new_labels {
        return wait(format!("{labelled} of {} new labelled items", settings.min_new_labels));
    }
    let reason = format!("alarm {}", rule.name);
    let change = Change { actor: ALARM_ACTOR, reason: &reason, at: now };
    let job = RetrainJob::queued(model, &reason, "", rule.rollout, &change);
    match store.enqueue_retrain(&job).await {
        Ok(()) => Ok(Considered::Queued(Box::new(job))),
        Err(vigil_store::RegistryError::Database(e)) => Err(ViewError::Store(e)),
        Err(refused) => wait(refused.to_string()),
    }
}
