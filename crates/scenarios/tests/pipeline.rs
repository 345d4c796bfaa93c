//! The recommendation pipeline scenario on Postgres: both stages of every visit logged under one
//! trace id; before the redesign neither alarm fires and the rollups count what the test
//! counted; after it, unknown-fraction fires on the profile and click-through on the
//! recommender, each with the value the test counted. Refused feedback says why.

use vigil_proto::vigil::v1::{FeedbackEvent, SubmitFeedbackRequest};
use vigil_scenarios::pipeline::{self, CLICK_THROUGH_LIMIT, UNKNOWN_LIMIT};
use vigil_scenarios::{Recipes, Stack, StackOptions};
use vigil_store::PgStore;
use vigil_store::testing::TestDatabase;

const USERS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_clickstream_fires_unknown_fraction_on_the_profile_and_click_through_on_the_recommender() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let users = pipeline::prepare(&Recipes::locate().unwrap(), &repository, USERS).unwrap();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    // Records go over a real Apache Kafka broker to the logger, as in production.
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions { kafka_brokers: Some(broker.brokers()), ..StackOptions::new(db.url(), &repository) };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let outcome = pipeline::run(&stack, &users, &vigil_scenarios::quiet).await.unwrap();
    let (normal, shifted) = (outcome.normal, outcome.shifted);

    // Feedback that cannot be stored is refused, one reason per event; a retried event is
    // stored once. (A profile's prediction: a click on it counts for no rule below.)
    let known: String =
        sqlx::query_scalar("SELECT prediction_id::text FROM predictions WHERE model_name = 'profile' LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let event = |prediction_id: &str, kind: &str| FeedbackEvent {
        prediction_id: prediction_id.into(),
        kind: kind.into(),
        ..Default::default()
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let retried = FeedbackEvent { event_id: uuid::Uuid::now_v7().to_string(), ..event(&known, "view") };
    let events =
        vec![event("nope", "click"), event(&unknown, "click"), event(&known, "Click!"), retried.clone(), retried];
    let mut monitoring = stack.monitoring.clone();
    let answer = monitoring.submit_feedback(SubmitFeedbackRequest { events }).await.unwrap().into_inner();
    let reasons: Vec<(u32, &str)> = answer.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!((answer.accepted, answer.duplicates), (1, 1), "{reasons:?}");
    assert!(reasons[0].1.contains("not a UUID") && reasons[1].1.contains("unknown prediction_id"), "{reasons:?}");
    assert!(reasons[2].0 == 2 && reasons[2].1.contains("lower-case"), "{reasons:?}");
    let empty = monitoring.submit_feedback(SubmitFeedbackRequest { events: Vec::new() }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    // Both stages of every visit under one trace id.
    let traces: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT trace_id, count(*), string_agg(model_name || ':' || stage, ',' ORDER BY stage) FROM predictions \
         GROUP BY trace_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(traces.len(), 2 * USERS, "one trace per visit");
    assert!(
        traces.iter().all(|(_, n, stages)| *n == 2 && stages == "profile:profile,recommender:recommend"),
        "{:?}",
        &traces[..3]
    );

    // Judged at the end of each phase over that phase.
    let [before, after] = pipeline::judge(&stack, &outcome).await.unwrap();
    let rate = |n: usize| Some(n as f64 / USERS as f64);
    // Before the redesign neither rule holds (an alarm that never fired is not stored).
    assert!(before.0.is_none() && before.1.is_none(), "{before:?}");
    assert!(
        rate(normal.unknown) < Some(UNKNOWN_LIMIT) && rate(normal.clicks) > Some(CLICK_THROUGH_LIMIT),
        "{normal:?}"
    );
    let as_counted = |state: &Option<(String, Option<f64>)>| state.as_ref().map(|s| (s.0.clone(), s.1));
    assert_eq!(as_counted(&after.0), Some(("firing".to_string(), rate(shifted.unknown))), "{after:?}");
    assert_eq!(as_counted(&after.1), Some(("firing".to_string(), rate(shifted.clicks))), "{after:?}");
    println!(
        "unknown {:.3} -> {:.3}; click-through {:.3} -> {:.3}",
        rate(normal.unknown).unwrap(),
        rate(shifted.unknown).unwrap(),
        rate(normal.clicks).unwrap(),
        rate(shifted.clicks).unwrap()
    );
    stack.shutdown().await.unwrap();
}
