//! The phone line scenario on Postgres, its records over a real Apache Kafka broker: the next
//! scratch-detector version goes from shadow (agreeing with the primary on every phone, and as
//! accurate on the phones the inspectors labelled) through half the stations to all of them,
//! and afterwards answers every station; the badly normalising version is rolled back in its
//! shadow step on its scores, saying so in the audit log, and the line keeps version 2.

use std::time::Duration;

use vigil_monitor::rollout;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_scenarios::{ServerKind, Stack, StackOptions, phone_line};
use vigil_store::testing::TestDatabase;
use vigil_store::{DeploymentStore, PgStore, RegistryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_version_goes_from_shadow_to_the_whole_line_and_a_bad_one_is_rolled_back_by_itself() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let phones = phone_line::prepare(&repository).unwrap();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions {
        kafka_brokers: Some(broker.brokers()),
        server: ServerKind::Edge,
        rollouts: phone_line::ROLLOUTS.into(),
        ..StackOptions::new(db.url(), &repository)
    };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let outcome = phone_line::run(&stack, &phones, &vigil_scenarios::quiet).await;
    // Which version answers each station afterwards (the server follows within its poll).
    let inspect = InspectionClient::connect(format!("http://{}", stack.server.addr)).await.unwrap();
    let answered_by = |station: String| {
        let mut client = inspect.clone();
        let image = phones[0].1.clone();
        async move {
            let request = InspectRequest { image, station_id: station, ..Default::default() };
            client.inspect(request).await.map(|r| r.into_inner().model_version).unwrap_or_default()
        }
    };
    let mut waited = 0;
    while answered_by("line-7".into()).await != "2" && waited < 50 {
        waited += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut versions = Vec::new();
    for station in 0..8 {
        versions.push(answered_by(format!("line-{station}")).await);
    }
    // Everything stops before any assertion: a failed one must not leave the logger behind.
    stack.shutdown().await.unwrap();
    let outcome = outcome.unwrap();
    assert!(outcome.as_expected(), "{outcome:?}");

    let done = &outcome.next.rollout;
    let decisions: Vec<String> = done.decisions().iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["next_step", "next_step", "promote"], "shadow, half the line, all of it");
    let shadow_checks = rollout::decision_checks(done, 0);
    let agreement = shadow_checks.iter().find(|c| c.name == "shadow_agreement").unwrap();
    assert_eq!(agreement.candidate, Some(1.0), "the same model agrees on every phone: {agreement:?}");
    // The inspectors' labels judged the shadow on the phones they looked at, beside the primary.
    let accuracy = shadow_checks.iter().find(|c| c.name == "accuracy").expect("an accuracy check in shadow");
    let (candidate, primary) = (accuracy.candidate.unwrap(), accuracy.primary.unwrap());
    assert!(accuracy.passed && (candidate - primary).abs() < 0.05 && candidate > 0.7, "{accuracy:?}");
    assert!(outcome.next.labelled > 0);

    // Version 2 now answers every station.
    assert!(versions.iter().all(|v| v == "2"), "{versions:?}");

    // Version 3: its scores shift; rolled back in the shadow step, the line keeps version 2.
    let failed = rollout::failed_checks(&outcome.bad.rollout, 0);
    assert!(failed.contains(&"score_ks".to_string()), "{failed:?}");
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.primary_version.as_str()), ("single", "2"));
    let audit = store.audit_events(100).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == rollout::CONTROLLER && e.reason.contains("score_ks")));
    println!("{} phones inspected during the first rollout", outcome.next.phones);
}
