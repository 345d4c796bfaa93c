//! The seed's healthcare screening example in partial automation. vigil-cloud serves a
//! symptom-screening classifier (scikit-learn, exported by skl2onnx) over tabular patients with
//! unmeasured values; obvious cases are decided by the model, hard ones (P(refer) in the model
//! card's review band) go through the logger into the review queue, where three doctors, each
//! through the monitor's review API, decide every hard case independently and the majority
//! becomes its label. The monitor reports the automation rate, the doctors' agreement with each
//! other and with the model, and the missing values of each feature; each is checked against the
//! test's own count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::MonitorConfig;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, infer_parameter::ParameterChoice};
use vigil_serving::records::RecordEmitter;
use vigil_store::testing::TestDatabase;
use vigil_store::{Change, DeploymentStore, OutcomeStore, PgStore, PredictionStore, RegistryStore, ReviewStore};
use vigil_testkit::training::train_screening;

const MODEL: &str = "screening";
const PATIENTS: usize = 240;
/// Each doctor's share of wrong calls (deterministic per doctor and patient).
const DOCTORS: [(&str, u64); 3] = [("dr-adams", 4), ("dr-baker", 10), ("dr-chen", 18)];

fn string_parameter(response: &vigil_proto::inference::ModelInferResponse, name: &str) -> String {
    match response.parameters[name].parameter_choice.clone() {
        Some(ParameterChoice::StringParam(s)) => s,
        other => panic!("{name}: {other:?}"),
    }
}

/// Whether `doctor` calls `patient` wrongly: FNV-1a of both, against the doctor's error share.
fn errs(doctor: &str, patient: &str, percent: u64) -> bool {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in doctor.bytes().chain(patient.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash % 100 < percent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easy_cases_are_decided_by_the_model_and_hard_ones_by_three_doctors_whose_agreement_is_reported() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let check = train_screening(&repository, 1, PATIENTS);
    let digest = vigil_store::registry::sha256_file(&repository.join(MODEL).join("1/model.onnx")).unwrap();
    store.register_version(&vigil_store::testing::candidate_version(MODEL, "1", &digest), "").await.unwrap();
    let deployment = vigil_store::testing::single_deployment(MODEL, "screening-1", "1");
    let deployment = vigil_store::DeploymentRow { policy: "partial".into(), ..deployment };
    let by_anna = Change { actor: "anna", reason: "partial automation", at: chrono::Utc::now() };
    store.set_deployment(&deployment, &by_anna).await.unwrap();

    // vigil-cloud following the deployment, its records into Postgres through the logger.
    let (sink, receiver) = vigil_logbus::in_process::channel(65_536);
    let (emitter, _emitting) = Emitter::start(sink, 65_536, 64);
    let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
    tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, Arc::new(LoggerStats::default())));
    let mut config = CloudConfig { model_repository: repository.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.deployments.database_url = db.url();
    config.deployments.poll_interval_ms = 100;
    config.voice_search.catalog = vigil_testkit::speech::repo_root().join("deploy/catalog/products.csv");
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "clinic-1"))).await.unwrap();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();

    let monitor_config: MonitorConfig = toml::from_str(&format!(
        "models = \"{}\"\n[rollups]\nresolutions = [1, 60]\npoll = \"100ms\"\n",
        repository.display()
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor_url = format!("http://{}", http.local_addr().unwrap());
    let monitor = vigil_monitor::start(store.clone(), monitor_config, grpc, http).await.unwrap();

    // The clinic's patients, 10 per request, unmeasured values as NaN.
    let columns = check.features.len();
    let mut decisions: HashMap<String, (usize, String)> = HashMap::new();
    for (chunk, patients) in check.patients.chunks(10).enumerate() {
        let values: Vec<u8> = patients.iter().flatten().flat_map(|v| v.unwrap_or(f32::NAN).to_le_bytes()).collect();
        let request = ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "patient".into(),
                datatype: "FP32".into(),
                shape: vec![patients.len() as i64, columns as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![values],
            ..Default::default()
        };
        let response = oip.model_infer(request).await.unwrap().into_inner();
        let probabilities: Vec<f32> = response.raw_output_contents[0]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let ids = string_parameter(&response, "prediction_ids");
        let answers = string_parameter(&response, "decisions");
        for (i, (id, decision)) in ids.split(',').zip(answers.split(',')).enumerate() {
            let patient = chunk * 10 + i;
            let (home, refer) = (probabilities[2 * i], probabilities[2 * i + 1]);
            let expected = check.probabilities[patient];
            assert!((home - expected[0]).abs() < 1e-5 && (refer - expected[1]).abs() < 1e-5, "patient {patient}");
            // The model card's band: home below 0.15, refer from 0.85, doctors in between.
            let by_band = if refer < 0.15 {
                "accept"
            } else if refer >= 0.85 {
                "reject"
            } else {
                "human_review"
            };
            assert_eq!(decision, by_band, "patient {patient}: P(refer) {refer}");
            decisions.insert(id.to_string(), (patient, decision.to_string()));
        }
    }
    let hard: HashMap<&String, usize> =
        decisions.iter().filter(|(_, (_, d))| d == "human_review").map(|(id, (p, _))| (id, *p)).collect();
    let automation_rate = 1.0 - hard.len() as f64 / PATIENTS as f64;
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

    // Three doctors, at once, through the review API: each claims, reads the patient, decides
    // (Dr Adams first gets back the item the page claimed for her).
    let http = reqwest::Client::new();
    let doctor = |name: &'static str, error_percent: u64| {
        let (http, url, hard, check) = (http.clone(), monitor_url.clone(), hard.clone(), check.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut decided: HashMap<String, String> = HashMap::new();
            while decided.len() < hard.len() {
                assert!(Instant::now() < deadline, "{name} decided {} of {}", decided.len(), hard.len());
                let next: serde_json::Value = http
                    .post(format!("{url}/api/review/next"))
                    .json(&serde_json::json!({ "reviewer": name, "model": MODEL }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let Some(item) = next["item"].as_object() else {
                    // The logger may still be queueing the last hard cases.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                assert_eq!(item["reviews_required"], 3);
                assert_eq!(next["labels"], serde_json::json!(["home", "refer"]));
                let id = item["prediction_id"].as_str().unwrap().to_string();
                let patient = hard[&id];
                // What the doctor sees: the patient's values, unmeasured ones as null.
                let input_url = format!("{url}{}", item["input_url"].as_str().unwrap());
                let seen: serde_json::Value = http.get(input_url).send().await.unwrap().json().await.unwrap();
                for (column, value) in check.features.iter().zip(&check.patients[patient]) {
                    match value {
                        Some(v) => assert_eq!(seen[column].as_f64(), Some(f64::from(*v)), "{column} of {patient}"),
                        None => assert!(seen[column].is_null(), "{column} of {patient} was not measured"),
                    }
                }
                let truth = &check.truth[patient];
                let call = if errs(name, &id, error_percent) {
                    if truth == "refer" { "home" } else { "refer" }
                } else {
                    truth.as_str()
                };
                let answer = http
                    .post(format!("{url}/api/review/{id}"))
                    .json(&serde_json::json!({ "reviewer": name, "label": call }))
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success(), "{name} on {id}: {}", answer.text().await.unwrap());
                decided.insert(id, call.to_string());
            }
            (name, decided)
        }
    };
    let (a, b, c) = tokio::join!(
        doctor(DOCTORS[0].0, DOCTORS[0].1),
        doctor(DOCTORS[1].0, DOCTORS[1].1),
        doctor(DOCTORS[2].0, DOCTORS[2].1)
    );
    let calls: HashMap<&str, HashMap<String, String>> = [a, b, c].into_iter().collect();

    // Every hard case is labelled with its doctors' majority.
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let until = chrono::Utc::now() + chrono::Duration::seconds(1);
    let labeled = store.labeled_predictions(MODEL, None, None, since, until).await.unwrap();
    assert_eq!(labeled.len(), hard.len(), "one label per hard case");
    for id in hard.keys() {
        let refer = DOCTORS.iter().filter(|(d, _)| calls[d][*id] == "refer").count();
        let item = store.review_item(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(item.decision.as_deref(), Some(if refer >= 2 { "refer" } else { "home" }), "{id}");
        assert_eq!(item.decided_by.unwrap().split(',').count(), 3);
    }

    // The monitor's report against the test's own counts.
    let mut pairs = (0, 0);
    for id in hard.keys() {
        let answers: Vec<&String> = DOCTORS.iter().map(|(d, _)| &calls[d][*id]).collect();
        for (i, x) in answers.iter().enumerate() {
            for y in &answers[i + 1..] {
                pairs = (pairs.0 + 1, pairs.1 + usize::from(x == y));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report: serde_json::Value = http
            .get(format!("{monitor_url}/api/dashboard?model={MODEL}&range=3600"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let windows = report["windows"].as_array().unwrap();
        let counted: u64 = windows.iter().map(|w| w["count"].as_u64().unwrap()).sum();
        if counted == PATIENTS as u64 {
            break report;
        }
        assert!(Instant::now() < deadline, "rollups hold {counted} of {PATIENTS} predictions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
        let with_model = hard.iter().filter(|(id, patient)| calls[name][**id] == check.label[**patient]).count() as f64
            / hard.len() as f64;
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
    monitor.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
