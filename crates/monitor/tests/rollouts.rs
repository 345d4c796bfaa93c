//! The rollout controller on a real Postgres: a good candidate is promoted through every step
//! with no person; candidates with errors, NaN scores, 5x latency or a shifted score
//! distribution are rolled back within one step, with the failing check in the audit log and
//! an alarm; a step waits for its time and its requests; a controller started afresh carries on
//! at the same step, and two acting at once apply a step once.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use vigil_monitor::rollout::{self, FeedbackCheck, Manual, RolloutChecks};
use vigil_monitor::{Catalog, MonitorConfig, Views};
use vigil_store::testing::{TestDatabase, prediction};
use vigil_store::{
    AlertStore as _, Change, DeploymentRow, DeploymentStore, FeedbackRow, ModelVersionRow, PgStore, PredictionRow,
    PredictionStore, RegistryStore, RolloutStep, RolloutStore, StepMode,
};

const RESOLUTIONS: [u32; 2] = [1, 60];

fn version(model: &str, v: &str, stage: &str) -> ModelVersionRow {
    ModelVersionRow {
        model_name: model.into(),
        version: v.into(),
        artifact_sha256: format!("{:064x}", v.parse::<u64>().unwrap()),
        artifact_uri: format!("models/{model}/{v}"),
        training_data: "generator seed 1".into(),
        metrics: serde_json::json!({}),
        stage: stage.into(),
        registered_by: "test".into(),
        registered_at: Utc::now(),
        stage_changed_at: Utc::now(),
    }
}

/// A database with `model` versions 1 (production, the primary) and 2 (candidate).
async fn store_with(db: &TestDatabase, models: &[&str]) -> PgStore {
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    for model in models {
        store.register_version(&version(model, "1", "production"), "").await.unwrap();
        store.register_version(&version(model, "2", "candidate"), "").await.unwrap();
        let primary = DeploymentRow {
            model_name: model.to_string(),
            deployment_id: uuid::Uuid::now_v7().to_string(),
            primary_version: "1".into(),
            candidate_version: None,
            mode: "single".into(),
            share: 0.0,
            updated_by: "test".into(),
            updated_at: Utc::now(),
            policy: "full".into(),
            accept_below: None,
            reject_at: None,
        };
        store.set_deployment(&primary, &Change { actor: "test", reason: "", at: Utc::now() }).await.unwrap();
    }
    store
}

fn views(store: &PgStore) -> Views<PgStore> {
    let config: MonitorConfig = toml::from_str("[rollups]\nresolutions = [1, 60]\n").unwrap();
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    Views::new(store.clone(), Arc::new(Catalog::load(std::path::Path::new(models)).unwrap()), Arc::new(config))
}

/// How a version answers.
#[derive(Clone, Copy)]
struct Answers {
    error_rate: f64,
    latency_ms: i64,
    /// Scores in [offset, offset + 0.4).
    score_offset: f32,
    nan: bool,
}

const GOOD: Answers = Answers { error_rate: 0.0, latency_ms: 4, score_offset: 0.1, nan: false };

/// `n` predictions of `model` `version` in `variant`, spread over the minute from `from`.
fn traffic(model: &str, version: &str, variant: i16, from: DateTime<Utc>, n: usize, a: Answers) -> Vec<PredictionRow> {
    (0..n)
        .map(|i| {
            let time = from + Duration::milliseconds((i as i64 * 59_000) / n as i64);
            let score = a.score_offset + (i % 40) as f32 * 0.01;
            let mut row = prediction(time, score, serde_json::json!({}));
            row.model_name = model.into();
            row.model_version = version.into();
            row.variant = variant;
            row.request_time = Some(time - Duration::milliseconds(a.latency_ms));
            if (i as f64) < a.error_rate * n as f64 {
                row.status = 3;
            }
            if a.nan {
                row.score = None;
                row.output = serde_json::json!({ "label": "", "scores": [null] });
                row.output_null = true;
            }
            row
        })
        .collect()
}

/// One minute of traffic from `at`: 900 requests to the primary, 300 to the candidate.
async fn minute(store: &PgStore, model: &str, at: DateTime<Utc>, candidate: Answers) {
    let mut rows = traffic(model, "1", 1, at, 900, GOOD);
    rows.extend(traffic(model, "2", 2, at, 300, candidate));
    store.insert_batch(&rows, &[]).await.unwrap();
    while vigil_monitor::rollup::step(store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
}

fn plan() -> Vec<RolloutStep> {
    [0.1, 0.5, 1.0]
        .iter()
        .map(|&share| RolloutStep { share, min_duration_s: 60, min_requests: 200, ..Default::default() })
        .collect()
}

async fn deployment(store: &PgStore, model: &str) -> DeploymentRow {
    store.deployments().await.unwrap().into_iter().find(|d| d.model_name == model).unwrap()
}

async fn rollout_of(store: &PgStore, model: &str) -> vigil_store::RolloutRow {
    store.rollouts(Some(model)).await.unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_candidate_is_promoted_step_by_step_and_waits_for_enough_data() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let checks = RolloutChecks::default();
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let change = Change { actor: "anna", reason: "v2 passed offline evaluation", at: t0 };
    rollout::start(&store, "scratch-detector", "2", &plan(), &change).await.unwrap();
    let d = deployment(&store, "scratch-detector").await;
    assert_eq!((d.mode.as_str(), d.candidate_version.as_deref(), d.share), ("canary", Some("2"), 0.1));
    // A second rollout of the same model is refused while this one runs.
    let again = rollout::start(&store, "scratch-detector", "2", &plan(), &change).await.unwrap_err();
    assert!(again.to_string().contains("already has an active rollout"), "{again}");

    // Too early, then too few requests: the step waits.
    let v = views(&store);
    assert_eq!(rollout::advance_all(&v, &checks, t0 + Duration::seconds(30)).await.unwrap(), 0);
    let mut few = traffic("scratch-detector", "2", 2, t0, 150, GOOD);
    few.extend(traffic("scratch-detector", "1", 1, t0, 900, GOOD));
    store.insert_batch(&few, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    assert_eq!(rollout::advance_all(&v, &checks, t0 + Duration::seconds(61)).await.unwrap(), 0);
    assert_eq!(rollout_of(&store, "scratch-detector").await.step, 0, "150 requests are not enough to judge");

    // Enough: step 1 passes at 10%, step 2 at 50%, the last at 100% promotes. Each round is
    // judged by a controller started afresh (a monitor restarted between steps).
    let mut at = t0;
    for (step, share) in [(0, 0.1), (1, 0.5), (2, 1.0)] {
        minute(&store, "scratch-detector", at, GOOD).await;
        at += Duration::seconds(61);
        let r = rollout_of(&store, "scratch-detector").await;
        assert_eq!((r.step, r.state.as_str()), (step, "running"));
        assert_eq!(deployment(&store, "scratch-detector").await.share, share);
        assert_eq!(rollout::advance_all(&views(&store), &checks, at).await.unwrap(), 1, "step {step} decided");
    }
    let r = rollout_of(&store, "scratch-detector").await;
    assert_eq!(r.state, "promoted");
    let d = deployment(&store, "scratch-detector").await;
    assert_eq!(
        (d.mode.as_str(), d.primary_version.as_str(), d.candidate_version.as_deref()),
        ("single", "2", Some("1")),
        "the candidate answers everything, the old primary kept to roll back to"
    );
    let decisions: Vec<String> = r.decisions().iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["next_step", "next_step", "promote"]);
    let audit = store.audit_events(100).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "rollout" && e.actor == rollout::CONTROLLER).count(), 3);
}

/// A step that starts inside a rollup window counts none of the traffic before it in that
/// window: with minutes as the finest rollups, 300 good candidate answers in the minute before
/// the step started are no evidence for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_counts_only_the_traffic_after_it_started() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let minute_start = DateTime::from_timestamp((Utc::now().timestamp() - 3600) / 60 * 60, 0).unwrap();
    let mut rows = traffic("scratch-detector", "2", 2, minute_start, 300, GOOD);
    rows.extend(traffic("scratch-detector", "1", 1, minute_start, 900, GOOD));
    store.insert_batch(&rows, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[60], 100_000).await.unwrap() > 0 {}
    let t0 = minute_start + Duration::milliseconds(59_500);
    rollout::start(&store, "scratch-detector", "2", &plan(), &Change { actor: "anna", reason: "", at: t0 })
        .await
        .unwrap();
    let config: MonitorConfig = toml::from_str("[rollups]\nresolutions = [60]\n").unwrap();
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    let minutes =
        Views::new(store.clone(), Arc::new(Catalog::load(std::path::Path::new(models)).unwrap()), Arc::new(config));
    let checks = RolloutChecks::default();
    assert_eq!(rollout::advance_all(&minutes, &checks, t0 + Duration::seconds(61)).await.unwrap(), 0);
    assert_eq!(rollout_of(&store, "scratch-detector").await.step, 0, "no request of the step's own yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_candidates_are_rolled_back_within_one_step_saying_why() {
    let bad = [
        ("errors", Answers { error_rate: 0.2, ..GOOD }, "error_rate"),
        ("nan-scores", Answers { nan: true, ..GOOD }, "null_rate"),
        ("slow", Answers { latency_ms: 20, ..GOOD }, "latency_p99_ms"),
        ("shifted", Answers { score_offset: 0.5, ..GOOD }, "score_ks"),
    ];
    let models: Vec<&str> = bad.iter().map(|(m, _, _)| *m).collect();
    let db = TestDatabase::create();
    let store = store_with(&db, &models).await;
    let checks = RolloutChecks::default();
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    for (model, answers, _) in bad {
        rollout::start(&store, model, "2", &plan(), &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
        minute(&store, model, t0, answers).await;
    }
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(61)).await.unwrap(), 4);
    let audit = store.audit_events(200).await.unwrap();
    let alerts = store.load_alerts().await.unwrap();
    for (model, _, check) in bad {
        let r = rollout_of(&store, model).await;
        assert_eq!((r.state.as_str(), r.step), ("rolled_back", 0), "{model}");
        let d = deployment(&store, model).await;
        assert_eq!((d.mode.as_str(), d.primary_version.as_str()), ("single", "1"), "{model}: back to the primary");
        assert_eq!(rollout::failed_checks(&r, 0), [check], "{model}: only its own fault fails");
        assert!(
            audit
                .iter()
                .any(|e| e.action == "rollout" && e.subject == format!("{model}/2") && e.reason.contains(check)),
            "{model}: the audit event names {check}"
        );
        let alert = alerts.iter().find(|a| a.alert_key == format!("rollout:{model}")).expect("a rollback alarm");
        assert_eq!(alert.state, "firing");
        assert!(alert.message.contains(check), "{}", alert.message);
    }
    // Ben answers one rollback by starting another rollout of that model: its alarm resolves,
    // naming him; the others keep calling.
    let again = Change { actor: "ben", reason: "fixed the export", at: t0 + Duration::seconds(120) };
    rollout::start(&store, "errors", "2", &plan(), &again).await.unwrap();
    rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(121)).await.unwrap();
    let alerts = store.load_alerts().await.unwrap();
    let state = |model: &str| alerts.iter().find(|a| a.alert_key == format!("rollout:{model}")).unwrap();
    assert_eq!(state("errors").state, "resolved");
    assert!(
        state("errors").message.contains("new rollout of errors version 2 started by ben"),
        "{}",
        state("errors").message
    );
    assert_eq!(state("slow").state, "firing");

    // The dashboard shows the rollout, its decision and the failing check, in a browser.
    let config: MonitorConfig = toml::from_str("[rollups]\nresolutions = [1, 60]\n").unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/?model=slow&range=86400", http.local_addr().unwrap());
    let monitor = vigil_monitor::start(store.clone(), config, grpc, http).await.unwrap();
    let browser = vigil_testkit::Chromium::launch(&page_url);
    let mut page = browser.page().await;
    let shown = page
        .wait_for(
            "document.querySelector('#rollouts tr[data-decision=rollback]')?.textContent",
            std::time::Duration::from_secs(20),
        )
        .await;
    let shown = shown.as_str().unwrap();
    assert!(shown.contains("latency_p99_ms FAILED") && shown.contains("error_rate ok"), "{shown}");
    let state = page.eval("document.querySelector('#rollouts tr.rollout').dataset.state").await;
    assert_eq!(state, "rolled_back");
    drop(browser);
    monitor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_at_once_apply_a_step_once_and_people_can_pause_resume_and_abort() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let checks = RolloutChecks::default();
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    rollout::start(&store, "scratch-detector", "2", &plan(), &Change { actor: "anna", reason: "", at: t0 })
        .await
        .unwrap();
    minute(&store, "scratch-detector", t0, GOOD).await;
    let at = t0 + Duration::seconds(61);
    let (a, b) = (views(&store), views(&store));
    let (x, y) = tokio::join!(rollout::advance_all(&a, &checks, at), rollout::advance_all(&b, &checks, at));
    assert_eq!(x.unwrap() + y.unwrap(), 1, "one of the two moved the rollout");
    let r = rollout_of(&store, "scratch-detector").await;
    assert_eq!((r.step, r.decisions().len()), (1, 1), "one step, one decision");

    // Paused: the controller leaves it; resumed: the step's window starts again.
    let by = |reason: &'static str, at| Change { actor: "anna", reason, at };
    let before_pause = rollout_of(&store, "scratch-detector").await;
    rollout::manual(&store, "scratch-detector", Manual::Pause, &by("checking dashboards", at)).await.unwrap();
    minute(&store, "scratch-detector", at, GOOD).await;
    assert_eq!(rollout::advance_all(&a, &checks, at + Duration::seconds(61)).await.unwrap(), 0);
    let later = at + Duration::seconds(120);
    let r = rollout::manual(&store, "scratch-detector", Manual::Resume, &by("fine", later)).await.unwrap();
    assert_eq!((r.state.as_str(), r.step_started_at), ("running", later));
    // A controller still holding the rollout as read before the pause finds the same step and
    // state, but not the same rollout: its step is refused.
    let stale_step = vigil_store::RolloutRow { step: before_pause.step + 1, ..before_pause.clone() };
    assert!(!store.advance_rollout(&before_pause, &stale_step, None, &by("", later)).await.unwrap());
    assert_eq!(rollout_of(&store, "scratch-detector").await.step, 1);
    let e = rollout::manual(&store, "scratch-detector", Manual::Resume, &by("", later)).await.unwrap_err();
    assert!(e.to_string().contains("cannot resume a rollout that is running"), "{e}");
    rollout::manual(&store, "scratch-detector", Manual::Abort, &by("customer complaint", later)).await.unwrap();
    let d = deployment(&store, "scratch-detector").await;
    assert_eq!((d.mode.as_str(), d.primary_version.as_str()), ("single", "1"));
    assert_eq!(rollout_of(&store, "scratch-detector").await.state, "aborted");
    let e = rollout::manual(&store, "scratch-detector", Manual::Abort, &by("", later)).await.unwrap_err();
    assert!(e.to_string().contains("no active rollout"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_a_verdict_by_its_deadline_pauses_for_a_person() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let steps: Vec<RolloutStep> = [0.01, 1.0]
        .iter()
        .map(|&share| RolloutStep {
            share,
            min_duration_s: 60,
            min_requests: 200,
            max_duration_s: Some(600),
            ..Default::default()
        })
        .collect();
    rollout::start(&store, "scratch-detector", "2", &steps, &Change { actor: "anna", reason: "", at: t0 })
        .await
        .unwrap();
    // 1% of the keys brings the candidate 50 requests in ten minutes: never enough to judge.
    let mut rows = traffic("scratch-detector", "2", 2, t0, 50, GOOD);
    rows.extend(traffic("scratch-detector", "1", 1, t0, 900, GOOD));
    store.insert_batch(&rows, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    let checks = RolloutChecks::default();
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(599)).await.unwrap(), 0);
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(601)).await.unwrap(), 1);
    let r = rollout_of(&store, "scratch-detector").await;
    assert_eq!((r.state.as_str(), r.step), ("paused", 0));
    assert_eq!(r.decisions()[0]["decision"], "inconclusive");
    let d = deployment(&store, "scratch-detector").await;
    assert_eq!((d.mode.as_str(), d.share), ("canary", 0.01), "the traffic stays as it was");
    let alert = store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == "rollout:scratch-detector");
    let alert = alert.expect("a person is called");
    assert!(alert.state == "firing" && alert.message.contains("no verdict by its deadline"), "{alert:?}");

    // The person answers by promoting: the alarm is resolved in the controller's next round,
    // naming them, and stays resolved.
    let change = Change { actor: "ben", reason: "seen enough", at: t0 + Duration::seconds(700) };
    rollout::manual(&store, "scratch-detector", Manual::Promote, &change).await.unwrap();
    for round in [701, 702] {
        rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(round)).await.unwrap();
        let alert = store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == "rollout:scratch-detector");
        let alert = alert.unwrap();
        assert!(alert.state == "resolved" && alert.message.contains("promote by ben"), "{alert:?}");
    }
    let events = store.alert_history(100).await.unwrap();
    let resolutions = events.iter().filter(|e| e.alert_key == "rollout:scratch-detector" && e.state == "resolved");
    assert_eq!(resolutions.count(), 1, "resolved once: {events:?}");
}

/// The last step sends every key to the candidate: the primary's traffic to compare with is
/// from as long a window before the step, so a candidate that fails under full load is still
/// rolled back instead of promoted on no comparison at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_step_is_judged_against_the_primary_before_it() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let checks = RolloutChecks::default();
    // On a whole minute: the step's window starts after the step before's last record.
    let t0 = DateTime::from_timestamp((Utc::now().timestamp() - 3600) / 60 * 60, 0).unwrap();
    rollout::start(&store, "scratch-detector", "2", &plan(), &Change { actor: "anna", reason: "", at: t0 })
        .await
        .unwrap();
    let mut at = t0;
    for _ in 0..2 {
        minute(&store, "scratch-detector", at, GOOD).await;
        at += Duration::seconds(61);
        assert_eq!(rollout::advance_all(&views(&store), &checks, at).await.unwrap(), 1);
    }
    assert_eq!(deployment(&store, "scratch-detector").await.share, 1.0);
    // Every request now goes to the candidate, and 30% of them fail.
    let failing = Answers { error_rate: 0.3, ..GOOD };
    store
        .insert_batch(&traffic("scratch-detector", "2", 2, at + Duration::seconds(1), 300, failing), &[])
        .await
        .unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    assert_eq!(rollout::advance_all(&views(&store), &checks, at + Duration::seconds(61)).await.unwrap(), 1);
    let r = rollout_of(&store, "scratch-detector").await;
    assert_eq!((r.state.as_str(), r.step), ("rolled_back", 2));
    assert_eq!(rollout::failed_checks(&r, 2), ["error_rate"]);
    let last = &r.decisions()[2];
    let error_rate = last["checks"].as_array().unwrap().iter().find(|c| c["name"] == "error_rate").unwrap();
    assert_eq!(error_rate["primary"], 0.0, "the primary's rate from before the step: {last}");
    assert_eq!(deployment(&store, "scratch-detector").await.primary_version, "1");
}

/// A full step's baseline, the primary's window before it, counts only the feedback it had by
/// the step's start: clicks on its answers that keep arriving during the step would make it look
/// better than a candidate whose answers have had less time to be clicked. Both versions have
/// 10% click-through within the minute of each answer; a further 20% of the primary's last
/// minute are clicked late, during the full step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_step_compares_feedback_at_the_same_age() {
    const MODEL: &str = "scratch-detector";
    let db = TestDatabase::create();
    let store = store_with(&db, &[MODEL]).await;
    let checks = RolloutChecks {
        feedback: vec![FeedbackCheck { kind: "click".into(), higher_is_better: true, max_change: 0.05 }],
        ..RolloutChecks::default()
    };
    let t0 = DateTime::from_timestamp((Utc::now().timestamp() - 5 * 3600) / 60 * 60, 0).unwrap();
    rollout::start(&store, MODEL, "2", &plan(), &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
    let click = |row: &PredictionRow, time| FeedbackRow {
        event_id: uuid::Uuid::now_v7(),
        prediction_id: row.prediction_id,
        kind: "click".into(),
        value: String::new(),
        session_id: String::new(),
        time,
    };
    // Every tenth answer clicked a second after it was given.
    let clicked = |rows: &[PredictionRow]| -> Vec<FeedbackRow> {
        rows.iter().step_by(10).map(|r| click(r, r.time + Duration::seconds(1))).collect()
    };
    let mut at = t0;
    let mut last_minute = Vec::new();
    for _ in 0..2 {
        let primary = traffic(MODEL, "1", 1, at, 900, GOOD);
        let candidate = traffic(MODEL, "2", 2, at, 300, GOOD);
        store.insert_batch(&[primary.clone(), candidate.clone()].concat(), &[]).await.unwrap();
        store.insert_feedback(&[clicked(&primary), clicked(&candidate)].concat()).await.unwrap();
        while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
        at += Duration::seconds(61);
        assert_eq!(rollout::advance_all(&views(&store), &checks, at).await.unwrap(), 1);
        last_minute = primary;
    }
    assert_eq!(deployment(&store, MODEL).await.share, 1.0);
    let late: Vec<FeedbackRow> =
        last_minute.iter().skip(1).step_by(5).map(|r| click(r, at + Duration::seconds(30))).collect();
    assert_eq!(late.len(), 180);
    store.insert_feedback(&late).await.unwrap();
    let candidate = traffic(MODEL, "2", 2, at + Duration::seconds(1), 300, GOOD);
    store.insert_batch(&candidate, &[]).await.unwrap();
    store.insert_feedback(&clicked(&candidate)).await.unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    assert_eq!(rollout::advance_all(&views(&store), &checks, at + Duration::seconds(61)).await.unwrap(), 1);
    let r = rollout_of(&store, MODEL).await;
    let last = r.decisions().last().cloned().unwrap();
    assert_eq!(r.state, "promoted", "{last}");
    let clicks = last["checks"].as_array().unwrap().iter().find(|c| c["name"] == "feedback.click").unwrap().clone();
    assert_eq!((clicks["primary"].as_f64(), clicks["candidate"].as_f64()), (Some(0.1), Some(0.1)), "{last}");
}

/// A full step paused by a person and resumed restarts its clock, but its baseline is still the
/// primary's traffic from before the step first began: during the pause the candidate served
/// everything and the primary nothing. Both versions fail 2% of requests, over the bare limit of
/// 1%: judged against an empty baseline the candidate would be rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_full_step_is_judged_against_the_primary_before_the_step_first_began() {
    const MODEL: &str = "scratch-detector";
    let db = TestDatabase::create();
    let store = store_with(&db, &[MODEL]).await;
    let checks = RolloutChecks::default();
    let t0 = DateTime::from_timestamp((Utc::now().timestamp() - 3 * 3600) / 60 * 60, 0).unwrap();
    rollout::start(&store, MODEL, "2", &plan(), &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
    let flaky = Answers { error_rate: 0.02, ..GOOD };
    let rollup = || async { while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {} };
    let mut at = t0;
    for _ in 0..2 {
        let mut rows = traffic(MODEL, "1", 1, at, 900, flaky);
        rows.extend(traffic(MODEL, "2", 2, at, 300, flaky));
        store.insert_batch(&rows, &[]).await.unwrap();
        rollup().await;
        at += Duration::seconds(61);
        assert_eq!(rollout::advance_all(&views(&store), &checks, at).await.unwrap(), 1);
    }
    assert_eq!(deployment(&store, MODEL).await.share, 1.0);
    let began = rollout_of(&store, MODEL).await.step_started_at;
    let by = |at| Change { actor: "anna", reason: "", at };
    rollout::manual(&store, MODEL, Manual::Pause, &by(at)).await.unwrap();
    // Twenty minutes paused, the candidate answering everything.
    for minute in 0..20 {
        store.insert_batch(&traffic(MODEL, "2", 2, at + Duration::minutes(minute), 300, flaky), &[]).await.unwrap();
    }
    let resumed = at + Duration::minutes(20);
    rollout::manual(&store, MODEL, Manual::Resume, &by(resumed)).await.unwrap();
    // Paused and resumed once more: the step still began where it first did.
    rollout::manual(&store, MODEL, Manual::Pause, &by(resumed)).await.unwrap();
    let resumed = resumed + Duration::seconds(1);
    rollout::manual(&store, MODEL, Manual::Resume, &by(resumed)).await.unwrap();
    store.insert_batch(&traffic(MODEL, "2", 2, resumed + Duration::seconds(1), 300, flaky), &[]).await.unwrap();
    rollup().await;
    assert_eq!(rollout::advance_all(&views(&store), &checks, resumed + Duration::seconds(61)).await.unwrap(), 1);
    let r = rollout_of(&store, MODEL).await;
    let last = r.decisions().last().cloned().unwrap();
    assert_eq!(r.state, "promoted", "{last}");
    let error_rate = last["checks"].as_array().unwrap().iter().find(|c| c["name"] == "error_rate").unwrap().clone();
    assert!(error_rate["primary"].as_f64().unwrap() > 0.0, "the primary's rate before {began}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_step_judges_agreement_with_the_primary_on_the_same_items() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["agrees", "disagrees"]).await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let steps = [
        RolloutStep { share: 1.0, mode: StepMode::Shadow, min_duration_s: 60, min_requests: 200, ..Default::default() },
        RolloutStep { share: 1.0, min_duration_s: 60, min_requests: 200, ..Default::default() },
    ];
    for (model, shadow) in [("agrees", GOOD), ("disagrees", Answers { score_offset: 0.5, ..GOOD })] {
        rollout::start(&store, model, "2", &steps, &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
        let d = deployment(&store, model).await;
        assert_eq!((d.mode.as_str(), d.share), ("shadow", 1.0), "{model}");
        // Every request answered by the primary and mirrored to the candidate: same trace ids.
        let mut primary = traffic(model, "1", 1, t0, 300, GOOD);
        let mut mirrored = traffic(model, "2", 3, t0, 300, shadow);
        for (i, (p, m)) in primary.iter_mut().zip(mirrored.iter_mut()).enumerate() {
            p.trace_id = format!("{model}-{i}");
            m.trace_id = p.trace_id.clone();
        }
        primary.extend(mirrored);
        store.insert_batch(&primary, &[]).await.unwrap();
    }
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    let checks = RolloutChecks::default();
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(61)).await.unwrap(), 2);
    let agrees = rollout_of(&store, "agrees").await;
    assert_eq!((agrees.state.as_str(), agrees.step), ("running", 1), "in agreement: on to the canary");
    assert_eq!(deployment(&store, "agrees").await.mode, "canary");
    let agreement = rollout::decision_checks(&agrees, 0).into_iter().find(|c| c.name == "shadow_agreement");
    assert_eq!(agreement.as_ref().and_then(|c| c.candidate), Some(1.0), "{agreement:?}");
    let disagrees = rollout_of(&store, "disagrees").await;
    assert_eq!(disagrees.state, "rolled_back");
    let failed = rollout::failed_checks(&disagrees, 0);
    assert!(failed.contains(&"shadow_agreement".to_string()), "{failed:?}");
    assert_eq!(deployment(&store, "disagrees").await.mode, "single", "the shadow stops");
}

/// Under a manual promotion gate the last step, once passed, waits for a person: the rollout
/// pauses with the candidate answering everything, the controller leaves it, and a person's
/// promotion (audited with their name) makes it the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_gate_holds_the_passed_last_step_until_a_person_promotes() {
    let db = TestDatabase::create();
    let store = store_with(&db, &["scratch-detector"]).await;
    let checks = RolloutChecks::default();
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let mut steps = plan();
    steps.last_mut().unwrap().approval = true;
    rollout::start(&store, "scratch-detector", "2", &steps, &Change { actor: "retraining", reason: "", at: t0 })
        .await
        .unwrap();
    let v = views(&store);
    let mut at = t0;
    for _ in 0..3 {
        minute(&store, "scratch-detector", at, GOOD).await;
        at += Duration::seconds(61);
        rollout::advance_all(&v, &checks, at).await.unwrap();
    }
    let held = rollout_of(&store, "scratch-detector").await;
    assert_eq!((held.state.as_str(), held.step), ("paused", 2));
    let last = held.decisions().last().cloned().unwrap();
    assert_eq!(last["decision"], "awaiting_approval");
    let d = deployment(&store, "scratch-detector").await;
    assert_eq!((d.mode.as_str(), d.share, d.primary_version.as_str()), ("canary", 1.0, "1"), "not promoted yet");
    // The controller leaves it, however long.
    minute(&store, "scratch-detector", at, GOOD).await;
    assert_eq!(rollout::advance_all(&v, &checks, at + Duration::seconds(61)).await.unwrap(), 0);
    let by_anna = Change { actor: "anna", reason: "read the shadow report", at: at + Duration::seconds(90) };
    let promoted = rollout::manual(&store, "scratch-detector", Manual::Promote, &by_anna).await.unwrap();
    assert_eq!(promoted.state, "promoted");
    assert_eq!(deployment(&store, "scratch-detector").await.primary_version, "2");
    let audit = store.audit_events(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "anna" && e.to_state.contains("promoted") && e.reason == "read the shadow report")
    );
    assert!(audit.iter().any(|e| e.actor == rollout::CONTROLLER && e.reason.contains("waits for a person's approval")));
}

/// A model that answers in text (speech recognition) is judged on its transcripts as word error
/// rates compare them: a canary that writes "Turn on the lights." where the label says "turn on
/// the lights" answered right, and its step passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_models_canary_is_judged_on_normalised_transcripts() {
    const MODEL: &str = "recogniser";
    let db = TestDatabase::create();
    let store = store_with(&db, &[MODEL]).await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    rollout::start(&store, MODEL, "2", &plan(), &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
    let said = "turn on the lights";
    let mut rows = traffic(MODEL, "1", 1, t0, 900, GOOD);
    rows.extend(traffic(MODEL, "2", 2, t0, 300, GOOD));
    let mut labels = Vec::new();
    for row in &mut rows {
        let heard = if row.model_version == "1" { said } else { "Turn on the lights." };
        row.output = serde_json::json!({ "label": "", "scores": [], "text": heard });
        row.score = None;
        labels.push(vigil_store::LabelRow {
            label_id: uuid::Uuid::now_v7(),
            prediction_id: row.prediction_id,
            label: said.into(),
            time: t0 + Duration::seconds(59),
            source: "transcriber".into(),
        });
    }
    store.insert_batch(&rows, &labels).await.unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    let checks = RolloutChecks::default();
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(61)).await.unwrap(), 1);
    let r = rollout_of(&store, MODEL).await;
    assert_eq!((r.state.as_str(), r.step), ("running", 1), "{:?}", r.decisions());
    assert!(rollout::failed_checks(&r, 0).is_empty(), "{:?}", r.decisions());
}

/// A recogniser's shadow step compares transcripts as word error rates do: a candidate that
/// writes "Turn on the lights." where the primary wrote "turn on the lights" agrees with it,
/// and is right where the label says so; the primary's accuracy is counted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_models_shadow_step_compares_normalised_transcripts() {
    const MODEL: &str = "recogniser";
    let db = TestDatabase::create();
    let store = store_with(&db, &[MODEL]).await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let steps = [
        RolloutStep { share: 1.0, mode: StepMode::Shadow, min_duration_s: 60, min_requests: 200, ..Default::default() },
        RolloutStep { share: 1.0, min_duration_s: 60, min_requests: 200, ..Default::default() },
    ];
    rollout::start(&store, MODEL, "2", &steps, &Change { actor: "anna", reason: "", at: t0 }).await.unwrap();
    let mut primary = traffic(MODEL, "1", 1, t0, 300, GOOD);
    let mut mirrored = traffic(MODEL, "2", 3, t0, 300, GOOD);
    let mut labels = Vec::new();
    for (i, (p, m)) in primary.iter_mut().zip(mirrored.iter_mut()).enumerate() {
        p.trace_id = format!("{MODEL}-{i}");
        m.trace_id = p.trace_id.clone();
        for (row, heard) in [(&mut *p, "turn on the lights"), (&mut *m, "Turn on the lights.")] {
            row.output = serde_json::json!({ "label": "", "scores": [], "text": heard });
            row.score = None;
        }
        labels.push(vigil_store::LabelRow {
            label_id: uuid::Uuid::now_v7(),
            prediction_id: p.prediction_id,
            label: "Turn on the lights!".into(),
            time: t0 + Duration::seconds(59),
            source: "transcriber".into(),
        });
    }
    primary.extend(mirrored);
    store.insert_batch(&primary, &labels).await.unwrap();
    while vigil_monitor::rollup::step(&store, &RESOLUTIONS, 100_000).await.unwrap() > 0 {}
    let checks = RolloutChecks::default();
    assert_eq!(rollout::advance_all(&views(&store), &checks, t0 + Duration::seconds(61)).await.unwrap(), 1);
    let r = rollout_of(&store, MODEL).await;
    assert_eq!((r.state.as_str(), r.step), ("running", 1), "{:?}", r.decisions());
    let checks = rollout::decision_checks(&r, 0);
    let candidate = |name: &str| checks.iter().find(|c| c.name == name).and_then(|c| c.candidate);
    assert_eq!(candidate("shadow_agreement"), Some(1.0), "{checks:?}");
    assert_eq!(candidate("accuracy"), Some(1.0), "{checks:?}");
}
