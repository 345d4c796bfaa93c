//! The loop closed on the phone line, on Postgres with a real Apache Kafka broker: vigil-edge
//! inspects phones in partial automation while inspectors decide the unsure ones through the
//! review queue and check every third; the light dims; the brightness drift alarm raises the
//! capture rate; the inspectors' decisions fire the accuracy alarm; the monitor fine-tunes the
//! serving scratch detector on the captured, labelled images (the project's recipe), registers
//! version 2, runs it in shadow where the labels judge it, promotes it, and the accuracy alarm
//! resolves. One job only; every step an audit event.

use std::path::Path;

use vigil_scenarios::line_loop::{self, ACCURACY_RULE, DRIFT_RULE, MODEL};
use vigil_scenarios::{Recipes, ServerKind, Stack, StackOptions};
use vigil_store::testing::TestDatabase;
use vigil_store::{AlertStore, DeploymentStore, PgStore, RegistryStore, RetrainStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dim_light_is_captured_labelled_and_the_fine_tuned_detector_is_promoted_from_shadow() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let recipes = Recipes::locate().unwrap();
    let phones = line_loop::prepare(&recipes, &repository, &dir.path().join("phones"), 300, 2000).unwrap();
    let captures = dir.path().join("captures");
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions {
        kafka_brokers: Some(broker.brokers()),
        server: ServerKind::Edge,
        capture: Some(line_loop::capture_config(&captures, &dir.path().join("spool")).unwrap()),
        monitor_config: line_loop::monitor_config(
            &recipes,
            &dir.path().join("retraining"),
            &format!("file://{}", captures.display()),
        ),
        ..StackOptions::new(db.url(), &repository)
    };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let progress = |line: &str| eprintln!("{line}");
    let mut line = line_loop::start(&stack).await.unwrap();
    let outcome = line.run(&phones, &progress).await;
    let resolved = match &outcome {
        Ok(o) if o.rollout.state == "promoted" => line.until_resolved(&phones, &progress).await,
        _ => Ok(()),
    };
    let reviewed = line.stop().await;
    // Everything stops before the checks, so that a failed one leaves nothing running.
    stack.shutdown().await.unwrap();
    let outcome = outcome.unwrap();
    resolved.unwrap();
    let reviewed = reviewed.unwrap();

    // One job, started by the accuracy alarm, with the rollout asked for.
    let jobs = store.retrain_jobs(Some(MODEL), 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &outcome.job;
    assert_eq!(
        (job.state.as_str(), job.trigger.as_str(), job.rollout),
        ("succeeded", format!("alarm {ACCURACY_RULE}").as_str(), true)
    );
    assert_eq!(job.candidate_version.as_deref(), Some("2"));

    // The dataset carries the captured images, each the bytes the line sent (hash checked by
    // the export, and here again against the generated files), labelled by the inspectors.
    let dataset = Path::new(&job.dataset);
    let manifest = vigil_datasets::manifest(dataset).unwrap();
    assert!(manifest["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{manifest}");
    let captured = manifest["captured"].as_u64().unwrap();
    assert!(captured >= 200, "only {captured} labelled rows have their image: {manifest}");
    let sent: std::collections::HashSet<String> =
        phones.normal.iter().chain(&phones.dimmed).map(|(_, png)| sha256(png)).collect();
    let inputs: Vec<_> = std::fs::read_dir(dataset.join("inputs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(inputs.len() as u64 >= captured / 2, "{} files for {captured} rows", inputs.len());
    for input in &inputs {
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256(&std::fs::read(input).unwrap()), name);
        assert!(sent.contains(&name), "{name} is no image the line sent");
    }
    // The inspectors' labels: from the review queue and from their checks.
    let rows = std::fs::read_to_string(dataset.join("rows.csv")).unwrap();
    assert!(rows.lines().skip(1).all(|r| r.contains(",ok,") || r.contains(",defect,")), "{rows}");
    assert!(reviewed >= 50 && outcome.audited >= 100, "{reviewed} reviewed, {} checked", outcome.audited);

    // Version 2: fine-tuned from version 1 (read back from its ONNX model and checked against
    // onnxruntime), better than it on the held-out captured images and not much worse on the
    // original conditions.
    let v2 = store.model_version(MODEL, "2").await.unwrap().unwrap();
    assert!(v2.training_data.contains(manifest["dataset_id"].as_str().unwrap()), "{}", v2.training_data);
    let m = &v2.metrics;
    assert!(m["base"].as_str().unwrap().ends_with(&format!("{MODEL}/1")), "{m}");
    assert!(m["base_readback_max_abs_diff"].as_f64().unwrap() <= 1e-4, "{m}");
    let accuracy = |at: &serde_json::Value| at["accuracy"].as_f64().unwrap_or_else(|| panic!("{m}"));
    // The captured hold-out is small (about 50 images: a standard error near 6 points), so here
    // version 2 must only not be clearly worse on it (within two standard errors: one run in
    // many saw 77% against 82% on 44 images); the gain is asserted below on the line's hundreds
    // of dim phones and by the shadow step's labels.
    assert!(accuracy(&m["new_holdout"]) >= accuracy(&m["before"]["new_holdout"]) - 0.12, "{m}");
    assert!(accuracy(&m["holdout"]) > accuracy(&m["before"]["holdout"]) - 0.05, "{m}");

    // Promoted from shadow by the controller; in shadow the labels judged it more accurate.
    let rollout = &outcome.rollout;
    assert_eq!((rollout.state.as_str(), rollout.created_by.as_str()), ("promoted", "retraining"));
    let shadow = vigil_monitor::rollout::decision_checks(rollout, 0);
    let judged = shadow.iter().find(|c| c.name == "accuracy").expect("the shadow step judged by labels");
    assert!(judged.candidate.unwrap() > judged.primary.unwrap(), "{judged:?}");
    let deployment = store.deployments().await.unwrap().into_iter().find(|d| d.model_name == MODEL).unwrap();
    assert_eq!((deployment.primary_version.as_str(), deployment.policy.as_str()), ("2", "partial"));

    // The line's verdicts against the truth (the test's own count): version 2 is right far more
    // often on the dim phones.
    let rate = |(right, all): (u64, u64)| right as f64 / all as f64;
    assert!(outcome.before.1 >= 300 && outcome.after.1 >= 200, "{:?} {:?}", outcome.before, outcome.after);
    assert!(rate(outcome.before) < 0.8, "version 1 on the dim phones: {:?}", outcome.before);
    assert!(rate(outcome.after) > rate(outcome.before) + 0.08, "{:?} -> {:?}", outcome.before, outcome.after);
    let alerts = store.load_alerts().await.unwrap();
    let state = |rule: &str| alerts.iter().find(|a| a.rule == rule).map(|a| a.state.clone()).unwrap_or_default();
    assert_eq!(state(ACCURACY_RULE), "resolved");
    assert_ne!(state(DRIFT_RULE), "", "the drift alarm fired");

    // Every step an audit event, in order.
    let (steps, events) = vigil_scenarios::loops::audit_steps(&store, MODEL).await.unwrap();
    assert_eq!(steps, ["registered", "queued", "registered", "shadow", "retrained", "promoted"], "{events:?}");
    eprintln!("timeline after the drift alarm fired: {:?}", outcome.timeline);
    eprintln!(
        "dataset: {} labelled rows, {captured} with their image; {reviewed} decided in the review queue; version 2: {}",
        manifest["labelled"], m["new_holdout"]
    );
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
