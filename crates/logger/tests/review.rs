//! Partial automation end to end, on real components: vigil-edge follows a deployment from
//! Postgres with the `partial` policy and a review band, logs to an Apache Kafka broker;
//! vigil-logger queues the items in the band for a person; the monitor's review page (rendered
//! in headless Chromium) shows one to a reviewer with its image and the model's suggestion, and
//! she decides it with a click while a second reviewer is refused; the decision is a label and counts in the
//! reviewers' agreement on the dashboard.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::{Decision, InspectRequest};
use vigil_store::PredictionStore as _;
use vigil_store::{Change, DeploymentRow, DeploymentStore, ModelVersionRow, PgStore, RegistryStore, ReviewStore};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every sample image (normal and drifted; scratched and not).
fn images() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = ["normal", "drifted"]
        .iter()
        .flat_map(|set| std::fs::read_dir(repo_root().join("samples").join(set)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn deployment(id: &str, policy: &str, band: Option<(f64, f64)>) -> DeploymentRow {
    DeploymentRow {
        model_name: "scratch-detector".into(),
        deployment_id: id.into(),
        primary_version: "1".into(),
        candidate_version: None,
        mode: "single".into(),
        share: 0.0,
        updated_by: "ben".into(),
        updated_at: chrono::Utc::now(),
        policy: policy.into(),
        accept_below: band.map(|b| b.0),
        reject_at: band.map(|b| b.1),
    }
}

async fn inspect(line: &InspectionClient<tonic::transport::Channel>, image: &[u8], part: String) -> (String, f32, i32) {
    let request =
        InspectRequest { image: image.to_vec(), station_id: "line-1".into(), part_id: part, ..Default::default() };
    let answer = line.clone().inspect(request).await.unwrap().into_inner();
    (answer.prediction_id, answer.defect_probability, answer.decision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_automation_queues_unsure_items_once_and_a_review_becomes_a_label() {
    let broker = Broker::start(3).await;
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let artifact = repo_root().join("models/scratch-detector/1/model.onnx");
    let now = chrono::Utc::now();
    let registered = ModelVersionRow {
        model_name: "scratch-detector".into(),
        version: "1".into(),
        artifact_sha256: vigil_store::registry::sha256_file(&artifact).unwrap(),
        artifact_uri: String::new(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "production".into(),
        registered_by: "anna".into(),
        registered_at: now,
        stage_changed_at: now,
    };
    store.register_version(&registered, "").await.unwrap();
    let change = Change { actor: "ben", reason: "line trial", at: now };
    store.set_deployment(&deployment("full", "full", None), &change).await.unwrap();

    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        ..Default::default()
    };
    edge.metrics.listen = "127.0.0.1:0".parse().unwrap();
    edge.logging.enabled = true;
    edge.logging.kafka = broker.kafka();
    edge.deployments.database_url = db.url();
    edge.deployments.poll_interval_ms = 100;
    let server = vigil_edge::start(edge, false).await.unwrap();
    let logger = RunningLogger::quick(broker.brokers(), db.url());
    let line = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let images = images();

    // Full automation: the model decides every item; its scores choose a band holding about a
    // third of them.
    let mut scores = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let (_, score, decision) = inspect(&line, image, format!("warm-{i}")).await;
        assert_ne!(decision, Decision::HumanReview as i32, "full automation never asks a person");
        scores.push(score);
    }
    let mut sorted = scores.clone();
    sorted.sort_by(f32::total_cmp);
    let band = (f64::from(sorted[sorted.len() / 3]), f64::from(sorted[2 * sorted.len() / 3]));
    let in_band = |s: f32| f64::from(s) >= band.0 && f64::from(s) < band.1;
    assert!(scores.iter().any(|s| in_band(*s)) && scores.iter().any(|s| !in_band(*s)), "{scores:?}");
    store.set_deployment(&deployment("partial", "partial", Some(band)), &change).await.unwrap();
    let probe = scores.iter().position(|s| in_band(*s)).unwrap();
    eventually(Duration::from_secs(10), "the partial policy applied", || async {
        inspect(&line, &images[probe], "probe".into()).await.2 == Decision::HumanReview as i32
    })
    .await;
    // Two passes over the line: exactly the items in the band go to a person.
    let mut expected = BTreeSet::new();
    let mut answered = 0i64;
    for pass in 0..2 {
        for (i, image) in images.iter().enumerate() {
            let (id, score, decision) = inspect(&line, image, format!("part-{pass}-{i}")).await;
            answered += 1;
            assert_eq!(decision == Decision::HumanReview as i32, in_band(score), "score {score} in {band:?}");
            if in_band(score) {
                expected.insert(id);
            }
        }
    }
    // Every answer logged, and the one probe that went to a person queued too.
    let count = |sql: &'static str| {
        let store = store.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await.unwrap_or(0) }
    };
    eventually(Duration::from_secs(60), "every prediction in Postgres", || async {
        count("SELECT count(*) FROM predictions WHERE part_id LIKE 'part-%'").await >= answered
            && count("SELECT count(*) FROM review_items WHERE part_id = 'probe'").await == 1
    })
    .await;
    // Reviews are queued after their batch's predictions are written: wait until the logger has
    // handled every record in Postgres, which it counts last.
    let logged = u64::try_from(count("SELECT count(*) FROM predictions").await).unwrap();
    eventually(Duration::from_secs(30), "every logged record handled", || {
        std::future::ready(vigil_logger::LoggerStats::get(&logger.stats.consumed) >= logged)
    })
    .await;
    let queued: Vec<(String, String)> = sqlx::query_as(
        "SELECT prediction_id::text, part_id FROM review_items WHERE part_id LIKE 'part-%' ORDER BY created_at",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let queued_ids: BTreeSet<String> = queued.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(queued_ids, expected, "the items in the band, and only they, wait for a person");
    let parts: BTreeSet<&String> = queued.iter().map(|(_, part)| part).collect();
    assert_eq!(parts.len(), queued.len(), "each item queued once");

    // The monitor: Anna opens the review page and is shown the oldest item, its image and the
    // model's suggestion (partial automation shows it).
    let config: vigil_monitor::MonitorConfig =
        toml::from_str(&format!("models = \"{}\"", repo_root().join("models").display())).unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(vigil_monitor::run(
        PgStore::connect_lazy(&db.url(), 2).unwrap(),
        config,
        grpc,
        http,
        async move {
            let _ = monitor_stopped.await;
        },
    ));
    eventually(Duration::from_secs(10), "the monitor's page", || async {
        reqwest::get(format!("http://{http_addr}/review")).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let shot = std::env::var("VIGIL_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/artifacts"))
        .join("review-page.png");
    let page = format!("http://{http_addr}/review?reviewer=anna&model=scratch-detector");
    let dom = tokio::task::spawn_blocking(move || render_page(&page, &shot)).await.unwrap();
    let oldest: String = sqlx::query_scalar(
        "SELECT prediction_id::text FROM review_items WHERE decided_at IS NULL ORDER BY created_at LIMIT 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(dom.contains(&format!("data-item=\"{oldest}\"")), "the oldest open item is shown: {dom}");
    assert!(dom.contains(&format!("src=\"/api/review/{oldest}/input\"")), "with its image");
    assert!(dom.contains("id=\"suggestion\" data-label="), "with the model's suggestion");
    assert!(dom.contains("data-label=\"ok\"") && dom.contains("data-label=\"defect\""), "a button per label");
    let item = store.review_item(oldest.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(item.claimed_by.as_deref(), Some("anna"), "the page claimed it for Anna");
    // The image served is the one the line sent.
    let served = reqwest::get(format!("http://{http_addr}/api/review/{oldest}/input")).await.unwrap();
    assert_eq!(served.headers()["content-type"], "image/png");
    let served = served.bytes().await.unwrap();
    assert!(images.iter().any(|i| i.as_slice() == served.as_ref()), "the image as received");

    // Ben decides Anna's item: refused; Anna's decision is accepted; Ben again: refused.
    let http_client = reqwest::Client::new();
    let decide = |reviewer: &'static str, label: &'static str| {
        let (client, url) = (http_client.clone(), format!("http://{http_addr}/api/review/{oldest}"));
        async move {
            let response = client
                .post(url)
                .json(&serde_json::json!({ "reviewer": reviewer, "label": label }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = decide("ben", "ok").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("claimed by anna"), "{body}");
    let suggestion = item.suggestion.clone().unwrap();
    let disagree = if suggestion == "ok" { "defect" } else { "ok" };
    // Anna, in the browser: the item loads with its image decoded; she clicks her decision.
    let browser =
        vigil_testkit::Chromium::launch(&format!("http://{http_addr}/review?reviewer=anna&model=scratch-detector"));
    let mut page = browser.page().await;
    let shown = page.wait_for("document.getElementById('item')?.dataset.item", Duration::from_secs(20)).await;
    assert_eq!(shown, oldest.as_str(), "her claimed item, again");
    let width = page.wait_for("document.getElementById('item-image')?.naturalWidth", Duration::from_secs(10)).await;
    assert!(width.as_u64().unwrap() > 0, "the image decodes in the browser");
    page.eval(&format!("document.querySelector('button.decide[data-label=\"{disagree}\"]').click()")).await;
    let state = page.wait_for("document.getElementById('result').dataset.state", Duration::from_secs(10)).await;
    let result = page.eval("document.getElementById('result').textContent").await;
    assert_eq!(state, "accepted", "{result}");
    drop(browser);
    let (status, body) = decide("ben", "ok").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already decided by anna"), "{body}");

    // The decision is the item's label, from the reviewer, and counts against the model in the
    // reviewers' agreement.
    let labels: Vec<(String, String)> =
        sqlx::query_as("SELECT label, source FROM labels WHERE prediction_id = $1::uuid")
            .bind(&oldest)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(labels, [(disagree.to_string(), "review:anna".to_string())]);
    let dashboard: serde_json::Value =
        reqwest::get(format!("http://{http_addr}/api/dashboard?model=scratch-detector&range=3600"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let review = &dashboard["review"];
    assert_eq!(review["decided"], 1);
    assert_eq!(review["open"].as_i64().unwrap(), queued.len() as i64 - 1 + 1, "the probe's item waits too");
    assert_eq!(
        review["agreement"],
        serde_json::json!([{ "variant": "primary", "model_version": "1", "compared": 1, "agreed": 0 }])
    );
    assert!(
        dashboard["audit"].as_array().unwrap().iter().any(|e| e["to"].as_str().unwrap().contains("policy partial")),
        "the policy change is on the dashboard's audit list"
    );

    let _ = stop_monitor.send(());
    monitor.await.unwrap().unwrap();
    logger.stop().await;
    server.shutdown().await.unwrap();
}
