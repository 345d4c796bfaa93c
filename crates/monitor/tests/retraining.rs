//! The retraining runner on a real Postgres, with recipes as shell scripts: a job's recipe
//! writes a version that is moved into the repository whole and registered as a candidate with
//! its data reference, its progress and log in the store; a failing recipe fails the job with
//! its last line and leaves nothing behind; a cancelled job stops its recipe; a recipe past the
//! timeout is stopped; a job running when its monitor stopped, or died, is marked failed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use vigil_monitor::retrain::RetrainingConfig;
use vigil_monitor::retrain::runner::{self, INTERRUPTED};
use vigil_store::LeaseStore as _;
use vigil_store::testing::TestDatabase;
use vigil_store::{Change, DeploymentStore, PgStore, PredictionStore, RegistryStore, RetrainJob, RetrainStore};

/// A recipe writing a real ONNX model (the scratch detector's) with a card, reporting progress;
/// `extra` runs before it writes anything.
fn recipe(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/scratch-detector/1/model.onnx");
    let script = format!(
        r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --out) out=$2; shift ;; --version) version=$2; shift ;; --dataset) dataset=$2; shift ;; esac
  shift
done
echo "progress 0.25 reading $dataset"
{extra}
echo "progress 0.75 writing version $version"
cp "{model}" "$out/model.onnx"
printf 'name = "m"\nversion = %s\n' "$version" > "$out/model.toml"
echo '{{"holdout": {{"accuracy": 0.91}}, "job": "'"$VIGIL_RETRAIN_JOB"'", "model": "'"$VIGIL_MODEL"'", "repository": "'"$VIGIL_MODEL_REPOSITORY"'", "base": "'"${{VIGIL_BASE_VERSION-none}}"'"}}' > "$out/metrics.json"
echo "trained"
"#,
        model = model.display()
    );
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, script).unwrap();
    path
}

/// Where the jobs' datasets go ([`queue`] writes one per job's model there).
fn dataset(dir: &Path) -> String {
    let path = dir.join("datasets");
    std::fs::create_dir_all(&path).unwrap();
    path.display().to_string()
}

fn config(dir: &Path, recipes: &[(&str, &Path)], timeout: &str) -> RetrainingConfig {
    let mut text = format!("poll = \"50ms\"\ntimeout = \"{timeout}\"\nworkdir = \"{}\"\n", dir.join("work").display());
    for (model, script) in recipes {
        text += &format!("[models.{model}]\nrecipe = [\"sh\", \"{}\"]\n", script.display());
    }
    let config: RetrainingConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    config
}

/// A runner leading on `store` until the returned sender stops it.
fn start(
    store: &PgStore,
    config: RetrainingConfig,
    repository: &Path,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>, tokio::sync::watch::Sender<bool>) {
    let (leading_tx, leading) = tokio::sync::watch::channel(true);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(runner::run(store.clone(), config, repository.to_path_buf(), leading, shutdown));
    (stop, task, leading_tx)
}

/// A fresh database (migrated) and a working directory with its model repository's path.
async fn setup() -> (TestDatabase, PgStore, tempfile::TempDir, PathBuf) {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    (db, store, dir, repository)
}

async fn wait_for(store: &PgStore, job: &str, what: impl Fn(&RetrainJob) -> bool) -> RetrainJob {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = store.retrain_job(job).await.unwrap().unwrap();
        if what(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never got there: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A manual job of `model` on its dataset in `datasets`, a directory as `vigil dataset export`
/// writes it (its manifest is what a job reads).
fn queue(model: &str, datasets: &str) -> RetrainJob {
    let path = Path::new(datasets).join(format!("{model}-0123456789abcdef"));
    std::fs::create_dir_all(&path).unwrap();
    let manifest = serde_json::json!({ "dataset_id": "0123456789abcdef", "model": model, "labelled": 42 });
    std::fs::write(path.join("manifest.json"), manifest.to_string()).unwrap();
    let dataset = path.display().to_string();
    RetrainJob::queued(model, "manual", &dataset, false, &Change { actor: "anna", reason: "", at: Utc::now() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_registers_its_candidate_and_a_failing_recipe_leaves_nothing() {
    let (_db, store, dir, repository) = setup().await;
    // Version 1 exists on disk and 2 in the registry: the job writes 3.
    std::fs::create_dir_all(repository.join("good/1")).unwrap();
    let registered = vigil_store::ModelVersionRow {
        model_name: "good".into(),
        version: "2".into(),
        artifact_sha256: "ab".repeat(32),
        artifact_uri: String::new(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "candidate".into(),
        registered_by: "anna".into(),
        registered_at: Utc::now(),
        stage_changed_at: Utc::now(),
    };
    store.register_version(&registered, "").await.unwrap();
    // Version 2 serves: a fine-tuning recipe would start from it.
    let by = Change { actor: "anna", reason: "", at: Utc::now() };
    store.set_deployment(&vigil_store::testing::single_deployment("good", "d1", "2"), &by).await.unwrap();
    let good = recipe(dir.path(), "good", "");
    let failing = recipe(dir.path(), "failing", "echo 'cannot fit: a class has no rows' >&2; exit 3");
    // A recipe that leaves a process running in the background, holding its output open, and
    // prints a NUL (which Postgres's text refuses).
    let detached = recipe(dir.path(), "detached", r"printf 'a\000b\n'; sleep 300 &");
    let data = dataset(dir.path());
    let recipes: [(&str, &Path); 3] = [("good", &good), ("failing", &failing), ("detached", &detached)];
    let (stop, task, _leading) = start(&store, config(dir.path(), &recipes, "1m"), &repository);

    let job = queue("good", &data);
    store.enqueue_retrain(&job).await.unwrap();
    let done = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert_eq!((done.state.as_str(), done.candidate_version.as_deref()), ("succeeded", Some("3")), "{done:?}");
    assert_eq!(done.progress, 1.0);
    assert!(done.step.starts_with("done: dataset"), "{}", done.step);
    let log: Vec<&str> = done.log.lines().collect();
    assert_eq!(
        log,
        [
            format!("progress 0.25 reading {data}/good-0123456789abcdef").as_str(),
            "progress 0.75 writing version 3",
            "trained"
        ]
    );
    // The version is in the repository, whole, and registered with its digest and data.
    let version_dir = repository.join("good/3");
    let digest = vigil_store::registry::sha256_file(&version_dir.join("model.onnx")).unwrap();
    let row = store.model_version("good", "3").await.unwrap().expect("registered");
    assert_eq!(
        (row.artifact_sha256, row.stage.as_str(), row.registered_by.as_str()),
        (digest, "candidate", "retraining")
    );
    assert_eq!(row.artifact_uri, version_dir.join("model.onnx").display().to_string());
    assert!(row.training_data.contains("dataset 0123456789abcdef (42 labelled items)"), "{}", row.training_data);
    assert_eq!(row.metrics["holdout"]["accuracy"], 0.91);
    assert_eq!(row.metrics["job"], job.job_id.as_str(), "the recipe knows its job");
    assert_eq!(
        (&row.metrics["model"], &row.metrics["repository"], &row.metrics["base"]),
        (&serde_json::json!("good"), &serde_json::json!(repository.display().to_string()), &serde_json::json!("2")),
        "the recipe knows the model, the repository and the version serving"
    );
    let leftovers: Vec<String> = std::fs::read_dir(repository.join("good"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let job = queue("failing", &data);
    store.enqueue_retrain(&job).await.unwrap();
    let failed = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert_eq!(failed.state, "failed");
    assert!(
        failed.error.contains("exit status: 3") && failed.error.contains("cannot fit: a class has no rows"),
        "{}",
        failed.error
    );
    assert!(!repository.join("failing").read_dir().unwrap().any(|_| true), "nothing left behind");
    assert!(store.model_versions(Some("failing")).await.unwrap().is_empty());

    // The job ends when the recipe does (not at its 1 minute timeout, 30 s past the wait here),
    // whatever it left running.
    let job = queue("detached", &data);
    store.enqueue_retrain(&job).await.unwrap();
    let ended = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert_eq!((ended.state.as_str(), ended.candidate_version.as_deref()), ("succeeded", Some("1")), "{ended:?}");
    assert!(ended.log.trim_end().ends_with("trained"), "the output before it exited is all read: {}", ended.log);
    assert!(ended.log.contains("a\\0b"), "the NUL escaped: {}", ended.log);

    // A model without a recipe fails with what to do.
    let job = queue("unknown", &data);
    store.enqueue_retrain(&job).await.unwrap();
    let failed = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert!(failed.error.contains("add [retraining.models.unknown]"), "{}", failed.error);

    stop.send_replace(true);
    task.await.unwrap();
    let actions: Vec<(String, String, String)> = store
        .audit_events(100)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .filter(|e| e.subject.starts_with("good/"))
        .map(|e| (e.action, e.subject, e.to_state))
        .collect();
    let subject = format!("good/job {}", done.job_id);
    let e = |a: &str, s: &str, t: &str| (a.to_string(), s.to_string(), t.to_string());
    assert_eq!(
        actions,
        [
            e("register", "good/2", "candidate"),
            e("retrain", &subject, "queued"),
            e("retrain", &subject, "running"),
            e("register", "good/3", "candidate"),
            e("retrain", &subject, "succeeded"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_timed_out_and_interrupted_jobs_stop_their_recipe() {
    let (_db, store, dir, repository) = setup().await;
    let slow = recipe(dir.path(), "slow", "echo started; sleep 60");
    let data = dataset(dir.path());

    // Cancelled while training: the recipe stops at once, nothing is registered.
    let (stop, task, _leading) = start(&store, config(dir.path(), &[("slow", &slow)], "1m"), &repository);
    let job = queue("slow", &data);
    store.enqueue_retrain(&job).await.unwrap();
    wait_for(&store, &job.job_id, |j| j.log.contains("started")).await;
    let asked = Instant::now();
    store.cancel_retrain(&job.job_id, &Change { actor: "ben", reason: "wrong data", at: Utc::now() }).await.unwrap();
    let cancelled = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert!(asked.elapsed() < Duration::from_secs(10), "the recipe was not stopped");
    assert_eq!((cancelled.state.as_str(), cancelled.error.as_str()), ("cancelled", "cancelled while training"));
    assert!(store.model_versions(Some("slow")).await.unwrap().is_empty());

    // The monitor stopping mid-job fails it as interrupted.
    let job = queue("slow", &data);
    store.enqueue_retrain(&job).await.unwrap();
    wait_for(&store, &job.job_id, |j| j.log.contains("started")).await;
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("the runner stops at once").unwrap();
    let interrupted = store.retrain_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!((interrupted.state.as_str(), interrupted.error.as_str()), ("failed", INTERRUPTED));

    // A job some monitor was running when it died is failed by the next runner to lead.
    let orphan = queue("slow", &data);
    store.enqueue_retrain(&orphan).await.unwrap();
    assert_eq!(store.claim_retrain(Utc::now()).await.unwrap().unwrap().job_id, orphan.job_id);
    // What it was writing when it died, beside a version of another job's.
    let partial = repository.join(format!("slow/.7.job-{}", orphan.job_id));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.onnx"), b"half a model").unwrap();
    // It had registered version 7 (whose files were still in the partial directory): a row
    // no server could load.
    let at = Utc::now();
    let registered = vigil_store::ModelVersionRow {
        model_name: "slow".into(),
        version: "7".into(),
        artifact_sha256: vigil_store::registry::sha256_file(&partial.join("model.onnx")).unwrap(),
        artifact_uri: std::path::absolute(repository.join("slow/7/model.onnx")).unwrap().display().to_string(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "candidate".into(),
        registered_by: "retraining".into(),
        registered_at: at,
        stage_changed_at: at,
    };
    store.register_version(&registered, "").await.unwrap();
    // Another partial directory of the job, of version 8, which a person registered meanwhile
    // for files of their own: left registered.
    let theirs = repository.join(format!("slow/.8.job-{}", orphan.job_id));
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("model.onnx"), b"half a model").unwrap();
    let by_a_person = vigil_store::ModelVersionRow {
        version: "8".into(),
        artifact_uri: dir.path().join("elsewhere/model.onnx").display().to_string(),
        registered_by: "anna".into(),
        ..registered.clone()
    };
    store.register_version(&by_a_person, "").await.unwrap();
    // Left by a job marked stopped before (its runner cut off before its clean-up), beside a
    // directory of something else.
    let leftover = repository.join(format!("slow/.5.job-{}", cancelled.job_id));
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("model.onnx"), b"a whole model").unwrap();
    let unrelated = repository.join("slow/.notes");
    std::fs::create_dir_all(&unrelated).unwrap();
    let (stop, task, _leading) = start(&store, config(dir.path(), &[("slow", &slow)], "1s"), &repository);
    let failed = wait_for(&store, &orphan.job_id, |j| !j.is_active()).await;
    assert_eq!((failed.state.as_str(), failed.error.as_str()), ("failed", INTERRUPTED));
    let removed = Instant::now() + Duration::from_secs(5);
    while partial.exists() || leftover.exists() {
        assert!(!partial.exists() || Instant::now() < removed, "the interrupted job's partial version was not removed");
        assert!(Instant::now() < removed, "a stopped job's leftover partial version was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The version it registered, with no files in place, is archived, saying why.
    let archived = Instant::now() + Duration::from_secs(5);
    while store.model_version("slow", "7").await.unwrap().unwrap().stage != "archived" {
        assert!(Instant::now() < archived, "the unplaced version was not archived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!theirs.exists());
    assert!(unrelated.exists());
    assert_eq!(store.model_version("slow", "8").await.unwrap().unwrap().stage, "candidate", "not the job's");
    let events = store.audit_events(20).await.unwrap();
    let archive = events.iter().find(|e| e.subject == "slow/7" && e.to_state == "archived").expect("an audit event");
    assert!(archive.reason.contains("interrupted before moving its files into place"), "{}", archive.reason);

    // Past the timeout (1 s here) the recipe is stopped and the job failed.
    let job = queue("slow", &data);
    store.enqueue_retrain(&job).await.unwrap();
    let timed_out = wait_for(&store, &job.job_id, |j| !j.is_active()).await;
    assert_eq!(timed_out.state, "failed");
    assert!(timed_out.error.contains("past retraining.timeout (1s)"), "{}", timed_out.error);
    let ran = timed_out.duration(Utc::now()).unwrap();
    assert!(ran < chrono::Duration::seconds(10), "stopped after {ran}");
    stop.send_replace(true);
    task.await.unwrap();
}

/// A firing alarm with the retrain action queues a job only with enough new labels, never while
/// a job or a rollout of the model is active, and at most once per cooldown; labels count as new
/// from the last successful job on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_retrains_once_enough_labels_exist_and_never_twice_within_its_cooldown() {
    use vigil_monitor::retrain::trigger::{Considered, consider};
    use vigil_store::{DeploymentStore, JobState, LabelRow, RolloutStore};
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let config: vigil_monitor::MonitorConfig = toml::from_str(
        r#"
[[alerting.rules]]
name = "accuracy-low"
metric = "accuracy"
model = "scratch-detector"
window = "1h"
comparator = "<"
threshold = 0.9
actions = ["retrain", "rollout"]
[retraining.models.scratch-detector]
recipe = ["true"]
min_new_labels = 3
cooldown = "1h"
"#,
    )
    .unwrap();
    config.validate().unwrap();
    let rule = config.rules().unwrap().remove(0);
    assert!(rule.retrain && rule.rollout);
    let now = Utc::now();
    let label = |p: &vigil_store::PredictionRow| LabelRow {
        label_id: uuid::Uuid::now_v7(),
        prediction_id: p.prediction_id,
        label: "ok".into(),
        time: now,
        source: "inspector".into(),
    };
    let labelled = |n: usize, minutes_ago: i64| {
        let store = store.clone();
        async move {
            let rows: Vec<_> = (0..n)
                .map(|_| {
                    vigil_store::testing::prediction(
                        now - chrono::Duration::minutes(minutes_ago),
                        0.2,
                        serde_json::json!({}),
                    )
                })
                .collect();
            let labels: Vec<_> = rows.iter().map(label).collect();
            store.insert_batch(&rows, &labels).await.unwrap();
        }
    };
    let considered = |at: chrono::DateTime<Utc>| {
        let (store, config, rule) = (store.clone(), config.retraining.clone(), rule.clone());
        async move { consider(&store, &config, &rule, "scratch-detector", at).await.unwrap() }
    };

    labelled(2, 30).await;
    assert_eq!(considered(now).await, Considered::Waiting("2 of 3 new labelled items".into()));
    labelled(1, 20).await;
    let Considered::Queued(job) = considered(now).await else { panic!("three labels queue a job") };
    assert_eq!((job.trigger.as_str(), job.requested_by.as_str(), job.rollout), ("alarm accuracy-low", "monitor", true));
    assert!(matches!(considered(now).await, Considered::Waiting(why) if why.contains("is queued")));

    // The job succeeds; its rollout runs: no new job while it does.
    let mut running = store.claim_retrain(now).await.unwrap().unwrap();
    running.candidate_version = Some("2".into());
    store
        .finish_retrain(&running, JobState::Succeeded, &Change { actor: "retraining", reason: "", at: now })
        .await
        .unwrap();
    store
        .register_version(&vigil_store::testing::candidate_version("scratch-detector", "1", &"a".repeat(64)), "")
        .await
        .unwrap();
    store
        .register_version(&vigil_store::testing::candidate_version("scratch-detector", "2", &"b".repeat(64)), "")
        .await
        .unwrap();
    let by = Change { actor: "anna", reason: "", at: now };
    store.set_deployment(&vigil_store::testing::single_deployment("scratch-detector", "d1", "1"), &by).await.unwrap();
    let plan = config.retraining.models["scratch-detector"].rollout.plan(vigil_monitor::retrain::Gate::Auto);
    vigil_monitor::rollout::start(&store, "scratch-detector", "2", &plan, &by).await.unwrap();
    assert!(matches!(considered(now).await, Considered::Waiting(why) if why.contains("rollout")));
    vigil_monitor::rollout::manual(&store, "scratch-detector", vigil_monitor::rollout::Manual::Abort, &by)
        .await
        .unwrap();
    assert!(store.rollouts(Some("scratch-detector")).await.unwrap().iter().all(|r| !r.is_active()));

    // Within the cooldown: nothing, however many labels; after it, labels after the last
    // successful job's data count, older ones do not.
    labelled(5, 10).await;
    assert!(matches!(considered(now).await, Considered::Waiting(why) if why.contains("cooldown")));
    let later = now + chrono::Duration::minutes(61);
    assert_eq!(considered(later).await, Considered::Waiting("0 of 3 new labelled items".into()));
    labelled(3, -1).await;
    assert!(matches!(considered(later).await, Considered::Queued(_)), "3 labels since the job");

    // That job's candidate is rolled out two hours later: the version it leaves serving gets a
    // cooldown of its own before the alarm (its window still full of the version before) can
    // retrain it away.
    let mut running = store.claim_retrain(later).await.unwrap().unwrap();
    running.candidate_version = Some("3".into());
    let at = |t| Change { actor: "retraining", reason: "", at: t };
    store.finish_retrain(&running, JobState::Succeeded, &at(later)).await.unwrap();
    store
        .register_version(&vigil_store::testing::candidate_version("scratch-detector", "3", &"c".repeat(64)), "")
        .await
        .unwrap();
    let promoted_at = later + chrono::Duration::hours(2);
    vigil_monitor::rollout::start(&store, "scratch-detector", "3", &plan, &at(later)).await.unwrap();
    vigil_monitor::rollout::manual(
        &store,
        "scratch-detector",
        vigil_monitor::rollout::Manual::Promote,
        &at(promoted_at),
    )
    .await
    .unwrap();
    // Three items of the new version labelled right after its promotion.
    let rows: Vec<_> = (0..3)
        .map(|_| {
            vigil_store::testing::prediction(promoted_at + chrono::Duration::minutes(1), 0.2, serde_json::json!({}))
        })
        .collect();
    let labels: Vec<_> =
        rows.iter().map(|p| LabelRow { time: promoted_at + chrono::Duration::minutes(2), ..label(p) }).collect();
    store.insert_batch(&rows, &labels).await.unwrap();
    let soon = promoted_at + chrono::Duration::minutes(5);
    let waiting = considered(soon).await;
    assert!(matches!(&waiting, Considered::Waiting(why) if why.contains("ended (promoted)")), "{waiting:?}");
    let after = promoted_at + chrono::Duration::minutes(61);
    let queued = considered(after).await;
    assert!(matches!(queued, Considered::Queued(_)), "a cooldown after the rollout ended: {queued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_worker_runs_the_queue_the_monitor_leaves_alone() {
    let (_db, store, dir, repository) = setup().await;
    let good = recipe(dir.path(), "good", "");
    let failing = recipe(dir.path(), "failing", "echo 'no rows' >&2; exit 3");
    let mut config = config(dir.path(), &[("good", &good), ("failing", &failing), ("other", &good)], "1m");
    config.runner = vigil_monitor::retrain::RunnerPlace::External;
    let data = dataset(dir.path());

    // A job an earlier worker claimed and never finished (its pod died).
    store.enqueue_retrain(&queue("other", &data)).await.unwrap();
    let orphan = store.claim_retrain(Utc::now()).await.unwrap().expect("claimed");
    // It had begun writing its version 3.
    let partial = repository.join(format!("other/.3.job-{}", orphan.job_id));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.onnx"), b"half a model").unwrap();
    // The monitor, leading, leaves queued jobs to the external worker.
    let (stop, task, _leading) = start(&store, config.clone(), &repository);
    let first = queue("good", &data);
    let second = queue("failing", &data);
    store.enqueue_retrain(&first).await.unwrap();
    store.enqueue_retrain(&second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.retrain_job(&first.job_id).await.unwrap().unwrap().state, "queued");
    stop.send(true).unwrap();
    task.await.unwrap();

    // While another worker (or a monitor that runs jobs) holds the retraining lease, a worker
    // leaves everything alone: the job that worker runs is not taken for an orphan.
    let other = store.try_lease(runner::RETRAINING_LEASE).await.unwrap().expect("the lease is free");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let busy = runner::work(store.clone(), config.clone(), repository.clone(), None, shutdown).await.unwrap();
    assert!(busy.is_none(), "another runner holds the lease: {busy:?}");
    assert_eq!(store.retrain_job(&orphan.job_id).await.unwrap().unwrap().state, "running");
    assert_eq!(store.retrain_job(&first.job_id).await.unwrap().unwrap().state, "queued");
    drop(other);
    // Postgres frees the lock once it sees the session end, a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ran = loop {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        match runner::work(store.clone(), config.clone(), repository.clone(), None, shutdown).await.unwrap() {
            Some(ran) => break ran,
            None => assert!(Instant::now() < deadline, "the lease was never freed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ended: Vec<(&str, &str)> = ran.iter().map(|j| (j.model_name.as_str(), j.state.as_str())).collect();
    assert_eq!(ended, [("good", "succeeded"), ("failing", "failed")]);
    assert!(repository.join("good").join(ran[0].candidate_version.as_deref().unwrap()).join("model.onnx").is_file());
    let orphan = store.retrain_job(&orphan.job_id).await.unwrap().unwrap();
    assert_eq!((orphan.state.as_str(), orphan.error.as_str()), ("failed", INTERRUPTED));
    assert!(!partial.exists(), "the interrupted job's partial version was left behind");
    // Nothing left: a second worker finds no job.
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let repository_again = repository.clone();
    let config = self::config(dir.path(), &[("good", &good)], "1m");
    assert!(runner::work(store.clone(), config, repository_again, None, shutdown).await.unwrap().unwrap().is_empty());
}

/// A leading monitor runs jobs only while it holds the retraining lease: while a worker holds
/// it, the queue and the job that worker runs are left alone; once free, the monitor takes
/// over, marks what was left running interrupted and runs the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_monitor_leaves_the_queue_to_the_runner_holding_the_lease() {
    let (_db, store, dir, repository) = setup().await;
    let good = recipe(dir.path(), "good", "");
    let config = config(dir.path(), &[("good", &good), ("other", &good)], "1m");
    let data = dataset(dir.path());
    let worker = store.try_lease(runner::RETRAINING_LEASE).await.unwrap().expect("the lease is free");
    store.enqueue_retrain(&queue("other", &data)).await.unwrap();
    let working = store.claim_retrain(Utc::now()).await.unwrap().expect("claimed by the worker");
    let (stop, task, _leading) = start(&store, config, &repository);
    let queued = queue("good", &data);
    store.enqueue_retrain(&queued).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.retrain_job(&queued.job_id).await.unwrap().unwrap().state, "queued");
    assert_eq!(store.retrain_job(&working.job_id).await.unwrap().unwrap().state, "running", "not taken for an orphan");
    drop(worker);
    let ran = wait_for(&store, &queued.job_id, |job| job.state == "succeeded").await;
    assert!(ran.candidate_version.is_some());
    let orphan = store.retrain_job(&working.job_id).await.unwrap().unwrap();
    assert_eq!((orphan.state.as_str(), orphan.error.as_str()), ("failed", INTERRUPTED));
    stop.send_replace(true);
    task.await.unwrap();
}

/// A worker whose lease went while a job ran (its Postgres session ended: a restart, a proxy
/// that cut it) and another runner took it stops the recipe at its next report and leaves the
/// job to that runner, instead of training on beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_lease_stops_its_job() {
    let (_db, store, dir, repository) = setup().await;
    let slow = recipe(dir.path(), "slow", "echo started; sleep 60");
    let config = config(dir.path(), &[("slow", &slow)], "1m");
    let job = queue("slow", &dataset(dir.path()));
    store.enqueue_retrain(&job).await.unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(runner::work(store.clone(), config, repository, None, shutdown));
    wait_for(&store, &job.job_id, |j| j.log.contains("started")).await;
    // The session holding the worker's lease ends; another runner takes the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .execute(store.pool())
        .await
        .unwrap();
        if let Some(lease) = store.try_lease(runner::RETRAINING_LEASE).await.unwrap() {
            break lease;
        }
        assert!(Instant::now() < deadline, "the worker's lease was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ran = tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("the worker stops its job at its next report, not after its recipe's 60 s")
        .unwrap()
        .unwrap()
        .expect("the worker held the lease when it started");
    assert_eq!(ran.len(), 1);
    let left = store.retrain_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!(left.state, "running", "left to the runner holding the lease, which marks it interrupted");
    drop(taken);
}

/// A worker whose database goes silent while a job runs (a network partition: its connections
/// stay open and hear nothing) stops the recipe once `lease_timeout` passed without its lease
/// confirmed, before the database could free the lease for another runner, and records the job
/// failed once the database answers again. Without the bound it would train on, blind, for as
/// long as TCP takes to give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_stops_its_job_within_its_lease_timeout() {
    let (db, store, dir, repository) = setup().await;
    let pid_file = dir.path().join("recipe.pid");
    let slow = recipe(dir.path(), "slow", &format!("echo $$ > '{}'; echo started; sleep 60", pid_file.display()));
    let mut config = config(dir.path(), &[("slow", &slow)], "1m");
    let lease_timeout = Duration::from_secs(8);
    config.lease_timeout = lease_timeout;
    config.validate().unwrap();
    let (job, relay, worker) = worker_behind_a_relay(&db, &store, config, &dir, repository).await;
    let recipe = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let alive = || Path::new("/proc").join(&recipe).exists();
    assert!(alive());
    relay.hold();
    let held = Instant::now();
    // Last confirmed at most one check (500 ms) before the hold; noticed past lease_timeout at
    // a check, which waits up to 5 s for an answer (and 5 s more to take the lease again).
    while alive() {
        assert!(held.elapsed() < lease_timeout + Duration::from_secs(30), "the recipe ran on, its lease unconfirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = held.elapsed();
    assert!(stopped >= lease_timeout - Duration::from_millis(500), "stopped after {stopped:?}, before lease_timeout");
    assert!(stopped < lease_timeout + Duration::from_secs(11), "stopped after {stopped:?}");
    // The database still holds the worker's session and its lock: nobody else could have
    // taken the job meanwhile.
    assert!(store.try_lease(runner::RETRAINING_LEASE).await.unwrap().is_none(), "the lock outlives the recipe");
    assert_eq!(store.retrain_job(&job.job_id).await.unwrap().unwrap().state, "running", "nothing written meanwhile");
    relay.release();
    let ran = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker ends once the database answers")
        .unwrap()
        .unwrap()
        .expect("the worker held the lease when it started");
    assert_eq!(ran.len(), 1);
    let failed = store.retrain_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!(failed.state, "failed");
    assert!(failed.error.contains("did not confirm this runner's retraining lease"), "{}", failed.error);
    assert!(std::fs::read_dir(dir.path().join("models/slow")).unwrap().next().is_none(), "its partial version went");
}

/// A Postgres lease's session asks the server to end it once its holder has been silent for
/// `LEASE_SILENCE_RELEASE` (TCP keepalives and user timeout), which a runner's `lease_timeout`
/// stays under; a check that gets no answer says so within `LEASE_CHECK_TIMEOUT`, and the
/// lease is found held again once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_lease_session_ends_after_silence_and_a_check_of_it_is_bounded() {
    use vigil_store::monitoring::{LEASE_CHECK_TIMEOUT, LEASE_SILENCE_RELEASE, Lease, LeaseState};
    let (db, direct, _dir, _repository) = setup().await;
    // Sessions of this database end after a minute idle, unless told otherwise.
    let idle = format!("ALTER DATABASE {} SET idle_session_timeout = '60s'", db.name);
    sqlx::query(&idle).execute(direct.pool()).await.unwrap();
    let relay = vigil_testkit::Relay::start(db.server_addr()).await;
    let store = PgStore::connect_lazy(&db.url_via(relay.addr()), 2).unwrap();
    let mut lease = store.try_lease(runner::RETRAINING_LEASE).await.unwrap().expect("free");
    let Lease::Postgres(session) = &mut lease else { panic!("a Postgres lease") };
    // In their base units: seconds, and milliseconds for the user timeout.
    let settings = "SELECT setting::int FROM pg_settings WHERE name = ANY($1) ORDER BY array_position($1, name)";
    let names = [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "tcp_user_timeout",
        "idle_session_timeout",
    ];
    let values: Vec<i32> = sqlx::query_scalar(settings).bind(&names[..]).fetch_all(&mut *session).await.unwrap();
    let silence = LEASE_SILENCE_RELEASE.as_secs() as i32;
    assert_eq!(values.len(), 5);
    assert_eq!((values[0] + values[1] * values[2], values[3]), (silence, silence * 1000), "{values:?}");
    assert_eq!(values[4], 0, "never ended for being idle");
    assert!(vigil_monitor::retrain::MAX_LEASE_TIMEOUT + 2 * LEASE_CHECK_TIMEOUT < LEASE_SILENCE_RELEASE);
    // The pool's own connections are left as they were.
    let pooled: Vec<i32> = sqlx::query_scalar(settings).bind(&names[..]).fetch_all(store.pool()).await.unwrap();
    assert_ne!(pooled[..4], values[..4]);
    assert_eq!(pooled[4], 60_000);

    relay.hold();
    let checked = Instant::now();
    assert_eq!(lease.state().await, LeaseState::Unconfirmed);
    let waited = checked.elapsed();
    assert!(waited >= LEASE_CHECK_TIMEOUT && waited < LEASE_CHECK_TIMEOUT + Duration::from_secs(3), "{waited:?}");
    let taking = Instant::now();
    assert!(store.try_lease("another-role").await.is_err(), "no answer is an error, not a lease");
    assert!(taking.elapsed() < LEASE_CHECK_TIMEOUT + Duration::from_secs(3), "{:?}", taking.elapsed());
    relay.release();
    assert_eq!(lease.state().await, LeaseState::Held, "the same session, answering again");
}

/// A database silent for less than `lease_timeout` (a short network outage) only delays the
/// job's reports: its recipe runs on and the job succeeds, though a check of the lease went
/// unanswered meanwhile (the silence outlasts a check's 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_database_is_silent_for_a_moment_finishes_its_job() {
    let (db, store, dir, repository) = setup().await;
    let short = recipe(dir.path(), "short", "echo started; sleep 10");
    let mut config = config(dir.path(), &[("short", &short)], "1m");
    config.lease_timeout = Duration::from_secs(15);
    let (_job, relay, worker) = worker_behind_a_relay(&db, &store, config, &dir, repository).await;
    relay.hold();
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    relay.release();
    let ran = tokio::time::timeout(Duration::from_secs(60), worker).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!((ran[0].state.as_str(), ran[0].error.as_str()), ("succeeded", ""));
}

/// A worker reaching the database through a relay a test can silence, running the job queued
/// for the one model of `config`, once its recipe printed "started".
async fn worker_behind_a_relay(
    db: &TestDatabase,
    store: &PgStore,
    config: RetrainingConfig,
    dir: &tempfile::TempDir,
    repository: PathBuf,
) -> (RetrainJob, vigil_testkit::Relay, tokio::task::JoinHandle<anyhow::Result<Option<Vec<RetrainJob>>>>) {
    let model = config.models.keys().next().expect("one model").clone();
    let job = queue(&model, &dataset(dir.path()));
    store.enqueue_retrain(&job).await.unwrap();
    let relay = vigil_testkit::Relay::start(db.server_addr()).await;
    let cut_off = PgStore::connect_lazy(&db.url_via(relay.addr()), 4).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move {
        let _stop = stop;
        runner::work(cut_off, config, repository, None, shutdown).await
    });
    wait_for(store, &job.job_id, |j| j.log.contains("started")).await;
    (job, relay, worker)
}
