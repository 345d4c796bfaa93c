//! Deployments: per model, a primary version and optionally a candidate, in a mode (`single`,
//! `shadow`, `canary`) with a traffic share. Both versions must be registered; every change is
//! an audit event written in the same transaction.

use std::future::Future;

use chrono::{DateTime, Utc};

use super::{Change, RegistryError};

/// One model's deployment as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeploymentRow {
    pub model_name: String,
    /// New with every change.
    pub deployment_id: String,
    pub primary_version: String,
    pub candidate_version: Option<String>,
    /// `single`, `shadow` or `canary`.
    pub mode: String,
    /// Share of requests mirrored (shadow) or of routing keys answered by the candidate
    /// (canary), 0 to 1.
    pub share: f64,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
    /// Who decides each item: one of [`POLICIES`].
    pub policy: String,
    /// The review band `[accept_below, reject_at)` of `partial`, overriding the model card's
    /// thresholds; both or neither.
    pub accept_below: Option<f64>,
    pub reject_at: Option<f64>,
}

/// The degrees of automation, from none to full.
pub const POLICIES: [&str; 5] = ["human_only", "shadow", "assist", "partial", "full"];

/// The deployment modes.
pub const MODES: [&str; 3] = ["single", "shadow", "canary"];

impl DeploymentRow {
    /// One line for people and the audit log: `primary 1, canary 2 at 5%; policy partial`.
    pub fn describe(&self) -> String {
        let traffic = match (self.mode.as_str(), &self.candidate_version) {
            ("single", Some(c)) => format!("primary {} (rollback to {c})", self.primary_version),
            ("single", None) | (_, None) => format!("primary {}", self.primary_version),
            // Shares are set in steps of 0.1%.
            (mode, Some(c)) => {
                format!("primary {}, {mode} {c} at {}%", self.primary_version, (self.share * 1000.0).round() / 10.0)
            }
        };
        match (self.accept_below, self.reject_at) {
            (Some(a), Some(r)) => format!("{traffic}; policy {} (review band [{a}, {r}))", self.policy),
            _ => format!("{traffic}; policy {}", self.policy),
        }
    }

    /// Checks what the table's constraints would refuse, in words that name the field.
    pub fn validate(&self) -> Result<(), String> {
        if !MODES.contains(&self.mode.as_str()) {
            return Err(format!("unknown mode '{}'; use one of {}", self.mode, MODES.join(", ")));
        }
        if !(0.0..=1.0).contains(&self.share) {
            return Err(format!("share {} is outside 0-100%", self.share * 100.0));
        }
        if self.mode != "single" && self.candidate_version.is_none() {
            return Err(format!("a {} deployment needs a candidate version", self.mode));
        }
        if !POLICIES.contains(&self.policy.as_str()) {
            return Err(format!("unknown policy '{}'; use one of {}", self.policy, POLICIES.join(", ")));
        }
        match (self.accept_below, self.reject_at) {
            (None, None) => Ok(()),
            (Some(a), Some(r)) if (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&r) && a <= r => Ok(()),
            (Some(a), Some(r)) => Err(format!("review band [{a}, {r}) must lie in 0-1 with accept_below <= reject_at")),
            _ => Err("give both accept_below and reject_at, or neither".into()),
        }
    }
}

/// A deployment to write, made from the one stored when the change read it.
#[derive(Debug, Clone, Copy)]
pub struct NextDeployment<'a> {
    pub row: &'a DeploymentRow,
    /// The `deployment_id` the change was made from (None: the model had no deployment). The
    /// write is refused ([`RegistryError::Changed`]) when another change replaced it meanwhile,
    /// so that neither undoes the other: a command keeping the traffic it read cannot restore a
    /// canary the rollout controller just rolled back, nor the controller drop a policy set
    /// while it judged a step.
    pub replaces: Option<&'a str>,
}

impl<'a> NextDeployment<'a> {
    /// `row`, made from `read` (the model's deployment as read, if it had one).
    pub fn from_read(row: &'a DeploymentRow, read: Option<&'a DeploymentRow>) -> Self {
        Self { row, replaces: read.map(|d| d.deployment_id.as_str()) }
    }
}

/// The deployment side of a store.
pub trait DeploymentStore: Clone + Send + Sync + 'static {
    /// Every deployment, by model.
    fn deployments(&self) -> impl Future<Output = Result<Vec<DeploymentRow>, sqlx::Error>> + Send;
    /// Replaces a model's deployment whatever it is now, with an audit event (`deploy`, from
    /// the old description to the new, by `change`). Refused, with nothing changed, when a
    /// named version is not registered or the row is not valid ([`DeploymentRow::validate`]).
    /// A change made from the deployment it read uses [`Self::replace_deployment`].
    fn set_deployment(
        &self,
        row: &DeploymentRow,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// As [`Self::set_deployment`], only while the stored deployment is still the one `next`
    /// was made from (compare and set); else [`RegistryError::Changed`], nothing changed.
    fn replace_deployment(
        &self,
        next: NextDeployment<'_>,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

/// The columns of `deployments`, in table order.
pub(super) const COLUMNS: &str = "model_name, deployment_id, primary_version, candidate_version, mode, share, \
     updated_by, updated_at, policy, accept_below, reject_at";
