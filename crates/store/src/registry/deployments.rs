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
}

impl DeploymentRow {
    /// One line for people and the audit log: `primary 1, canary 2 at 5%`.
    pub fn describe(&self) -> String {
        match (self.mode.as_str(), &self.candidate_version) {
            ("single", Some(c)) => format!("primary {} (rollback to {c})", self.primary_version),
            ("single", None) | (_, None) => format!("primary {}", self.primary_version),
            // Shares are set in steps of 0.1%.
            (mode, Some(c)) => {
                format!("primary {}, {mode} {c} at {}%", self.primary_version, (self.share * 1000.0).round() / 10.0)
            }
        }
    }
}

/// The deployment side of a store.
pub trait DeploymentStore: Clone + Send + Sync + 'static {
    /// Every deployment, by model.
    fn deployments(&self) -> impl Future<Output = Result<Vec<DeploymentRow>, sqlx::Error>> + Send;
    /// Replaces a model's deployment, with an audit event (`deploy`, from the old description
    /// to the new, by `change`). Refused when a named version is not registered.
    fn set_deployment(
        &self,
        row: &DeploymentRow,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

/// The columns of `deployments`, in table order.
pub(super) const COLUMNS: &str =
    "model_name, deployment_id, primary_version, candidate_version, mode, share, updated_by, updated_at";
