//! The anti-spam scenario on Postgres: the retrained filter goes from 1% of users to all by
//! itself, each user staying on one version once moved and about 1% of the first step's users
//! on the candidate; the filter that flags everything is rolled back at 1% on its score
//! distribution, with the audit event saying so, and no post fails on the way.

use std::collections::HashMap;

use vigil_monitor::rollout;
use vigil_scenarios::{Recipes, Stack, StackOptions, anti_spam};
use vigil_store::testing::TestDatabase;
use vigil_store::{DeploymentStore, PgStore, RegistryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrained_filter_goes_from_one_percent_of_users_to_all_and_one_that_flags_everything_is_rolled_back() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let posts = anti_spam::prepare(&Recipes::locate().unwrap(), &repository).unwrap();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    // Records go over a real Apache Kafka broker to the logger, as in production.
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions {
        kafka_brokers: Some(broker.brokers()),
        rollouts: anti_spam::ROLLOUTS.into(),
        ..StackOptions::new(db.url(), &repository)
    };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let outcome = anti_spam::run(&stack, &posts.texts, &vigil_scenarios::quiet).await;
    // Everything stops before any assertion: a failed one must not leave the logger behind.
    stack.shutdown().await.unwrap();
    let outcome = outcome.unwrap();
    assert!(outcome.as_expected(), "{outcome:?}");

    // Version 2: promoted through every step with no person.
    let seen = &outcome.retrained;
    let decisions: Vec<String> =
        seen.rollout.decisions().iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["next_step", "next_step", "next_step", "promote"]);
    // Sticky by user: once version 2 answers a user, version 1 never answers them again.
    for (user, versions) in &seen.answers {
        let first_new = versions.iter().position(|(v, _)| v == "2").unwrap_or(versions.len());
        assert!(versions[first_new..].iter().all(|(v, _)| v == "2"), "{user} went back to version 1: {versions:?}");
    }
    // About 1% of the users who posted in the first step had version 2.
    let first_step: HashMap<&String, bool> = seen
        .answers
        .iter()
        .filter_map(|(user, versions)| {
            let in_step: Vec<&(String, i32)> = versions.iter().filter(|(_, step)| *step == 0).collect();
            (!in_step.is_empty()).then(|| (user, in_step.iter().any(|(v, _)| v == "2")))
        })
        .collect();
    let share = first_step.values().filter(|&&new| new).count() as f64 / first_step.len() as f64;
    assert!((0.003..0.03).contains(&share), "{share} of {} users on the 1% canary", first_step.len());
    println!("{} posts during the first rollout; {share:.4} of the first step's users on the canary", seen.posts);

    // Version 3 flags everything: rolled back at 1%, on its score distribution.
    let seen = &outcome.flags_everything;
    let failed = rollout::failed_checks(&seen.rollout, 0);
    assert!(failed.contains(&"score_ks".to_string()), "{failed:?}");
    let deployment = store.deployments().await.unwrap().remove(0);
    assert_eq!((deployment.mode.as_str(), deployment.primary_version.as_str()), ("single", "2"));
    let audit = store.audit_events(100).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == rollout::CONTROLLER && e.reason.contains("score_ks")), "{audit:?}");
    let users_on_3: usize = seen.answers.values().filter(|v| v.iter().any(|(version, _)| version == "3")).count();
    assert!(users_on_3 * 20 < seen.answers.len(), "{users_on_3} of {} users saw version 3", seen.answers.len());
}
