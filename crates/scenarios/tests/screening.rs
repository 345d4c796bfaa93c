//! The healthcare screening scenario on Postgres. vigil-cloud serves a
//! symptom-screening classifier (scikit-learn, exported by skl2onnx) over tabular patients with
//! unmeasured values; obvious cases are decided by the model, hard ones (P(refer) in the model
//! card's review band) go through the logger into the review queue, where three doctors, each
//! through the monitor's review API, decide every hard case independently and the majority
//! becomes its label. The monitor reports the automation rate, the doctors' agreement with each
//! other and with the model, and the missing values of each feature; each is checked against the
//! test's own count.

use std::time::{Duration, Instant};

use vigil_scenarios::screening::{self, DOCTORS, MODEL};
use vigil_scenarios::{Recipes, Stack, StackOptions};
use vigil_store::testing::TestDatabase;
use vigil_store::{OutcomeStore, PgStore, ReviewStore};

const PATIENTS: usize = 240;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easy_cases_are_decided_by_the_model_and_hard_ones_by_three_doctors_whose_agreement_is_reported() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let check = screening::prepare(&Recipes::locate().unwrap(), &repository, PATIENTS).unwrap();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    // Records go over a real Apache Kafka broker to the logger, as in production.
    let broker = vigil_testkit::KafkaBroker::start(2).await;
    let options = StackOptions { kafka_brokers: Some(broker.brokers()), ..StackOptions::new(db.url(), &repository) };
    let stack = Stack::start(store.clone(), options).await.unwrap();
    let monitor_url = format!("http://{}", stack.monitor_http);
    let served = screening::serve_patients(&stack, &check, &vigil_scenarios::quiet).await.unwrap();

    // Every answer as onnxruntime gives it, every decision by the model card's band: home
    // below 0.15, refer from 0.85, doctors in between.
    assert_eq!(served.answers.len(), PATIENTS);
    for (patient, decision, [home, refer]) in served.answers.values() {
        let expected = check.probabilities[*patient];
        assert!((home - expected[0]).abs() < 1e-5 && (refer - expected[1]).abs() < 1e-5, "patient {patient}");
        let by_band = if *refer < 0.15 {
            "accept"
        } else if *refer >= 0.85 {
            "reject"
        } else {
            "human_review"
        };
        assert_eq!(decision, by_band, "patient {patient}: P(refer) {refer}");
    }
    let hard = served.hard();
    let automation_rate = served.automation_rate();
    assert!((0.5..0.95).contains(&automation_rate), "automation rate {automation_rate}");

    // Every hard case reaches the queue; the review page shows a doctor the patient's values.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.review_stats(Some(MODEL), chrono::Utc::now()).await.unwrap().open < hard.len() as i64 {
        assert!(Instant::now() < deadline, "the hard cases never all reached the review queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = vigil_testkit::Chromium::launch(&format!("{monitor_url}/review?reviewer=dr-adams&model={MODEL}"));
    let mut page = browser.page().await;
    let shown = page.wait_for("document.querySelector('#item-features')?.textContent", Duration::from_secs(20)).await;
    assert!(check.features.iter().all(|f| shown.as_str().unwrap().contains(f.as_str())), "{shown}");
    let note = page.eval("document.querySelector('#panel').textContent").await;
    assert!(note.as_str().unwrap().contains("3 people decide this item independently"), "{note}");
    drop(browser);
    // What the API serves a doctor: the patient's values, unmeasured ones as null.
    let http = reqwest::Client::new();
    let (id, patient) = hard.iter().next().unwrap();
    let seen: serde_json::Value =
        http.get(format!("{monitor_url}/api/review/{id}/input")).send().await.unwrap().json().await.unwrap();
    for (column, value) in check.features.iter().zip(&check.patients[*patient]) {
        match value {
            Some(v) => assert_eq!(seen[column].as_f64(), Some(f64::from(*v)), "{column} of {patient}"),
            None => assert!(seen[column].is_null(), "{column} of {patient} was not measured"),
        }
    }

    // Three doctors, at once, through the review API (Dr Adams first gets back the item the
    // page claimed for her).
    let calls = screening::doctors_decide(&stack, &check, &served, &vigil_scenarios::quiet).await.unwrap();

    // Every hard case is labelled with its doctors' majority.
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let until = chrono::Utc::now() + chrono::Duration::seconds(1);
    let q = vigil_store::monitoring::OutcomeQuery {
        model_name: MODEL.into(),
        model_version: None,
        variant: None,
        since,
        until,
        resolution_s: 3600,
        events_before: None,
    };
    let labeled: i64 = store.labeled_counts(&q).await.unwrap().iter().map(|g| g.count).sum();
    assert_eq!(labeled, hard.len() as i64, "one label per hard case");
    for id in hard.keys() {
        let refer = DOCTORS.iter().filter(|(d, _)| calls[d][id] == "refer").count();
        let item = store.review_item(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(item.decision.as_deref(), Some(if refer >= 2 { "refer" } else { "home" }), "{id}");
        assert_eq!(item.decided_by.unwrap().split(',').count(), 3);
    }

    // The monitor's report against the test's own counts.
    let mut pairs = (0, 0);
    for id in hard.keys() {
        let answers: Vec<&String> = DOCTORS.iter().map(|(d, _)| &calls[d][id]).collect();
        for (i, x) in answers.iter().enumerate() {
            for y in &answers[i + 1..] {
                pairs = (pairs.0 + 1, pairs.1 + usize::from(x == y));
            }
        }
    }
    let report = screening::report(&stack, PATIENTS).await.unwrap();
    let windows = report["windows"].as_array().unwrap();
    let by_decision = |name: &str| windows.iter().map(|w| w["decisions"][name].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(by_decision("human_review"), hard.len() as u64);
    assert_eq!(by_decision("accept") + by_decision("reject"), (PATIENTS - hard.len()) as u64);
    let missing =
        |feature: &str| windows.iter().map(|w| w["features"][feature]["missing"].as_u64().unwrap_or(0)).sum::<u64>();
    for (column, feature) in check.features.iter().enumerate() {
        let unmeasured = check.patients.iter().filter(|p| p[column].is_none()).count() as u64;
        assert_eq!(missing(feature), unmeasured, "{feature}");
    }
    assert!(missing("temperature") > 0 && missing("oxygen_saturation") > 0);
    let panel = &report["review"]["panel"];
    assert_eq!(panel["items"], hard.len());
    let pairwise = panel["pairwise_agreement"].as_f64().unwrap();
    assert!((pairwise - pairs.1 as f64 / pairs.0 as f64).abs() < 1e-9, "{pairwise} vs {pairs:?}");
    for (name, _) in DOCTORS {
        let reported = panel["reviewers"].as_array().unwrap().iter().find(|r| r["reviewer"] == name).unwrap();
        let agreeing = hard.iter().filter(|(id, patient)| calls[name][*id] == check.label[**patient]).count();
        let with_model = agreeing as f64 / hard.len() as f64;
        assert!((reported["with_model"].as_f64().unwrap() - with_model).abs() < 1e-9, "{name}: {reported}");
        assert_eq!(reported["decisions"], hard.len());
    }

    // The dashboard shows the doctors' agreement, in a browser.
    let browser = vigil_testkit::Chromium::launch(&format!("{monitor_url}/?model={MODEL}&range=3600"));
    let mut page = browser.page().await;
    let row = page
        .wait_for(
            "document.querySelector('#reviewers tr[data-reviewer=\"dr-chen\"]')?.textContent",
            Duration::from_secs(20),
        )
        .await;
    assert!(row.as_str().unwrap().starts_with(&format!("dr-chen{}", hard.len())), "{row}");
    let summary = page.eval("document.querySelector('#panel-agreement').textContent").await;
    assert!(
        summary.as_str().unwrap().contains(&format!("{} items decided by several people", hard.len())),
        "{summary}"
    );
    drop(browser);
    println!(
        "automation rate {automation_rate:.3}; {} hard cases; doctors agree on {pairwise:.3} of pairs, kappa {}",
        hard.len(),
        panel["fleiss_kappa"]
    );
    stack.shutdown().await.unwrap();
}
