//! Rollouts: a candidate version stepped through a plan of canary shares by the monitor's
//! controller. A step and the deployment it sets change in one transaction, and only from the
//! state the controller read (compare and set), so a step is never applied twice, whoever acts.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deployments::NextDeployment;
use super::{Change, RegistryError};

/// How a step runs the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepMode {
    /// A share of the routing keys is answered by the candidate.
    #[default]
    Canary,
    /// A share of the requests is mirrored to the candidate; the primary answers all of them.
    Shadow,
}

/// One step of a plan: the candidate's share of routing keys (or of requests mirrored), held
/// at least `min_duration_s` and until the candidate answered `min_requests`, then judged.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RolloutStep {
    /// 0 < share <= 1; the last step is a canary at 1 (the candidate answers everything, then
    /// is promoted).
    pub share: f64,
    #[serde(default)]
    pub mode: StepMode,
    pub min_duration_s: u64,
    pub min_requests: u64,
    /// A step still without a verdict this long after it started pauses for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
    /// Once passed, the step waits for a person's approval (a manual promotion gate) instead of
    /// moving on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
}

/// A rollout's states: `running` and `paused` are active (at most one per model); the others
/// are final.
pub const ROLLOUT_STATES: [&str; 5] = ["running", "paused", "promoted", "rolled_back", "aborted"];

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RolloutRow {
    pub rollout_id: String,
    pub model_name: String,
    /// The version answering before the rollout (rolled back to).
    pub primary_version: String,
    pub candidate_version: String,
    /// JSON array of [`RolloutStep`].
    pub plan: String,
    /// Index of the current step in the plan.
    pub step: i32,
    /// One of [`ROLLOUT_STATES`].
    pub state: String,
    pub step_started_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    /// JSON array of the analyses and decisions so far, newest last.
    pub history: String,
}

impl RolloutRow {
    /// The plan's steps.
    pub fn steps(&self) -> Result<Vec<RolloutStep>, String> {
        serde_json::from_str(&self.plan).map_err(|e| format!("rollout {}: bad plan: {e}", self.rollout_id))
    }

    /// The decisions so far.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.history).unwrap_or_default()
    }

    /// Whether the controller still acts on it.
    pub fn is_active(&self) -> bool {
        self.state == "running" || self.state == "paused"
    }
}

/// Checks a plan: shares in (0, 1], rising, ending at 1; every step waits for requests.
pub fn validate_plan(steps: &[RolloutStep]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("a plan needs at least one step".into());
    }
    if steps.iter().any(|s| !(s.share > 0.0 && s.share <= 1.0)) {
        return Err("every step's share must be in (0, 1]".into());
    }
    let canary: Vec<f64> = steps.iter().filter(|s| s.mode == StepMode::Canary).map(|s| s.share).collect();
    if canary.windows(2).any(|w| w[1] <= w[0]) {
        return Err("canary shares must rise from step to step".into());
    }
    if steps.windows(2).any(|w| w[0].mode == StepMode::Canary && w[1].mode == StepMode::Shadow) {
        return Err("shadow steps come before the canary steps".into());
    }
    if steps.iter().any(|s| s.min_requests == 0) {
        return Err("every step needs at least one request to the candidate (min_requests >= 1)".into());
    }
    if steps.iter().any(|s| s.max_duration_s.is_some_and(|m| m < s.min_duration_s)) {
        return Err("a step's deadline must not come before its minimum duration".into());
    }
    if steps.last().map(|s| (s.mode, s.share)) != Some((StepMode::Canary, 1.0)) {
        return Err("the last step must give the candidate every key (share 1)".into());
    }
    Ok(())
}

/// The rollout side of a store.
pub trait RolloutStore: Clone + Send + Sync + 'static {
    /// The database's clock: when a person's change to a rollout happens, so that a step's
    /// window does not depend on the clock of the machine the command runs on.
    fn clock(&self) -> impl Future<Output = Result<DateTime<Utc>, sqlx::Error>> + Send;

    /// Rollouts, newest first: every one, or one model's.
    fn rollouts(&self, model: Option<&str>) -> impl Future<Output = Result<Vec<RolloutRow>, sqlx::Error>> + Send;

    /// Starts a rollout and sets the deployment of its first step, in one transaction, with an
    /// audit event; refused when the model already has an active rollout, or its deployment is
    /// no longer the one `deployment` was made from ([`RegistryError::Changed`]).
    fn start_rollout(
        &self,
        row: &RolloutRow,
        deployment: NextDeployment<'_>,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Moves a rollout from `expected` (its step, state and history as read) to `next`, setting
    /// `deployment` (when given) and writing an audit event, in one transaction. Returns false,
    /// changing nothing, when the stored rollout is no longer at `expected`, or the model's
    /// deployment no longer the one `deployment` was made from.
    fn advance_rollout(
        &self,
        expected: &RolloutRow,
        next: &RolloutRow,
        deployment: Option<NextDeployment<'_>>,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
}

/// The columns of `rollouts`, in table order.
pub(super) const COLUMNS: &str = "rollout_id, model_name, primary_version, candidate_version, plan, step, state, \
     step_started_at, created_by, updated_at, history";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_rise_to_the_whole_traffic() {
        let step = |share| RolloutStep {
            share,
            mode: StepMode::Canary,
            min_duration_s: 60,
            min_requests: 100,
            max_duration_s: None,
            approval: false,
        };
        let shadow = RolloutStep { mode: StepMode::Shadow, ..step(1.0) };
        assert!(validate_plan(&[shadow, step(0.1), step(1.0)]).is_ok());
        assert!(validate_plan(&[step(0.1), shadow, step(1.0)]).unwrap_err().contains("shadow steps come before"));
        assert!(validate_plan(&[shadow, step(0.5)]).unwrap_err().contains("share 1"));
        assert!(validate_plan(&[shadow]).unwrap_err().contains("share 1"), "a shadow alone promotes nothing");
        assert!(validate_plan(&[step(0.01), step(0.25), step(1.0)]).is_ok());
        assert!(validate_plan(&[]).unwrap_err().contains("at least one step"));
        assert!(validate_plan(&[step(0.5), step(0.25), step(1.0)]).unwrap_err().contains("rise"));
        assert!(validate_plan(&[step(0.0), step(1.0)]).unwrap_err().contains("(0, 1]"));
        assert!(validate_plan(&[step(0.1), step(0.5)]).unwrap_err().contains("share 1"));
        let blind = RolloutStep { min_requests: 0, ..step(0.1) };
        assert!(validate_plan(&[blind, step(1.0)]).unwrap_err().contains("min_requests >= 1"), "no evidence");
    }
}
