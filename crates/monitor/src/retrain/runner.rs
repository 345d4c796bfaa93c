//! The job runner: in the monitor holding the alerting lease, claims queued jobs one at a time,
//! exports and verifies the job's dataset, runs the model's recipe (progress and log into the
//! store, stopped on cancel, timeout or shutdown), moves the version it wrote into the model
//! repository, registers it as a candidate with its data reference, and starts its rollout when
//! asked. A job left running by a monitor that stopped is marked failed when a runner takes over.
//!
//! Whoever runs jobs (the leading monitor or `vigil retrain work`) holds the retraining lease
//! first: the jobs marked running are then no other runner's, and two runners never take over
//! each other's jobs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use tokio::sync::watch;
use vigil_store::monitoring::{LEASE_CHECK_TIMEOUT, LEASE_UNCONFIRMED_GRACE, Lease, LeaseState, answered_within};
use vigil_store::registry::retraining::{RUNNER, Reported};
use vigil_store::{Change, JobState, ModelVersionRow, MonitorStore, PredictionStore, RetrainJob, Stage};

use super::{ModelRetraining, RetrainingConfig};

/// How often a running job's progress and log are written, and its cancellation looked for.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// The lease whoever runs jobs holds ([`run`] and [`work`]).
pub const RETRAINING_LEASE: &str = "monitor.retraining";

/// Why a running job was marked failed at a runner's start.
pub const INTERRUPTED: &str = "interrupted: the monitor running it stopped; `vigil retrain retry <job>` runs it again";

/// Runs queued jobs while `leading` (this monitor holds the alerting lease) until `shutdown`;
/// with `runner = "external"` only waits for `shutdown` (`vigil retrain work` runs them).
pub async fn run<S: PredictionStore + MonitorStore>(
    store: S,
    config: RetrainingConfig,
    models: PathBuf,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.runner == super::RunnerPlace::External {
        // The task lives as long as the monitor: a task that ends stops it.
        let _ = shutdown.changed().await;
        return;
    }
    let runner = Runner::new(store, config, models);
    // Since when this monitor has not led: a round the alerting lease went unconfirmed does not
    // make it let go of the retraining lease; losing the lead for longer does.
    let mut not_leading_since: Option<Instant> = None;
    loop {
        let lead = *leading.borrow_and_update();
        let holding = if lead {
            not_leading_since = None;
            runner.hold_lease().await
        } else {
            if not_leading_since.get_or_insert_with(Instant::now).elapsed() >= LEASE_UNCONFIRMED_GRACE {
                runner.lease.lock().await.lease = None;
            }
            false
        };
        if holding {
            match bounded(runner.store.claim_retrain(Utc::now())).await {
                Ok(Some(job)) => {
                    runner.execute(job, &mut shutdown).await;
                    if *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    // The claim may have been made all the same: let go of the lease, so that
                    // taking it again marks such a job interrupted.
                    tracing::warn!(error = %e, "cannot read queued retraining jobs; retrying");
                    runner.lease.lock().await.lease = None;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(runner.config.poll) => {}
            _ = leading.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs queued jobs outside the monitor (`vigil retrain work`, one worker at a time): jobs an
/// earlier worker left running are marked interrupted, then queued jobs run one after another
/// until none is left, `max_jobs` have run, or `shutdown`. Returns the jobs run, as they ended;
/// None, having touched nothing, when another runner (a worker, or a monitor that runs jobs)
/// holds the retraining lease.
pub async fn work<S: PredictionStore + MonitorStore>(
    store: S,
    config: RetrainingConfig,
    models: PathBuf,
    max_jobs: Option<usize>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Vec<RetrainJob>>> {
    let runner = Runner::new(store, config, models);
    let Some(lease) = runner.store.try_lease(RETRAINING_LEASE).await.context("taking the retraining lease")? else {
        return Ok(None);
    };
    runner.lease.lock().await.hold(lease);
    bounded(runner.interrupt_orphans()).await.context("marking interrupted jobs")?;
    // As a monitor taking the lease over does: what the jobs that died left half written goes.
    runner.remove_partials_of_stopped_jobs().await;
    let mut ran = Vec::new();
    while max_jobs.is_none_or(|max| ran.len() < max) && !*shutdown.borrow() {
        match runner.tenure(false).await {
            Tenure::Held => {}
            Tenure::Taken => {
                tracing::warn!("another runner took the retraining lease; leaving the queue to it");
                break;
            }
            Tenure::Expired(silent) => {
                tracing::warn!(?silent, "cannot confirm the retraining lease; leaving the queue");
                break;
            }
        }
        let Some(job) = bounded(runner.store.claim_retrain(Utc::now())).await.context("claiming a queued job")? else {
            break;
        };
        let id = job.job_id.to_string();
        runner.execute(job, &mut shutdown).await;
        ran.extend(bounded(runner.store.retrain_job(&id)).await.context("reading the job's end")?);
    }
    Ok(Some(ran))
}

struct Runner<S> {
    store: S,
    config: RetrainingConfig,
    /// The repository new versions go to.
    output: PathBuf,
    /// The retraining lease, while this runner holds it.
    lease: tokio::sync::Mutex<HeldLease>,
}

/// A runner's retraining lease and when the database last confirmed it.
struct HeldLease {
    lease: Option<Lease>,
    confirmed: Instant,
    /// Since when checks between jobs have gone unanswered.
    unconfirmed_since: Option<Instant>,
}

impl Default for HeldLease {
    fn default() -> Self {
        Self { lease: None, confirmed: Instant::now(), unconfirmed_since: None }
    }
}

impl HeldLease {
    /// Holds `lease`, just confirmed.
    fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
        self.confirmed = Instant::now();
        self.unconfirmed_since = None;
    }
}

/// What a runner running a job knows of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tenure {
    /// Held, or unconfirmed for less than `lease_timeout`.
    Held,
    /// Another runner holds it now, and takes the job over.
    Taken,
    /// Unconfirmed for this long, past `lease_timeout`: let go of, as another runner may hold it.
    Expired(Duration),
}

/// What one run of a recipe writes and reads.
struct RecipeRun<'a> {
    /// The version directory it writes.
    out: &'a Path,
    version: &'a str,
    dataset: &'a Path,
    /// The version the model's deployment serves now.
    serving: Option<&'a str>,
}

/// How a recipe run ended, other than by exiting.
enum Stopped {
    Cancelled(String),
    /// Another runner or a restart took the job: write nothing more.
    Gone,
    Failed(String),
}

impl<S: PredictionStore + MonitorStore> Runner<S> {
    fn new(store: S, config: RetrainingConfig, models: PathBuf) -> Self {
        Self { store, output: config.output.clone().unwrap_or(models), config, lease: Default::default() }
    }

    /// Between jobs: whether this runner holds the retraining lease, taking it (and over the
    /// jobs left running) where it is free. A lease the database does not confirm now is kept for a while
    /// (`LEASE_UNCONFIRMED_GRACE`), but no job is started on it.
    async fn hold_lease(&self) -> bool {
        let mut held = self.lease.lock().await;
        if let Some(lease) = held.lease.as_mut() {
            match lease.state().await {
                LeaseState::Held => {
                    (held.confirmed, held.unconfirmed_since) = (Instant::now(), None);
                    return true;
                }
                LeaseState::Unconfirmed
                    if held.unconfirmed_since.get_or_insert_with(Instant::now).elapsed() < LEASE_UNCONFIRMED_GRACE =>
                {
                    return false;
                }
                // Unconfirmed for long (a connection dropped on the way: fresh ones may work).
                LeaseState::Unconfirmed | LeaseState::Lost => held.lease = None,
            }
        }
        match self.take_over().await {
            Some(lease) => {
                held.hold(lease);
                true
            }
            None => false,
        }
    }

    /// During a job: whether this runner still holds the retraining lease. One whose holder
    /// went (a Postgres connection that closed) is taken back where no other runner took it
    /// meanwhile; where one did, it takes the job over and this runner is to stop. While the
    /// database does not answer the job goes on, for `lease_timeout`: the database frees a
    /// silent holder's lease later than that (`LEASE_SILENCE_RELEASE`), so no other runner
    /// can hold it yet; past it this runner lets go of the lease and is to stop.
    ///
    /// Without a lease between jobs (`during_job` false: after one expired) it takes the lease
    /// over, marking the jobs left running interrupted; during a job it has none to lose.
    async fn tenure(&self, during_job: bool) -> Tenure {
        let mut held = self.lease.lock().await;
        let Some(lease) = held.lease.as_mut() else {
            if during_job {
                return Tenure::Taken;
            }
            return match self.take_over().await {
                Some(lease) => {
                    held.hold(lease);
                    Tenure::Held
                }
                None => Tenure::Taken,
            };
        };
        let state = match lease.state().await {
            LeaseState::Lost => match self.store.try_lease(RETRAINING_LEASE).await {
                Ok(Some(taken)) => {
                    tracing::warn!("the retraining lease's connection closed; taken back");
                    held.lease = Some(taken);
                    LeaseState::Held
                }
                Ok(None) => {
                    held.lease = None;
                    return Tenure::Taken;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the retraining lease");
                    LeaseState::Unconfirmed
                }
            },
            state => state,
        };
        if state == LeaseState::Held {
            held.confirmed = Instant::now();
            return Tenure::Held;
        }
        let silent = held.confirmed.elapsed();
        if silent < self.config.lease_timeout {
            return Tenure::Held;
        }
        held.lease = None;
        Tenure::Expired(silent)
    }

    /// While a job runs: how it is to stop once another runner holds the lease, or once the
    /// lease went unconfirmed past `lease_timeout`; pending until then.
    async fn watch_lease(&self) -> Stopped {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        loop {
            tick.tick().await;
            match self.tenure(true).await {
                Tenure::Held => {}
                Tenure::Taken => return Stopped::Gone,
                Tenure::Expired(silent) => return Stopped::Failed(lease_expired(silent)),
            }
        }
    }

    /// Runs one claimed job to its end and records it.
    async fn execute(&self, mut job: RetrainJob, shutdown: &mut watch::Receiver<bool>) {
        let started = Instant::now();
        tracing::info!(job = %job.job_id, model = %job.model_name, trigger = %job.trigger, "retraining job started");
        // The lease is watched through every step: one that a store call waits on for ever (a
        // database gone silent) included. A stopped attempt is dropped where it stands: its
        // recipe is killed with its group, and what it was writing is removed here.
        let (outcome, watched) = tokio::select! {
            outcome = self.attempt(&mut job, shutdown) => (outcome, false),
            stopped = self.watch_lease() => (Err(stopped), true),
        };
        let outcome = match (outcome, &job.candidate_version) {
            // Stopped after registering: the version is in the registry (its rollout may have
            // started), whatever the lease says.
            (Err(Stopped::Failed(why)), Some(version)) if watched => {
                Err(Stopped::Failed(format!("{why} (version {version} was registered; its rollout may have started)")))
            }
            (outcome, _) => outcome,
        };
        let (state, reason) = match outcome {
            Ok(()) => (
                JobState::Succeeded,
                format!("registered {} version {}", job.model_name, job.candidate_version.clone().unwrap_or_default()),
            ),
            Err(Stopped::Gone) => {
                tracing::warn!(job = %job.job_id, "retraining job taken from this runner; left as it is");
                if watched {
                    // The runner that took it marked it interrupted and cleaned up what it
                    // found; what the recipe wrote after that is removed here.
                    self.remove_stopped_partials(&job).await;
                }
                return;
            }
            Err(Stopped::Cancelled(why)) => (JobState::Cancelled, why),
            Err(Stopped::Failed(why)) => (JobState::Failed, why),
        };
        if state != JobState::Succeeded {
            job.error = reason.clone();
        } else {
            job.progress = 1.0;
        }
        let change = Change { actor: RUNNER, reason: &reason, at: Utc::now() };
        // A job left 'running' would refuse every later job of its model: its end is recorded
        // however long the database takes to come back (until the monitor stops, whose next
        // start marks it interrupted).
        let recorded = self.record_end(&job, state, &change, started, shutdown).await;
        if !recorded {
            // Left running: let go of the lease, so that taking it again marks the job
            // interrupted (instead of it holding back every later job of its model).
            self.lease.lock().await.lease = None;
        } else if watched {
            // Dropped where it stood: what it was writing goes, and a version it registered
            // without moving its files into place is archived (the database answers again).
            self.remove_stopped_partials(&job).await;
        }
    }

    /// [`Runner::remove_partial_versions`] of a job whose attempt was dropped, bounded.
    async fn remove_stopped_partials(&self, job: &RetrainJob) {
        let removal = self.remove_partial_versions(&job.model_name, Some(&job.job_id));
        if tokio::time::timeout(STORE_CALL_TIMEOUT, removal).await.is_err() {
            tracing::warn!(job = %job.job_id, "cannot check what a stopped job registered");
        }
    }

    /// Records the end of `job`, however long the database takes to come back (until
    /// `shutdown`); false when it is left running.
    async fn record_end(
        &self,
        job: &RetrainJob,
        state: JobState,
        change: &Change<'_>,
        started: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let reason = change.reason;
        let (mut pause, mut refused) = (Duration::from_millis(500), 0);
        loop {
            // A database that does not answer (a partition) is waited for like one refusing
            // connections: shutdown is still heard.
            let finish = self.store.finish_retrain(job, state, change);
            let finish = answered_within(2 * LEASE_CHECK_TIMEOUT, " recording a job's end", finish).await;
            // A statement refused (a serialization failure, say) is tried a few times too.
            refused += u32::from(finish.as_ref().is_err_and(|e| !unreachable_database(e)));
            match finish {
                Ok(true) => {
                    tracing::info!(
                        job = %job.job_id, model = %job.model_name, seconds = started.elapsed().as_secs_f64(),
                        "retraining job {state}: {reason}"
                    );
                    return true;
                }
                Ok(false) => {
                    tracing::warn!(job = %job.job_id, "retraining job was no longer running when it ended");
                    return true;
                }
                Err(e) if !unreachable_database(&e) && refused >= 3 => {
                    tracing::error!(job = %job.job_id, error = %e, "cannot record the end of a retraining job; left running");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(job = %job.job_id, error = %e, retry_in = ?pause, "cannot record the end of a retraining job");
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return false,
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The retraining lease, with the jobs the runner before left running marked interrupted;
    /// None while another runner holds it (or the marking failed: tried again next round).
    async fn take_over(&self) -> Option<Lease> {
        match self.store.try_lease(RETRAINING_LEASE).await {
            Ok(Some(lease)) => match bounded(self.interrupt_orphans()).await {
                Ok(()) => {
                    self.remove_partials_of_stopped_jobs().await;
                    Some(lease)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot mark interrupted retraining jobs; retrying");
                    None
                }
            },
            Ok(None) => {
                tracing::debug!("another runner holds the retraining lease; leaving the queue to it");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the retraining lease; retrying");
                None
            }
        }
    }

    /// Marks the jobs left running interrupted (another runner's that stopped, or this one's
    /// before a restart).
    async fn interrupt_orphans(&self) -> Result<(), sqlx::Error> {
        let change = Change { actor: RUNNER, reason: INTERRUPTED, at: Utc::now() };
        for job in self.store.interrupt_retrains(&change).await? {
            tracing::warn!(job = %job.job_id, model = %job.model_name, "retraining job {INTERRUPTED}");
        }
        Ok(())
    }

    /// Removes what every job not running was writing, once the jobs left running are marked
    /// interrupted (with the lease held, no job runs then): theirs, and what jobs marked before
    /// left (a runner stopped before its clean-up, or cut off between the marking and it). Each
    /// model's bounded like a store call; what is not done now is done at the next take-over.
    async fn remove_partials_of_stopped_jobs(&self) {
        let Ok(models) = std::fs::read_dir(&self.output) else { return };
        for model in models.flatten().filter(|entry| entry.path().is_dir()) {
            let model = model.file_name().to_string_lossy().into_owned();
            if tokio::time::timeout(STORE_CALL_TIMEOUT, self.remove_partial_versions(&model, None)).await.is_err() {
                tracing::warn!(
                    model,
                    "cannot check what stopped retraining jobs of the model registered; next take-over"
                );
            }
        }
    }

    /// Removes what a stopped job (`job`, or any with None) of `model` was writing
    /// (`.<version>.job-<id>` in the model's directory): a whole trained model, never to be moved
    /// into place. A version the job registered before it stopped, whose files are not in place,
    /// is archived.
    async fn remove_partial_versions(&self, model: &str, job: Option<&str>) {
        for (version, job_id, path) in self.partial_dirs(model, job) {
            // What the job would have registered (read off the async threads: a model may be large).
            let artifact = path.join("model.onnx");
            let partial_digest =
                tokio::task::spawn_blocking(move || vigil_store::registry::sha256_file(&artifact).ok())
                    .await
                    .ok()
                    .flatten();
            // Only the version this job registered: by this runner, for the place it was to be
            // moved to, with the partial directory's model, and whose files are not there.
            let placed = self.output.join(model).join(&version).join("model.onnx");
            let placed = std::path::absolute(&placed).unwrap_or(placed);
            let row = match self.store.model_version(model, &version).await {
                Ok(row) => row,
                Err(e) => {
                    // Kept: its digest is the evidence of what the job registered, looked at again
                    // at the next clean-up.
                    tracing::warn!(model, version, error = %e, "cannot look a stopped job's version up; its partial version is kept");
                    continue;
                }
            };
            if let Some(row) = row
                && row.stage == Stage::Candidate.as_str()
                && row.registered_by == RUNNER
                && Path::new(&row.artifact_uri) == placed
                && partial_digest.as_deref() == Some(row.artifact_sha256.as_str())
                && !placed.exists()
            {
                let why = format!("retraining job {job_id} was interrupted before moving its files into place");
                if !self.archive_unplaced(model, &version, &why).await {
                    // Kept, as above, for the next clean-up to archive.
                    continue;
                }
            }
            // Removed once the registry was looked at: cut off before, the files (and their
            // digest) are still there.
            remove_partial(&path);
        }
    }

    /// The versions `job` (or any job, with None) was writing in `model`'s directory
    /// (`.<version>.job-<id>`): version, job and directory.
    fn partial_dirs(&self, model: &str, job: Option<&str>) -> Vec<(String, String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.output.join(model)) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let (version, job_id) = name.strip_prefix('.')?.split_once(".job-")?;
                if version.is_empty() || job.is_some_and(|job| job != job_id) {
                    return None;
                }
                Some((version.to_string(), job_id.to_string(), entry.path()))
            })
            .collect()
    }

    /// Archives a version registered whose files never reached the repository: servers and
    /// the control plane could not serve it, and a rollout would be refused.
    async fn archive_unplaced(&self, model: &str, version: &str, why: &str) -> bool {
        let change = Change { actor: RUNNER, reason: why, at: Utc::now() };
        match self.store.set_stage(model, version, Stage::Archived, &change).await {
            Ok(_) => {
                tracing::warn!(model, version, "{why}: the registered version is archived");
                true
            }
            Err(e) => {
                tracing::error!(model, version, error = %e, "{why}, and archiving the registered version failed");
                false
            }
        }
    }

    /// Dataset, recipe, registration, rollout: the job's steps.
    async fn attempt(&self, job: &mut RetrainJob, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stopped> {
        let failed = |e: anyhow::Error| Stopped::Failed(format!("{e:#}"));
        let Some(model) = self.config.models.get(&job.model_name).cloned() else {
            return Err(Stopped::Failed(format!(
                "{} has no recipe: add [retraining.models.{}] to the monitor's configuration",
                job.model_name, job.model_name
            )));
        };
        let timings = &mut Vec::<(&str, f64)>::new();
        let mut clock = Instant::now();
        let mut lap = |timings: &mut Vec<(&'static str, f64)>, name: &'static str| {
            timings.push((name, clock.elapsed().as_secs_f64()));
            clock = Instant::now();
        };

        self.report(job, 0.02, "exporting the dataset").await?;
        let (dataset, dataset_note) = self.dataset(job, &model).await.map_err(failed)?;
        job.dataset = dataset.display().to_string();
        lap(timings, "dataset");

        let version = self.next_version(&job.model_name).await.map_err(failed)?;
        let serving = self.serving_version(&job.model_name).await.map_err(failed)?;
        let model_dir = self.output.join(&job.model_name);
        let partial = model_dir.join(format!(".{version}.job-{}", job.job_id));
        std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display())).map_err(failed)?;
        if let Err(stopped) = self.report(job, 0.1, &format!("training version {version}")).await {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(stopped);
        }
        let run = RecipeRun { out: &partial, version: &version, dataset: &dataset, serving: serving.as_deref() };
        let trained = self.train(job, &model, &run, shutdown).await;
        if let Err(e) = trained {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        lap(timings, "training");

        if let Err(stopped) = self.report(job, 0.92, "registering the candidate").await {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(stopped);
        }
        let dir = model_dir.join(&version);
        let registered = self.register(job, &partial, &dir, &version, &dataset_note).await;
        if let Err(e) = registered {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(failed(e));
        }
        job.candidate_version = Some(version.clone());
        lap(timings, "registration");

        if job.rollout {
            self.report(job, 0.97, "starting the rollout").await?;
            let plan = model.rollout.plan(model.gate);
            let reason = format!("retraining job {} ({})", job.job_id, job.trigger);
            // The database's clock, as for every rollout change: the controller times the
            // step against it.
            let at = self.store.clock().await.map_err(|e| {
                Stopped::Failed(format!("version {version} registered, but reading the database's clock failed: {e}"))
            })?;
            let change = Change { actor: RUNNER, reason: &reason, at };
            crate::rollout::start(&self.store, &job.model_name, &version, &plan, &change).await.map_err(|e| {
                Stopped::Failed(format!("version {version} registered, but its rollout did not start: {e}"))
            })?;
            lap(timings, "rollout start");
        }
        let spent: Vec<String> = timings.iter().map(|(name, s)| format!("{name} {s:.1}s")).collect();
        job.step = format!("done: {}", spent.join(", "));
        Ok(())
    }

    /// The job's dataset directory (exported now unless the job names one) and what it holds.
    async fn dataset(&self, job: &RetrainJob, model: &ModelRetraining) -> Result<(PathBuf, String)> {
        if !job.dataset.is_empty() {
            let dir = PathBuf::from(&job.dataset);
            let manifest = vigil_datasets::manifest_of(&dir, &job.model_name)?;
            let id = manifest["dataset_id"].as_str().unwrap_or_default().to_string();
            return Ok((dir, format!("dataset {id} ({} labelled items)", manifest["labelled"])));
        }
        let now = Utc::now();
        let window = chrono::Duration::from_std(model.dataset_window).unwrap_or(chrono::Duration::days(30));
        let spec = vigil_datasets::Spec {
            model: job.model_name.clone(),
            version: None,
            since: now - window,
            until: now,
            only_labelled: true,
            limits: vigil_datasets::Limits::default(),
            out: self.config.workdir.join("datasets"),
            captures: self.config.captures.as_deref().map(vigil_datasets::Captures::open).transpose()?,
            progress: None,
        };
        match vigil_datasets::export(&self.store, &spec).await? {
            vigil_datasets::Export::Written(d) => {
                Ok((d.dir, format!("dataset {} ({} labelled items)", d.id, d.labelled)))
            }
            vigil_datasets::Export::Empty => {
                bail!("no labelled predictions of {} in the dataset window", job.model_name)
            }
            vigil_datasets::Export::Refused { checks, failed } => {
                let details: Vec<String> =
                    checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
                bail!("dataset refused ({}): {}", failed.join(", "), details.join("; "))
            }
        }
    }

    /// The version the model's deployment serves to most requests, if it has one.
    async fn serving_version(&self, model: &str) -> Result<Option<String>> {
        let deployments = self.store.deployments().await?;
        Ok(deployments.into_iter().find(|d| d.model_name == model).map(|d| d.primary_version))
    }

    /// One more than the highest numbered version registered or in the repository.
    async fn next_version(&self, model: &str) -> Result<String> {
        let registered = self.store.model_versions(Some(model)).await?;
        let on_disk = std::fs::read_dir(self.output.join(model))
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()).collect())
            .unwrap_or_else(|_| Vec::new());
        let highest = registered.iter().filter_map(|v| v.version.parse::<u64>().ok()).chain(on_disk).max();
        Ok((highest.unwrap_or(0) + 1).to_string())
    }

    /// Runs the recipe into `run.out`, reporting its progress and log; stops it on cancel,
    /// timeout or shutdown. Besides its arguments the recipe gets the job, the model, the model
    /// repository and the version serving now (`VIGIL_RETRAIN_JOB`, `VIGIL_MODEL`,
    /// `VIGIL_MODEL_REPOSITORY`, `VIGIL_BASE_VERSION`), from which a fine-tuning recipe starts.
    async fn train(
        &self,
        job: &mut RetrainJob,
        model: &ModelRetraining,
        run: &RecipeRun<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut command = tokio::process::Command::new(&model.recipe[0]);
        command
            .args(&model.recipe[1..])
            .arg("--out")
            .arg(absolute(run.out))
            .arg("--version")
            .arg(run.version)
            .arg("--dataset")
            .arg(absolute(run.dataset))
            .env("VIGIL_RETRAIN_JOB", &job.job_id)
            .env("VIGIL_MODEL", &job.model_name)
            .env("VIGIL_MODEL_REPOSITORY", absolute(&self.output))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that stopping it stops what it started too.
            .process_group(0);
        match run.serving {
            Some(version) => command.env("VIGIL_BASE_VERSION", version),
            None => command.env_remove("VIGIL_BASE_VERSION"),
        };
        if let Some(cwd) = &model.cwd {
            command.current_dir(cwd);
        }
        let child =
            command.spawn().map_err(|e| Stopped::Failed(format!("cannot start the recipe {:?}: {e}", model.recipe)))?;
        let mut child = Recipe::new(child);
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(256);
        for stream in [
            child.0.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.0.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(super::output::forward(stream, lines_tx.clone()));
        }
        drop(lines_tx);
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut tick = tokio::time::interval(REPORT_EVERY);
        let mut output_done = false;
        let status = loop {
            tokio::select! {
                line = lines.recv(), if !output_done => match line {
                    Some(line) => self.take_line(job, &line),
                    None => output_done = true,
                },
                status = child.0.wait() => {
                    // Done, though what it started in the background may hold its output open:
                    // that is stopped with its group, and the output written is read to its end.
                    child.kill_group();
                    // Once: the pid is free to be reused from now on.
                    child.1 = None;
                    let grace = tokio::time::Instant::now() + OUTPUT_GRACE;
                    while !output_done {
                        match tokio::time::timeout_at(grace, lines.recv()).await {
                            Ok(Some(line)) => self.take_line(job, &line),
                            Ok(None) | Err(_) => output_done = true,
                        }
                    }
                    break status;
                }
                _ = tick.tick() => {
                    let report = self.store.report_retrain(&job.job_id, job.progress, &job.step, &job.log);
                    match tokio::time::timeout(LEASE_CHECK_TIMEOUT, report).await {
                        Ok(Ok(Reported::Running)) => {}
                        Ok(Ok(Reported::CancelRequested)) => {
                            child.stop().await;
                            return Err(Stopped::Cancelled("cancelled while training".into()));
                        }
                        Ok(Ok(Reported::Gone)) => {
                            child.stop().await;
                            return Err(Stopped::Gone);
                        }
                        Ok(Err(e)) => tracing::warn!(job = %job.job_id, error = %e, "cannot report retraining progress"),
                        Err(_) => tracing::warn!(job = %job.job_id, "the database did not take the job's progress in time"),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    child.stop().await;
                    return Err(Stopped::Failed(format!(
                        "the recipe ran past retraining.timeout ({}) and was stopped",
                        humantime::format_duration(self.config.timeout)
                    )));
                }
                _ = shutdown.changed() => {
                    child.stop().await;
                    return Err(Stopped::Failed(INTERRUPTED.into()));
                }
            }
        };
        let status = status.map_err(|e| Stopped::Failed(format!("waiting for the recipe: {e}")))?;
        if !status.success() {
            let last =
                job.log.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("progress ")).unwrap_or("");
            return Err(Stopped::Failed(format!("the recipe failed ({status}): {last}")));
        }
        for file in ["model.onnx", "model.toml"] {
            if !run.out.join(file).is_file() {
                return Err(Stopped::Failed(format!("the recipe exited 0 but wrote no {file} into --out")));
            }
        }
        Ok(())
    }

    /// A line of the recipe's output: a `progress <0..1> <what>` line moves the job's progress
    /// (within the training share of the job); any line goes to the log's tail.
    fn take_line(&self, job: &mut RetrainJob, line: &str) {
        // The log is stored as text, which takes no NUL.
        let escaped;
        let line = if line.contains('\0') {
            escaped = line.replace('\0', "\\0");
            escaped.as_str()
        } else {
            line
        };
        if let Some(rest) = line.strip_prefix("progress ") {
            let (fraction, what) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(f) = fraction.parse::<f64>()
                && (0.0..=1.0).contains(&f)
            {
                job.progress = 0.1 + 0.8 * f;
                job.step = what.trim().to_string();
            }
        }
        job.log.push_str(line);
        job.log.push('\n');
        let max = self.config.max_log_bytes;
        if job.log.len() > max {
            let mut cut = job.log.len() - max;
            while !job.log.is_char_boundary(cut) {
                cut += 1;
            }
            let cut = job.log[cut..].find('\n').map_or(cut, |n| cut + n + 1);
            job.log.drain(..cut);
        }
    }

    /// Moves the trained version into the repository and registers it as a candidate.
    async fn register(&self, job: &RetrainJob, partial: &Path, dir: &Path, version: &str, dataset: &str) -> Result<()> {
        let metrics: serde_json::Value = match std::fs::read(partial.join("metrics.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("the recipe's metrics.json is not JSON")?,
            Err(_) => serde_json::json!({}),
        };
        if dir.exists() {
            bail!("{} exists already: version {version} was written by someone else meanwhile", dir.display());
        }
        // Registered first, then moved into place: a registration that fails leaves nothing a
        // server watching the repository would load (and serve, unregistered).
        let artifact = dir.join("model.onnx");
        let digest = vigil_store::registry::sha256_file(&partial.join("model.onnx"))?;
        let now = Utc::now();
        let recipe = self.config.models.get(&job.model_name).map(|m| m.recipe.join(" ")).unwrap_or_default();
        let row = ModelVersionRow {
            model_name: job.model_name.clone(),
            version: version.into(),
            artifact_sha256: digest,
            artifact_uri: std::path::absolute(&artifact).unwrap_or(artifact).display().to_string(),
            training_data: format!("{recipe}: base data + {dataset}"),
            metrics,
            stage: "candidate".into(),
            registered_by: RUNNER.into(),
            registered_at: now,
            stage_changed_at: now,
        };
        self.store
            .register_version(&row, &format!("retraining job {} ({})", job.job_id, job.trigger))
            .await
            .map_err(|e| anyhow!("registering version {version}: {e}"))?;
        // The whole version appears at once: servers watching the repository load it complete.
        if let Err(e) = std::fs::rename(partial, dir) {
            let why =
                format!("retraining job {}: moving version {version} to {} failed: {e}", job.job_id, dir.display());
            let archived = self.archive_unplaced(&job.model_name, version, &why).await;
            bail!("{why}; the registered version is {}", if archived { "archived" } else { "left a candidate" });
        }
        Ok(())
    }

    /// Writes the job's progress; a job cancelled or taken meanwhile stops here.
    async fn report(&self, job: &mut RetrainJob, progress: f64, step: &str) -> Result<(), Stopped> {
        (job.progress, job.step) = (progress, step.to_string());
        match self.store.report_retrain(&job.job_id, progress, step, &job.log).await {
            Ok(Reported::Running) => Ok(()),
            Ok(Reported::CancelRequested) => Err(Stopped::Cancelled(format!("cancelled before {step}"))),
            Ok(Reported::Gone) => Err(Stopped::Gone),
            Err(e) => Err(Stopped::Failed(format!("the store failed: {e}"))),
        }
    }
}

/// How long a runner waits for one of its statements between jobs (claiming a job, marking
/// jobs interrupted, reading one) before taking the database for unreachable.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `call`, or a timeout error once [`STORE_CALL_TIMEOUT`] passed without an answer.
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    answered_within(STORE_CALL_TIMEOUT, "", call).await
}

/// Removes a stopped job's partial version.
fn remove_partial(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stopped job's partial version"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a stopped job's partial version"),
    }
}

/// Why a job whose runner let go of its unconfirmed lease failed.
fn lease_expired(silent: Duration) -> String {
    format!(
        "stopped: the database did not confirm this runner's retraining lease for {} s, so another runner may \
         have taken the job over; `vigil retrain retry <job>` runs it again",
        silent.as_secs()
    )
}

/// The database could not be reached (rather than refusing the statement): worth retrying.
fn unreachable_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed)
        || e.as_database_error().and_then(|e| e.code()).is_some_and(|code| {
            // Connection exceptions, insufficient resources, operator intervention (a failover).
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
        })
}

/// How long the output a recipe wrote before it exited is still read.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A running recipe, with its process group (its pid, kept once it is reaped); dropping it
/// kills the group.
struct Recipe(tokio::process::Child, Option<i32>);

impl Recipe {
    fn new(child: tokio::process::Child) -> Self {
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        Self(child, group)
    }

    /// Kills the recipe and every process it started, and reaps it.
    async fn stop(&mut self) {
        self.kill_group();
        let _ = self.0.kill().await;
        // Reaped: the pid is free to be reused from now on.
        self.1 = None;
    }

    /// Kills every process of the recipe's group: those it left running too.
    fn kill_group(&self) {
        if let Some(pid) = self.1 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Recipe {
    fn drop(&mut self) {
        self.kill_group();
    }
}
