//! The model registry: every registered version of a model with its artifact digest (sha256 of
//! `model.onnx`), training data reference, evaluation metrics from its model card, and stage
//! (candidate, staging, production, archived), with who registered it and when.

pub(crate) mod backends;
pub mod capture_boosts;
pub mod deployments;
pub mod retraining;
pub mod rollouts;

use std::future::Future;

use chrono::{DateTime, Utc};

/// Where a version stands. At most one version of a model is in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Candidate,
    Staging,
    Production,
    Archived,
}

impl Stage {
    /// Every stage, in promotion order.
    pub const ALL: [Stage; 4] = [Stage::Candidate, Stage::Staging, Stage::Production, Stage::Archived];

    /// Its name in the store and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Candidate => "candidate",
            Stage::Staging => "staging",
            Stage::Production => "production",
            Stage::Archived => "archived",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| format!("unknown stage '{s}': use candidate, staging, production or archived"))
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered model version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelVersionRow {
    pub model_name: String,
    pub version: String,
    /// Hex sha256 of `model.onnx`.
    pub artifact_sha256: String,
    /// Where the artifact was registered from (a path or URL).
    pub artifact_uri: String,
    /// What it was trained on (a dataset id, a generator and seed).
    pub training_data: String,
    /// Evaluation metrics from the model card.
    #[sqlx(json)]
    pub metrics: serde_json::Value,
    /// A [`Stage`] name.
    pub stage: String,
    pub registered_by: String,
    pub registered_at: DateTime<Utc>,
    pub stage_changed_at: DateTime<Utc>,
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new version.
    New,
    /// The same artifact was registered under this version before: nothing changed.
    Already,
}

/// A registry operation refused, or the database failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{model} version {version} is already registered with another artifact (sha256 {existing}); \
         register the new artifact as a new version"
    )]
    Conflict { model: String, version: String, existing: String },
    #[error("{model} version {version} is not registered (see `vigil model list`)")]
    NotFound { model: String, version: String },
    /// Another change replaced the deployment a change was made from.
    #[error(
        "{model}'s deployment changed while this change was made (now {now}); look again \
         (`vigil deploy status {model}`) and run it again"
    )]
    Changed { model: String, now: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One change to the registry (later: deployments, traffic, policies): who or what, when,
/// from what, to what, and why.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: uuid::Uuid,
    pub time: DateTime<Utc>,
    pub actor: String,
    /// `register`, `promote`, `archive`.
    pub action: String,
    /// `<model>/<version>`.
    pub subject: String,
    pub from_state: String,
    pub to_state: String,
    pub reason: String,
}

/// Who asks for a change, and why: written into its audit event.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub reason: &'a str,
    pub at: DateTime<Utc>,
}

impl Change<'_> {
    /// The audit event of `action` on `model`/`version` from one state to another.
    pub(crate) fn event(&self, action: &str, model: &str, version: &str, from: &str, to: &str) -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::now_v7(),
            time: self.at,
            actor: self.actor.to_string(),
            action: action.to_string(),
            subject: format!("{model}/{version}"),
            from_state: from.to_string(),
            to_state: to.to_string(),
            reason: self.reason.to_string(),
        }
    }
}

/// The registry side of a store.
pub trait RegistryStore: Clone + Send + Sync + 'static {
    /// Registers a version in its given stage, with its audit event (actor and time from the
    /// row). Registering the same artifact again under the same version changes nothing;
    /// another artifact under an existing version is refused.
    fn register_version(
        &self,
        row: &ModelVersionRow,
        reason: &str,
    ) -> impl Future<Output = Result<Registered, RegistryError>> + Send;
    /// Every registered version (of one model, when given), by model then registration time.
    fn model_versions(
        &self,
        model_name: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ModelVersionRow>, sqlx::Error>> + Send;
    /// One version.
    fn model_version(
        &self,
        model_name: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<ModelVersionRow>, sqlx::Error>> + Send;
    /// Moves a version to `stage`. Moving one to production archives the model's production
    /// version before it; each move is an audit event; all in one transaction. Returns the
    /// versions archived so.
    fn set_stage(
        &self,
        model_name: &str,
        version: &str,
        stage: Stage,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<Vec<String>, RegistryError>> + Send;
    /// The latest `limit` audit events, newest first.
    fn audit_events(&self, limit: i64) -> impl Future<Output = Result<Vec<AuditEvent>, sqlx::Error>> + Send;
}

/// The columns of `audit_events`, in table order.
const AUDIT_COLUMNS: &str = "id, time, actor, action, subject, from_state, to_state, reason";

/// The columns of `model_versions`, in table order.
const COLUMNS: &str = "model_name, version, artifact_sha256, artifact_uri, training_data, metrics, stage, \
                       registered_by, registered_at, stage_changed_at";

/// The artifact digest the registry keeps: hex sha256 of a file, read in chunks.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    sha256_reader(&mut std::fs::File::open(path)?)
}

/// The hex sha256 of what `reader` yields up to its end.
pub fn sha256_reader(reader: &mut impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
