//! The loop closed, on Postgres with a real Apache Kafka broker: vigil-cloud serves the
//! symptom-screening classifier; the clinic's patients change; the follow-up's labels show the
//! accuracy falling and the accuracy alarm fires; the monitor retrains the model by itself (the
//! labelled predictions exported and verified, the project's recipe run), registers version 2,
//! runs it in shadow where the labels judge it, promotes it, and the alarm resolves. One job
//! only, however long the alarm fires; every step an audit event.

use vigil_scenarios::retraining::{self, MODEL, RULE};
use vigil_scenarios::{Recipes, Stack, StackOptions};
use vigil_store::testing::TestDatabase;
use vigil_store::{AlertStore, DeploymentStore, PgStore, RegistryStore, RetrainStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accuracy_alarm_retrains_the_model_and_the_candidate_is_promoted_from_shadow() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let recipes = Recipes::locate().unwrap();
    recipes.screening(&repository, 1, 10).unwrap();
    let normal = recipes.patients(300, 101, "normal").unwrap();
    let shifted = recipes.patients(6000, 102, "shifted").unwrap();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions {
        kafka_brokers: Some(broker.brokers()),
        monitor_config: retraining::monitor_config(&recipes, &dir.path().join("retraining")),
        ..StackOptions::new(db.url(), &repository)
    };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let progress = |line: &str| eprintln!("{line}");
    let outcome = retraining::run(&stack, &normal, &shifted, &progress).await;
    let resolved = match &outcome {
        Ok(o) if o.rollout.state == "promoted" => retraining::until_resolved(&stack, &shifted, &progress).await,
        _ => Ok(()),
    };
    // Everything stops before the checks, so that a failed one leaves nothing running.
    stack.shutdown().await.unwrap();
    let outcome = outcome.unwrap();
    resolved.unwrap();

    // One job, started by the alarm, with the rollout asked for, despite many rounds firing.
    let jobs = store.retrain_jobs(Some(MODEL), 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &outcome.job;
    assert_eq!(
        (job.state.as_str(), job.trigger.as_str(), job.requested_by.as_str(), job.rollout),
        ("succeeded", format!("alarm {RULE}").as_str(), "monitor", true)
    );
    assert_eq!(job.candidate_version.as_deref(), Some("2"));
    // The dataset it trained on: verified, at least the 600 labelled items the rule asks for.
    let manifest = vigil_datasets::manifest(std::path::Path::new(&job.dataset)).unwrap();
    assert!(manifest["labelled"].as_u64().unwrap() >= 600, "{manifest}");
    assert!(manifest["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{manifest}");
    let v2 = store.model_version(MODEL, "2").await.unwrap().unwrap();
    assert!(v2.training_data.contains(manifest["dataset_id"].as_str().unwrap()), "{}", v2.training_data);
    assert!(v2.metrics["holdout"]["accuracy"].as_f64().is_some(), "{}", v2.metrics);
    assert!(v2.metrics["new_holdout"]["accuracy"].as_f64().is_some(), "{}", v2.metrics);

    // Promoted from shadow by the controller; in shadow the labels judged it more accurate.
    let rollout = &outcome.rollout;
    assert_eq!((rollout.state.as_str(), rollout.created_by.as_str()), ("promoted", "retraining"));
    let decisions: Vec<String> =
        rollout.decisions().iter().map(|d| d["decision"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(decisions, ["next_step", "promote"]);
    let shadow = vigil_monitor::rollout::decision_checks(rollout, 0);
    let accuracy = shadow.iter().find(|c| c.name == "accuracy").expect("the shadow step judged by labels");
    assert!(accuracy.candidate.unwrap() > accuracy.primary.unwrap(), "{accuracy:?}");
    let deployment = store.deployments().await.unwrap().into_iter().find(|d| d.model_name == MODEL).unwrap();
    assert_eq!(deployment.primary_version, "2");

    // The answers the clinic got, against the truth (the test's own count): version 2 is right
    // far more often on the changed patients.
    let rate = |(right, all): (u64, u64)| right as f64 / all as f64;
    assert!(outcome.before.1 >= 300 && outcome.after.1 >= 300, "{:?} {:?}", outcome.before, outcome.after);
    assert!(rate(outcome.before) < 0.8, "version 1 on the changed patients: {:?}", outcome.before);
    assert!(rate(outcome.after) > rate(outcome.before) + 0.05, "{:?} -> {:?}", outcome.before, outcome.after);
    let alarm = store.load_alerts().await.unwrap().into_iter().find(|a| a.rule == RULE).unwrap();
    assert_eq!(alarm.state, "resolved");

    // Every step an audit event, in order.
    let (steps, events) = vigil_scenarios::loops::audit_steps(&store, MODEL).await.unwrap();
    assert_eq!(steps, ["registered", "queued", "registered", "shadow", "retrained", "promoted"], "{events:?}");
    eprintln!("timeline after the alarm fired: {:?}", outcome.timeline);
}
