//! The monitoring scenario end to end, on real components: vigil-edge serves the scratch
//! detector and logs to an Apache Kafka broker, vigil-logger fills Postgres, vigil-monitor
//! rolls up, tests drift, evaluates alarms, notifies a webhook and serves the dashboard, which
//! headless Chromium renders.
//!
//! Normal sample images first (the baseline), then the same scenes under dimmer light and blur:
//! the brightness and sharpness drift alarms fire within 25 s (10 s window) and show on the
//! dashboard; labels for the drifted predictions show the accuracy drop and its alarm fires;
//! back to normal images, every alarm resolves.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use support::*;
use vigil_monitor::MonitorConfig;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{GetDriftRequest, InspectRequest, LabelEvent, Scope, SubmitLabelsRequest};
use vigil_store::PredictionStore as _;
use vigil_store::{MonitorStore, PgStore};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// (file name, bytes, true label) of every sample in `samples/<folder>`.
fn samples(folder: &str) -> Vec<(String, Vec<u8>, String)> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(repo_root().join("samples").join(folder)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let label = if name.contains("defect") { "defect" } else { "ok" };
            (name, std::fs::read(&p).unwrap(), label.to_string())
        })
        .collect()
}

/// Sends the images round-robin for `duration` (about 10 per second); returns (prediction id,
/// true label) of every answer.
async fn serve_line(
    client: &InspectionClient<tonic::transport::Channel>,
    images: &[(String, Vec<u8>, String)],
    duration: Duration,
) -> Vec<(String, String)> {
    let start = Instant::now();
    let mut answers = Vec::new();
    let mut i = 0;
    while start.elapsed() < duration {
        let (name, image, label) = &images[i % images.len()];
        let request = InspectRequest {
            image: image.clone(),
            station_id: "line-1".into(),
            part_id: format!("{name}-{i}"),
            ..Default::default()
        };
        let answer = client.clone().inspect(request).await.unwrap().into_inner();
        answers.push((answer.prediction_id, label.clone()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers
}

/// The inspectors' labels of `answers` (prediction id, true label).
fn inspector_labels<'a>(answers: impl IntoIterator<Item = &'a (String, String)>) -> Vec<LabelEvent> {
    answers
        .into_iter()
        .map(|(id, label)| LabelEvent {
            prediction_id: id.clone(),
            label: label.clone(),
            source: "inspector".into(),
            ..Default::default()
        })
        .collect()
}

/// A webhook receiver that keeps what it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let r = r.clone();
            async move {
                r.lock().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Numbers of the `data-points` attributes of the charts whose `data-chart` starts with `prefix`.
fn chart_points(dom: &str, chart: &str) -> Option<u64> {
    let at = dom.find(&format!("data-chart=\"{chart}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let p = tag.find("data-points=\"")? + "data-points=\"".len();
    tag[p..].split('"').next()?.parse().ok()
}

async fn state<S: MonitorStore>(store: &S, rule: &str) -> Option<String> {
    let key = format!("{rule}/scratch-detector");
    store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == key).map(|a| a.state)
}

async fn wait_for_state<S: MonitorStore>(store: &S, rule: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    eventually(within, &format!("{rule} {want}"), || async { state(store, rule).await.as_deref() == Some(want) }).await;
    start.elapsed()
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

/// Waits for a drift alarm to have resolved since it fired; on timeout the failure shows the alarm's
/// transitions, its last message and the monitor's drift report of the trailing 10 s against the
/// baseline, test by test.
async fn wait_for_drift_resolved<S: MonitorStore>(
    store: &S,
    monitoring: &mut MonitoringClient<tonic::transport::Channel>,
    rule: &str,
    baseline: (DateTime<Utc>, DateTime<Utc>),
    within: Duration,
) {
    let start = Instant::now();
    let deadline = start + within;
    let key = format!("{rule}/scratch-detector");
    loop {
        // The alarm's history, not its state now: a window still filling with late records may
        // clear and briefly hold again (resolved -> pending -> inactive) between two polls.
        let history: Vec<_> =
            store.alert_history(1_000).await.unwrap().into_iter().filter(|e| e.alert_key == key).rev().collect();
        let fired = history.iter().position(|e| e.state == "firing");
        if let Some(resolved) = fired.and_then(|f| history[f..].iter().find(|e| e.state == "resolved")) {
            let after: Vec<_> = history.iter().map(|e| e.state.as_str()).collect();
            eprintln!("{rule} resolved after {:?} ({}); transitions: {after:?}", start.elapsed(), resolved.message);
            return;
        }
        let alarm = store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == key);
        if Instant::now() >= deadline {
            let now = Utc::now();
            let request = GetDriftRequest {
                scope: Some(Scope { model_name: "scratch-detector".into(), ..Default::default() }),
                since: timestamp(now - chrono::Duration::seconds(10)),
                until: timestamp(now),
                baseline_since: timestamp(baseline.0),
                baseline_until: timestamp(baseline.1),
            };
            let report = monitoring.get_drift(request).await.map(|r| r.into_inner());
            let tests = report.as_ref().map(|r| {
                r.features
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} statistic {:.4} p {:?} threshold {} drifted {} n {} reference {:?} current {:?}",
                            t.feature,
                            t.method,
                            t.statistic,
                            t.p_value,
                            t.threshold,
                            t.drifted,
                            t.current_count,
                            t.reference,
                            t.current
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let transitions: Vec<_> = history.iter().map(|e| (e.time.to_rfc3339(), &e.state, &e.message)).collect();
            panic!(
                "timed out waiting for {rule} resolved; alarm: {:?}; transitions: {transitions:#?}; baseline {}; \
                 drift of the last 10 s: {tests:#?}",
                alarm.map(|a| (a.state, a.message)),
                report.as_ref().map(|r| r.baseline.as_str()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_and_accuracy_alarms_fire_show_on_the_dashboard_and_resolve() {
    let t0 = Instant::now();
    let mark = |what: &str| eprintln!("[{:>7.1}s] {what}", t0.elapsed().as_secs_f64());
    let broker = Broker::start(3).await;
    let db = Database::create();
    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        ..Default::default()
    };
    edge.metrics.listen = "127.0.0.1:0".parse().unwrap();
    edge.logging.enabled = true;
    edge.logging.kafka = broker.kafka();
    let server = vigil_edge::start(edge, false).await.unwrap();
    let logger = RunningLogger::quick(broker.brokers(), db.url());
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    let line = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let (normal, drifted) = (samples("normal"), samples("drifted"));

    mark("services up");
    // 1. Baseline: normal production traffic, which the drift rules compare with.
    let baseline_since: DateTime<Utc> = Utc::now();
    let first = serve_line(&line, &normal, Duration::from_secs(12)).await;
    let baseline_until = Utc::now();
    eventually(Duration::from_secs(60), "the baseline in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= first.len() as i64
    })
    .await;

    mark(&format!("{} baseline predictions in Postgres", first.len()));
    let (hook, notifications) = webhook().await;
    let drift_rule = |feature: &str| {
        format!(
            r#"
            [[alerting.rules]]
            name = "{feature}-drift"
            metric = "drift.{feature}.detected"
            model = "scratch-detector"
            window = "10s"
            comparator = ">="
            threshold = 1
            for = "1s"
            keep_firing_for = "2s"
            severity = "critical"
            baseline_since = "{since}"
            baseline_until = "{until}"
            "#,
            since = baseline_since.to_rfc3339(),
            until = baseline_until.to_rfc3339()
        )
    };
    let config: MonitorConfig = toml::from_str(&format!(
        r#"
        models = "{models}"
        [rollups]
        resolutions = [1, 60]
        poll = "100ms"
        [alerting]
        evaluate_every = "500ms"
        webhook_url = "{hook}"
        {brightness}
        {sharpness}
        [[alerting.rules]]
        name = "accuracy-drop"
        metric = "accuracy"
        model = "scratch-detector"
        window = "30s"
        comparator = "<"
        threshold = 0.9
        severity = "critical"
        "#,
        models = repo_root().join("models").display(),
        brightness = drift_rule("brightness"),
        sharpness = drift_rule("sharpness"),
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor_store = vigil_store::PgStore::connect_lazy(&db.url(), 2).unwrap();
    let monitor = tokio::spawn(vigil_monitor::run(monitor_store, config, grpc, http, async move {
        let _ = monitor_stopped.await;
    }));
    // Normal traffic against a normal baseline: nothing fires, in two evaluation rounds that
    // both ran after every normal prediction was rolled up.
    let more_normal = serve_line(&line, &normal, Duration::from_secs(4)).await;
    let normal_count = (first.len() + more_normal.len()) as f64;
    let monitor_metric = |name: &'static str| {
        let text = tokio::task::block_in_place(|| scrape(http_addr));
        sample(&text, name, &[]).unwrap_or(0.0)
    };
    eventually(Duration::from_secs(30), "the normal predictions rolled up", || {
        std::future::ready(monitor_metric("vigil_monitor_rollup_records_total") >= normal_count)
    })
    .await;
    let rounds = monitor_metric("vigil_monitor_alert_evaluations_total");
    eventually(Duration::from_secs(10), "two more evaluation rounds", || {
        std::future::ready(monitor_metric("vigil_monitor_alert_evaluations_total") >= rounds + 2.0)
    })
    .await;
    assert_eq!(state(&store, "brightness-drift").await.as_deref(), None);
    assert_eq!(state(&store, "sharpness-drift").await.as_deref(), None);

    mark(&format!("{} more normal predictions rolled up, nothing fired", more_normal.len()));
    // 2. Dimmer light and blur: both drift alarms fire within their 10 s window (plus the 1 s
    // they must hold and the logging pipeline's delay).
    let drift_start = Instant::now();
    let line_for_drift = line.clone();
    let drifted_images = drifted.clone();
    let drifting =
        tokio::spawn(async move { serve_line(&line_for_drift, &drifted_images, Duration::from_secs(14)).await });
    wait_for_state(&store, "brightness-drift", "firing", Duration::from_secs(25)).await;
    wait_for_state(&store, "sharpness-drift", "firing", Duration::from_secs(25)).await;
    let fired_after = drift_start.elapsed();
    assert!(fired_after < Duration::from_secs(25), "drift alarms took {fired_after:?}");
    mark("both drift alarms firing");
    let drifted_answers = drifting.await.unwrap();

    // Late ground truth for the drifted window (and the baseline): the accuracy alarm fires.
    let mut monitoring = MonitoringClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    eventually(Duration::from_secs(60), "drifted predictions in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= (first.len() + more_normal.len() + drifted_answers.len()) as i64
    })
    .await;
    let labels = inspector_labels(first.iter().chain(&drifted_answers));
    let submitted =
        monitoring.submit_labels(SubmitLabelsRequest { labels: labels.clone() }).await.unwrap().into_inner();
    assert_eq!(submitted.accepted as usize, labels.len(), "{:?}", submitted.rejected);
    wait_for_state(&store, "accuracy-drop", "firing", Duration::from_secs(10)).await;
    mark(&format!("{} drifted predictions labeled, accuracy alarm firing", drifted_answers.len()));

    // The dashboard shows traffic, the features, the accuracy drop and the three firing alarms.
    let shot = std::env::var("VIGIL_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/artifacts"))
        .join("dashboard-scenario.png");
    let page = format!("http://{http_addr}/?model=scratch-detector&range=180");
    let dom = tokio::task::spawn_blocking(move || render_page(&page, &shot)).await.unwrap();
    assert!(dom.contains("data-ready=\"1\""), "the dashboard did not finish rendering");
    assert!(!dom.contains("data-error="), "the dashboard reported an error");
    for chart in ["traffic", "latency", "feature-brightness", "feature-sharpness", "accuracy"] {
        let points = chart_points(&dom, chart).unwrap_or_else(|| panic!("no {chart} chart"));
        assert!(points > 0, "{chart} chart has no data");
    }
    // The drift the alarms saw shows on the page too: the dataset banner, and the brightness and
    // sharpness panels badged as drifted against the training reference.
    assert!(dom.contains("id=\"drift-banner\""), "no dataset drift banner");
    for feature in ["brightness", "sharpness"] {
        let head = format!("<h3>{feature}</h3>");
        let at = dom.find(&head).unwrap_or_else(|| panic!("no {feature} panel"));
        let badge = &dom[at + head.len()..(at + head.len() + 60).min(dom.len())];
        assert!(badge.starts_with("<span class=\"drift-badge drifted\""), "{feature} badge: {badge}");
    }
    let firing = dom.matches("data-state=\"firing\"").count();
    assert!(firing >= 3, "{firing} firing alarm rows on the dashboard");
    for rule in ["brightness-drift", "sharpness-drift", "accuracy-drop"] {
        assert!(dom.contains(rule), "{rule} not on the dashboard");
    }

    mark("dashboard rendered");
    // 3. Back to normal images: the drift windows fill with normal traffic; the inspectors label
    // some of it, and once the labeled drifted predictions age out of the accuracy window the
    // labels show the model right again. Every alarm resolves on data (no data alone would keep
    // the accuracy alarm firing for a window more).
    let (line_for_normal, normal_images) = (line.clone(), normal.clone());
    let recovering =
        tokio::spawn(async move { serve_line(&line_for_normal, &normal_images, Duration::from_secs(45)).await });
    let baseline = (baseline_since, baseline_until);
    wait_for_drift_resolved(&store, &mut monitoring, "brightness-drift", baseline, Duration::from_secs(40)).await;
    wait_for_drift_resolved(&store, &mut monitoring, "sharpness-drift", baseline, Duration::from_secs(40)).await;
    let recovered = serve_line(&line, &normal, Duration::from_secs(5)).await;
    let labels = inspector_labels(&recovered);
    // Sent again until every prediction is logged (a label for one not logged yet is refused;
    // one sent twice is a duplicate, not stored twice).
    eventually(Duration::from_secs(30), "the recovered predictions labeled", || {
        let (mut monitoring, labels) = (monitoring.clone(), labels.clone());
        async move {
            let r =
                monitoring.submit_labels(SubmitLabelsRequest { labels: labels.clone() }).await.unwrap().into_inner();
            (r.accepted + r.duplicates) as usize == labels.len()
        }
    })
    .await;
    wait_for_state(&store, "accuracy-drop", "resolved", Duration::from_secs(45)).await;
    let message = vigil_store::AlertStore::load_alerts(&store)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.rule == "accuracy-drop")
        .unwrap()
        .message;
    assert!(!message.contains("no data"), "resolved by the labels, not by their absence: {message}");
    recovering.abort();

    // The webhook got each rule's firing and resolution, once each, in that order.
    eventually(Duration::from_secs(10), "six notifications", || async { notifications.lock().len() >= 6 }).await;
    let mut by_rule: HashMap<String, Vec<String>> = HashMap::new();
    for n in notifications.lock().iter() {
        by_rule.entry(n["rule"].as_str().unwrap().into()).or_default().push(n["state"].as_str().unwrap().into());
    }
    for rule in ["brightness-drift", "sharpness-drift", "accuracy-drop"] {
        assert_eq!(by_rule[rule], ["firing", "resolved"], "{rule}: {by_rule:?}");
    }

    let _ = stop_monitor.send(());
    monitor.await.unwrap().unwrap();
    logger.stop().await;
    server.shutdown().await.unwrap();
}
