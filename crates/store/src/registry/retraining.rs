//! Retraining jobs: a model's training recipe run by the monitor on its logged, labelled data,
//! the result registered as a candidate. Jobs move queued -> running -> succeeded, failed or
//! cancelled; at most one is active (queued or running) per model, which the store enforces.
//! Every change of state is an audit event.

use std::future::Future;

use chrono::{DateTime, Utc};

use super::{Change, RegistryError};

/// A job's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Its name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One retraining job as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RetrainJob {
    /// UUIDv7: sorts by creation.
    pub job_id: String,
    pub model_name: String,
    /// A [`JobState`] name.
    pub state: String,
    /// `manual`, or `alarm <rule>`.
    pub trigger: String,
    pub requested_by: String,
    /// A dataset directory given with the job; empty: one is exported when the job runs.
    pub dataset: String,
    /// Roll the candidate out when the job succeeds.
    pub rollout: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// 0..1.
    pub progress: f64,
    /// What the job is doing (or did last).
    pub step: String,
    /// The recipe's output, its tail.
    pub log: String,
    pub cancel_requested: bool,
    /// The version the job registered.
    pub candidate_version: Option<String>,
    pub error: String,
}

impl RetrainJob {
    /// A queued job for `model`, asked for by `change.actor` at `change.at`.
    pub fn queued(model: &str, trigger: &str, dataset: &str, rollout: bool, change: &Change<'_>) -> Self {
        Self {
            job_id: uuid::Uuid::now_v7().to_string(),
            model_name: model.into(),
            state: JobState::Queued.as_str().into(),
            trigger: trigger.into(),
            requested_by: change.actor.into(),
            dataset: dataset.into(),
            rollout,
            created_at: change.at,
            started_at: None,
            finished_at: None,
            progress: 0.0,
            step: String::new(),
            log: String::new(),
            cancel_requested: false,
            candidate_version: None,
            error: String::new(),
        }
    }

    /// Whether it is queued or running.
    pub fn is_active(&self) -> bool {
        self.state == "queued" || self.state == "running"
    }

    /// How long it ran (or has run, until `now`).
    pub fn duration(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.started_at.map(|s| self.finished_at.unwrap_or(now) - s)
    }
}

/// What a running job hears back when it reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Go on.
    Running,
    /// A person asked to cancel it: stop.
    CancelRequested,
    /// It is no longer running (marked failed by a restart, or finished): stop, write nothing.
    Gone,
}

/// The retraining side of a store.
pub trait RetrainStore: Clone + Send + Sync + 'static {
    /// Queues a job, with an audit event; refused when the model already has an active job.
    fn enqueue_retrain(&self, job: &RetrainJob) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// Jobs, newest first: every model's or one's, at most `limit`.
    fn retrain_jobs(
        &self,
        model: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RetrainJob>, sqlx::Error>> + Send;
    /// One job.
    fn retrain_job(&self, job_id: &str) -> impl Future<Output = Result<Option<RetrainJob>, sqlx::Error>> + Send;
    /// Moves the oldest queued job to running (started now), with an audit event.
    fn claim_retrain(&self, now: DateTime<Utc>)
    -> impl Future<Output = Result<Option<RetrainJob>, sqlx::Error>> + Send;
    /// Records a running job's progress, step and log.
    fn report_retrain(
        &self,
        job_id: &str,
        progress: f64,
        step: &str,
        log: &str,
    ) -> impl Future<Output = Result<Reported, sqlx::Error>> + Send;
    /// Ends a running job in `state` (succeeded, failed or cancelled), with its error, the
    /// version it registered, the dataset it used and its log, and an audit event. False, changing nothing, when
    /// the job was no longer running.
    fn finish_retrain(
        &self,
        job: &RetrainJob,
        state: JobState,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
    /// A person cancels a job: a queued one ends at once, a running one is asked to stop (its
    /// runner ends it). Refused for a job that has ended. Returns the job as it now stands.
    fn cancel_retrain(
        &self,
        job_id: &str,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<RetrainJob, RegistryError>> + Send;
    /// Marks every running job failed (its monitor stopped while it ran), with an audit event
    /// each; returns them.
    fn interrupt_retrains(
        &self,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<Vec<RetrainJob>, sqlx::Error>> + Send;
}

/// The columns of `retrain_jobs`, in table order.
const COLUMNS: &str = "job_id, model_name, state, trigger, requested_by, dataset, rollout, created_at, started_at, \
     finished_at, progress, step, log, cancel_requested, candidate_version, error";

/// Implements [`RetrainStore`] for `$store`; `$lock` ends the statements that read rows a
/// change then writes.
macro_rules! retrain_backend {
    ($store:ty, $lock:literal) => {
        impl RetrainStore for $store {
            async fn enqueue_retrain(&self, job: &RetrainJob) -> Result<(), RegistryError> {
                let mut tx = self.write_transaction().await?;
                let active: Option<(String, String)> = sqlx::query_as(&format!(
                    "SELECT job_id, state FROM retrain_jobs WHERE model_name = $1 AND state IN ('queued', 'running'){}",
                    $lock
                ))
                .bind(&job.model_name)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((id, state)) = active {
                    return Err(RegistryError::Invalid(format!(
                        "{} already has a retraining job {state} ({id}): wait for it, or `vigil retrain cancel {id}`",
                        job.model_name
                    )));
                }
                sqlx::query(&format!(
                    "INSERT INTO retrain_jobs ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(&job.job_id)
                .bind(&job.model_name)
                .bind(&job.state)
                .bind(&job.trigger)
                .bind(&job.requested_by)
                .bind(&job.dataset)
                .bind(job.rollout)
                .bind(job.created_at)
                .bind(job.started_at)
                .bind(job.finished_at)
                .bind(job.progress)
                .bind(&job.step)
                .bind(&job.log)
                .bind(job.cancel_requested)
                .bind(&job.candidate_version)
                .bind(&job.error)
                .execute(&mut *tx)
                .await?;
                let change = Change { actor: &job.requested_by, reason: &job.trigger, at: job.created_at };
                write_audit(&mut *tx, &event(&change, job, "", &job.state)).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn retrain_jobs(&self, model: Option<&str>, limit: i64) -> Result<Vec<RetrainJob>, sqlx::Error> {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM retrain_jobs WHERE (CAST($1 AS TEXT) IS NULL OR model_name = $1) \
                     ORDER BY job_id DESC LIMIT $2"
                ))
                .bind(model)
                .bind(limit)
                .fetch_all(self.pool())
                .await
            }

            async fn retrain_job(&self, job_id: &str) -> Result<Option<RetrainJob>, sqlx::Error> {
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM retrain_jobs WHERE job_id = $1"))
                    .bind(job_id)
                    .fetch_optional(self.pool())
                    .await
            }

            async fn claim_retrain(&self, now: DateTime<Utc>) -> Result<Option<RetrainJob>, sqlx::Error> {
                let mut tx = self.write_transaction().await?;
                let claimed: Option<RetrainJob> = sqlx::query_as(&format!(
                    "UPDATE retrain_jobs SET state = 'running', started_at = $1, step = 'starting' \
                     WHERE job_id = (SELECT job_id FROM retrain_jobs WHERE state = 'queued' ORDER BY job_id LIMIT 1) \
                     AND state = 'queued' RETURNING {COLUMNS}"
                ))
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(job) = &claimed {
                    let change = Change { actor: RUNNER, reason: "started", at: now };
                    write_audit(&mut *tx, &event(&change, job, "queued", "running")).await?;
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn report_retrain(
                &self,
                job_id: &str,
                progress: f64,
                step: &str,
                log: &str,
            ) -> Result<Reported, sqlx::Error> {
                let cancel: Option<bool> = sqlx::query_scalar(
                    "UPDATE retrain_jobs SET progress = $2, step = $3, log = $4 \
                     WHERE job_id = $1 AND state = 'running' RETURNING cancel_requested",
                )
                .bind(job_id)
                .bind(progress)
                .bind(step)
                .bind(log)
                .fetch_optional(self.pool())
                .await?;
                Ok(match cancel {
                    None => Reported::Gone,
                    Some(true) => Reported::CancelRequested,
                    Some(false) => Reported::Running,
                })
            }

            async fn finish_retrain(
                &self,
                job: &RetrainJob,
                state: JobState,
                change: &Change<'_>,
            ) -> Result<bool, sqlx::Error> {
                let mut tx = self.write_transaction().await?;
                let moved = sqlx::query(
                    "UPDATE retrain_jobs SET state = $2, finished_at = $3, progress = $4, step = $5, log = $6, \
                     candidate_version = $7, error = $8, dataset = $9 WHERE job_id = $1 AND state = 'running'",
                )
                .bind(&job.job_id)
                .bind(state.as_str())
                .bind(change.at)
                .bind(job.progress)
                .bind(&job.step)
                .bind(&job.log)
                .bind(&job.candidate_version)
                .bind(&job.error)
                .bind(&job.dataset)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    return Ok(false);
                }
                write_audit(&mut *tx, &event(change, job, "running", state.as_str())).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn cancel_retrain(&self, job_id: &str, change: &Change<'_>) -> Result<RetrainJob, RegistryError> {
                let mut tx = self.write_transaction().await?;
                let job: Option<RetrainJob> =
                    sqlx::query_as(&format!("SELECT {COLUMNS} FROM retrain_jobs WHERE job_id = $1{}", $lock))
                        .bind(job_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(mut job) = job else {
                    return Err(RegistryError::Invalid(format!(
                        "no retraining job {job_id} (see `vigil retrain list`)"
                    )));
                };
                match job.state.as_str() {
                    "queued" => {
                        sqlx::query(
                            "UPDATE retrain_jobs SET state = 'cancelled', finished_at = $2, error = $3 WHERE job_id = $1",
                        )
                        .bind(job_id)
                        .bind(change.at)
                        .bind(format!("cancelled by {} before it started", change.actor))
                        .execute(&mut *tx)
                        .await?;
                        write_audit(&mut *tx, &event(change, &job, "queued", "cancelled")).await?;
                        (job.state, job.finished_at) = ("cancelled".into(), Some(change.at));
                    }
                    "running" => {
                        sqlx::query("UPDATE retrain_jobs SET cancel_requested = $2 WHERE job_id = $1")
                            .bind(job_id)
                            .bind(true)
                            .execute(&mut *tx)
                            .await?;
                        write_audit(&mut *tx, &event(change, &job, "running", "cancel requested")).await?;
                        job.cancel_requested = true;
                    }
                    ended => {
                        return Err(RegistryError::Invalid(format!("retraining job {job_id} has already {ended}")));
                    }
                }
                tx.commit().await?;
                Ok(job)
            }

            async fn interrupt_retrains(&self, change: &Change<'_>) -> Result<Vec<RetrainJob>, sqlx::Error> {
                let mut tx = self.write_transaction().await?;
                let jobs: Vec<RetrainJob> = sqlx::query_as(&format!(
                    "UPDATE retrain_jobs SET state = 'failed', finished_at = $1, error = $2 \
                     WHERE state = 'running' RETURNING {COLUMNS}"
                ))
                .bind(change.at)
                .bind(change.reason)
                .fetch_all(&mut *tx)
                .await?;
                for job in &jobs {
                    write_audit(&mut *tx, &event(change, job, "running", "failed")).await?;
                }
                tx.commit().await?;
                Ok(jobs)
            }
        }
    };
}

/// The actor of the runner's changes in the audit log.
pub const RUNNER: &str = "retraining";

/// The audit event of a job moving between states (subject `<model>/job <id>`).
fn event(change: &Change<'_>, job: &RetrainJob, from: &str, to: &str) -> super::AuditEvent {
    let mut event = change.event("retrain", &job.model_name, "", from, to);
    event.subject = format!("{}/job {}", job.model_name, job.job_id);
    event
}

/// Writes an audit event in a transaction of either backend.
async fn write_audit<C: AuditWriter + ?Sized>(conn: &mut C, e: &super::AuditEvent) -> Result<(), sqlx::Error> {
    conn.write_audit(e).await
}

/// A connection the registry's audit writer takes.
trait AuditWriter: Send {
    fn write_audit(&mut self, e: &super::AuditEvent) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl AuditWriter for sqlx::PgConnection {
    async fn write_audit(&mut self, e: &super::AuditEvent) -> Result<(), sqlx::Error> {
        super::backends::postgres::audit(self, e).await
    }
}

impl AuditWriter for sqlx::SqliteConnection {
    async fn write_audit(&mut self, e: &super::AuditEvent) -> Result<(), sqlx::Error> {
        super::backends::sqlite::audit(self, e).await
    }
}

retrain_backend!(crate::PgStore, " FOR UPDATE");
retrain_backend!(crate::SqliteStore, "");
