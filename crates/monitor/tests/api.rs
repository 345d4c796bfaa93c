//! The monitoring API and dashboard over real gRPC and HTTP on loopback, against a fresh
//! Postgres database holding predictions drawn from the shipped model's training reference
//! (normal) and the same values dimmed and blurred (drifted).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::Code;
use uuid::Uuid;
use vigil_monitor::MonitorConfig;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{GetDriftRequest, GetMetricsRequest, LabelEvent, Scope, SubmitLabelsRequest};
use vigil_store::PredictionStore as _;
use vigil_store::testing::{TestDatabase, prediction};
use vigil_store::{PgStore, PredictionRow};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The training reference: raw samples and histograms per feature and for the score.
fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("models/scratch-detector/1/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A scipy expression of `r` (reference) and `c` (current), per named pair.
fn scipy_per_pair(pairs: &BTreeMap<String, (Vec<f64>, Vec<f64>)>, expression: &str) -> BTreeMap<String, f64> {
    let python = std::env::var("VIGIL_PYTHON")
        .expect("VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with numpy and scipy)");
    let file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(file.as_file(), pairs).unwrap();
    let script = format!(
        "import json, sys\nimport numpy as np\nfrom scipy import stats\n\
         pairs = json.load(open(sys.argv[1]))\n\
         print(json.dumps({{k: float({expression}) for k, (r, c) in pairs.items()}}))"
    );
    let out = std::process::Command::new(&python).args(["-c", &script]).arg(file.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

const FEATURES: [&str; 3] = ["brightness", "contrast", "sharpness"];
/// How the drifted rows change each feature: dimmer light, heavy blur.
const DRIFT: [f64; 3] = [0.5, 0.55, 0.35];

/// 600 normal rows in [now-50m, now-30m) and 600 drifted ones in [now-20m, now).
fn rows(now: DateTime<Utc>) -> (Vec<PredictionRow>, Vec<PredictionRow>) {
    let r = reference();
    let sample = |name: &str| -> Vec<f64> {
        r["features"][name]["sample"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let samples: Vec<Vec<f64>> = FEATURES.iter().map(|f| sample(f)).collect();
    let scores: Vec<f64> = r["score"]["sample"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // Sample `i` of the reference, the `n`-th row (2 s apart) from `start`.
    let make = |i: usize, n: usize, start: DateTime<Utc>, factor: &dyn Fn(usize) -> f64| {
        let t = start + chrono::Duration::milliseconds(n as i64 * 2_000);
        let features: serde_json::Map<String, serde_json::Value> = FEATURES
            .iter()
            .enumerate()
            .map(|(k, f)| (f.to_string(), (samples[k][i].max(0.0) * factor(k)).into()))
            .collect();
        prediction(t, scores[i] as f32, serde_json::Value::Object(features))
    };
    let normal = (0..600).map(|i| make(i, i, now - chrono::Duration::minutes(50), &|_| 1.0)).collect();
    let drifted = (0..600).map(|i| make(i + 600, i, now - chrono::Duration::minutes(20), &|k| DRIFT[k])).collect();
    (normal, drifted)
}

struct Monitor {
    grpc: MonitoringClient<tonic::transport::Channel>,
    http: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(url: &str) -> Monitor {
    let mut config = MonitorConfig { models: repo().join("models"), ..Default::default() };
    config.rollups.resolutions = vec![60, 3600];
    config.rollups.poll = Duration::from_millis(100);
    let backend = vigil_store::Backend::connect(url).await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    let task = vigil_store::with_store!(backend, store => tokio::spawn(vigil_monitor::run(store, config, grpc, http, stopped)));
    let grpc = MonitoringClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    Monitor { grpc, http: format!("http://{http_addr}"), stop, task }
}

fn scope() -> Option<Scope> {
    Some(Scope { model_name: "scratch-detector".into(), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_drift_labels_and_dashboard_over_the_wire() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let (normal, drifted) = rows(now);
    store.insert_predictions(&normal).await.unwrap();
    store.insert_predictions(&drifted).await.unwrap();
    let mut m = start(&db.url()).await;

    // Rollups catch up: per-minute counts equal a direct count of the rows.
    let metrics = |since, until, res| GetMetricsRequest {
        scope: scope(),
        since: ts(since),
        until: ts(until),
        resolution_seconds: res,
    };
    let mut windows = Vec::new();
    for _ in 0..100 {
        windows =
            m.grpc.get_metrics(metrics(now - chrono::Duration::hours(1), now, 60)).await.unwrap().into_inner().windows;
        if windows.iter().map(|w| w.count).sum::<u64>() == 1_200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut direct: BTreeMap<i64, u64> = BTreeMap::new();
    for r in normal.iter().chain(&drifted) {
        *direct.entry(r.time.timestamp().div_euclid(60) * 60).or_default() += 1;
    }
    let got: BTreeMap<i64, u64> = windows.iter().map(|w| (w.start.unwrap().seconds, w.count)).collect();
    assert_eq!(got, direct);

    // Normal traffic does not drift from its own training reference; dimmed and blurred does.
    let drift =
        |since, until| GetDriftRequest { scope: scope(), since: ts(since), until: ts(until), ..Default::default() };
    let calm = m
        .grpc
        .get_drift(drift(now - chrono::Duration::minutes(50), now - chrono::Duration::minutes(30)))
        .await
        .unwrap()
        .into_inner();
    assert!(!calm.dataset_drifted, "{calm:?}");
    assert_eq!(calm.total_features, 3);
    let shifted = m.grpc.get_drift(drift(now - chrono::Duration::minutes(20), now)).await.unwrap().into_inner();
    assert!(shifted.dataset_drifted);
    let test = |name: &str| shifted.features.iter().find(|t| t.feature == name).unwrap().clone();
    assert!(test("brightness").drifted && test("sharpness").drifted);
    assert_eq!(test("brightness").method, "wasserstein");
    assert!(shifted.baseline.contains("training reference"), "{}", shifted.baseline);

    // The statistic the API reports, from rollup sketches, is within 2% (of the 0.1 threshold when
    // smaller) of scipy's
    // `wasserstein_distance` on the raw values (the reference's sample against the logged values,
    // divided by the sample's std), for every feature and the score, in both windows.
    let r = reference();
    let sample = |name: &str| -> Vec<f64> {
        let v = if name == "score" { &r["score"]["sample"] } else { &r["features"][name]["sample"] };
        v.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let logged = |rows: &[PredictionRow], name: &str| -> Vec<f64> {
        rows.iter()
            .map(
                |row| {
                    if name == "score" { f64::from(row.score.unwrap()) } else { row.features[name].as_f64().unwrap() }
                },
            )
            .collect()
    };
    let names = ["brightness", "contrast", "sharpness", "score"];
    let mut pairs = BTreeMap::new();
    for name in names {
        pairs.insert(format!("calm/{name}"), (sample(name), logged(&normal, name)));
        pairs.insert(format!("shifted/{name}"), (sample(name), logged(&drifted, name)));
    }
    let scipy = scipy_per_pair(&pairs, "stats.wasserstein_distance(r, c) / np.std(r)");
    for (label, report) in [("calm", &calm), ("shifted", &shifted)] {
        for name in names {
            let got = if name == "score" {
                report.prediction.as_ref().unwrap().clone()
            } else {
                report.features.iter().find(|t| t.feature == name).unwrap().clone()
            };
            let want = scipy[&format!("{label}/{name}")];
            assert_eq!(got.method, "wasserstein");
            // 2% of the value, or of the threshold below it (where no decision is near).
            let bound = 0.02 * want.max(got.threshold);
            let error = (got.statistic - want).abs();
            assert!(error <= bound, "{label}/{name}: {} against scipy {want}", got.statistic);
            assert_eq!(got.current_count, 600);
        }
    }

    // A chosen window as the baseline: drifted against normal.
    let vs_window = m
        .grpc
        .get_drift(GetDriftRequest {
            baseline_since: ts(now - chrono::Duration::minutes(50)),
            baseline_until: ts(now - chrono::Duration::minutes(30)),
            ..drift(now - chrono::Duration::minutes(20), now)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(vs_window.dataset_drifted && vs_window.baseline.contains("predictions from"));
    // 600 values in the baseline: KS, from the two windows' sketches, against scipy's `ks_2samp`
    // on the raw values.
    let pairs: BTreeMap<String, (Vec<f64>, Vec<f64>)> =
        names.iter().map(|n| (n.to_string(), (logged(&normal, n), logged(&drifted, n)))).collect();
    let scipy_d = scipy_per_pair(&pairs, "stats.ks_2samp(r, c).statistic");
    for test in vs_window.features.iter().chain(&vs_window.prediction) {
        assert_eq!(test.method, "ks", "{test:?}");
        let want = scipy_d[&test.feature];
        assert!((test.statistic - want).abs() <= 0.01, "{}: D {} against scipy {want}", test.feature, test.statistic);
    }

    // Labels: accepted, duplicates, and every kind of bad label rejected with a reason.
    let label = |id: &str, l: &str| LabelEvent { prediction_id: id.into(), label: l.into(), ..Default::default() };
    let truth: Vec<(Uuid, &str)> = drifted
        .iter()
        .take(20)
        .enumerate()
        .map(|(i, r)| (r.prediction_id, if i % 2 == 0 { "defect" } else { "ok" }))
        .collect();
    let good: Vec<LabelEvent> = truth.iter().map(|(id, l)| label(&id.to_string(), l)).collect();
    let first = m.grpc.submit_labels(SubmitLabelsRequest { labels: good.clone() }).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.duplicates, first.rejected.len()), (20, 0, 0));
    let mut again = good.clone();
    again.push(label(&Uuid::now_v7().to_string(), "ok"));
    again.push(label("not-a-uuid", "ok"));
    again.push(label(&normal[0].prediction_id.to_string(), "scratched"));
    again.push(label(&normal[1].prediction_id.to_string(), " "));
    again.push(LabelEvent {
        time: ts(now + chrono::Duration::hours(1)),
        ..label(&normal[2].prediction_id.to_string(), "ok")
    });
    let second = m.grpc.submit_labels(SubmitLabelsRequest { labels: again }).await.unwrap().into_inner();
    assert_eq!((second.accepted, second.duplicates), (0, 20));
    let reasons: Vec<(u32, &str)> = second.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[4].1.contains("in the future"));
    assert!(reasons[0].1.contains("unknown prediction_id") && reasons[0].0 == 20);
    assert!(reasons[1].1.contains("not a UUID"));
    assert!(reasons[2].1.contains("'scratched' is not one of"));
    assert!(reasons[3].1.contains("label is empty"));
    let empty = m.grpc.submit_labels(SubmitLabelsRequest { labels: vec![] }).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many = vec![label(&Uuid::now_v7().to_string(), "ok"); vigil_monitor::labels::MAX_LABELS_PER_REQUEST + 1];
    let e = m.grpc.submit_labels(SubmitLabelsRequest { labels: too_many }).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("exceed the limit"));

    // Accuracy from those labels equals the share of outputs that match them.
    let expected_correct = truth
        .iter()
        .filter(|(id, l)| drifted.iter().find(|r| r.prediction_id == *id).unwrap().output["label"] == *l)
        .count();
    let labeled = m.grpc.get_drift(drift(now - chrono::Duration::minutes(20), now)).await.unwrap().into_inner();
    let n: u64 = labeled.accuracy.iter().map(|a| a.labeled).sum();
    let correct: f64 = labeled.accuracy.iter().map(|a| a.accuracy * a.labeled as f64).sum();
    assert_eq!(n, 20);
    assert_eq!(correct.round() as usize, expected_correct);
    assert!((labeled.label_coverage - 20.0 / 600.0).abs() < 1e-9);

    // Feedback after predictions (speech: redo-search, click-through) is counted per window.
    let feedback: Vec<vigil_store::FeedbackRow> = drifted
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, r)| vigil_store::FeedbackRow {
            event_id: Uuid::now_v7(),
            prediction_id: r.prediction_id,
            kind: if i < 3 { "redo_search" } else { "click" }.into(),
            value: String::new(),
            session_id: "s1".into(),
            time: Utc::now(),
        })
        .collect();
    store.insert_feedback(&feedback).await.unwrap();
    let with_feedback =
        m.grpc.get_metrics(metrics(now - chrono::Duration::hours(1), now, 60)).await.unwrap().into_inner().windows;
    let count = |kind: &str| with_feedback.iter().map(|w| w.feedback.get(kind).copied().unwrap_or(0)).sum::<u64>();
    assert_eq!((count("redo_search"), count("click")), (3, 2));

    // Bad requests name what is wrong.
    let e = m.grpc.get_metrics(GetMetricsRequest::default()).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("scope.model_name"));
    let e = m.grpc.get_metrics(metrics(now - chrono::Duration::hours(1), now, 7)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("not stored"), "{e:?}");
    // Left to the server, the resolution is still bounded: fifty years hold too many windows.
    let e = m.grpc.get_metrics(metrics(now - chrono::Duration::days(50 * 365), now, 0)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("narrow since and until"), "{e:?}");
    let e = m.grpc.get_metrics(metrics(now, now - chrono::Duration::hours(1), 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = m
        .grpc
        .get_drift(GetDriftRequest {
            scope: Some(Scope { model_name: "nope".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.code() == Code::FailedPrecondition && e.message().contains("no predictions of nope"), "{e:?}");
    let e = m
        .grpc
        .get_drift(GetDriftRequest { baseline_since: ts(now), ..drift(now - chrono::Duration::minutes(5), now) })
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("both baseline_since and baseline_until"));

    // The dashboard's page and JSON, and the monitor's own /metrics.
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/", m.http)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("dashboard.js"));
    let json: serde_json::Value = http
        .get(format!("{}/api/dashboard?model=scratch-detector&range=3600", m.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["windows"].as_array().unwrap().iter().map(|w| w["count"].as_u64().unwrap()).sum::<u64>(), 1_200);
    assert_eq!(json["drift"]["dataset"]["drifted"], true);
    assert_eq!(json["accuracy"].as_array().unwrap().iter().map(|a| a["labeled"].as_u64().unwrap()).sum::<u64>(), 20);
    let bad = http.get(format!("{}/api/dashboard?range=3600", m.http)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = http.get(format!("{}/api/dashboard?model=x&range=-5", m.http)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let scrape = http.get(format!("{}/metrics", m.http)).send().await.unwrap().text().await.unwrap();
    assert!(scrape.contains("vigil_monitor_rollup_records_total 1200"), "{scrape}");
    assert!(scrape.contains("process_resident_memory_bytes"));

    let _ = m.stop.send(());
    m.task.await.unwrap().unwrap();
}

/// Shadow agreement, computed by the monitor from logged predictions paired by trace id: in the
/// dashboard's JSON per shadow version, and as the `shadow.agreement` alarm metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_agreement_in_the_dashboard_and_as_an_alarm_metric() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    // 40 requests in the last 10 minutes; version 2 shadows each: 30 agree, 5 answer the other
    // label, 5 fail. Version 3 shadows the first 10 and agrees with all.
    let mut rows = Vec::new();
    for i in 0..40 {
        let t = now - chrono::Duration::seconds(600 - i * 10);
        let trace = format!("trace-{i}");
        let primary_label = if i % 2 == 0 { "ok" } else { "defect" };
        let other_label = if i % 2 == 0 { "defect" } else { "ok" };
        let at = |version: &str, variant: i16, label: &str, status: i16| PredictionRow {
            trace_id: trace.clone(),
            model_version: version.into(),
            variant,
            output: serde_json::json!({ "label": label }),
            status,
            ..prediction(t, 0.5, serde_json::json!({}))
        };
        rows.push(at("1", 1, primary_label, 1));
        rows.push(match i {
            0..30 => at("2", 3, primary_label, 1),
            30..35 => at("2", 3, other_label, 1),
            _ => at("2", 3, "", 3),
        });
        if i < 10 {
            rows.push(at("3", 3, primary_label, 1));
        }
    }
    store.insert_batch(&rows, &[]).await.unwrap();
    let m = start(&db.url()).await;
    let json: serde_json::Value = reqwest::get(format!("{}/api/dashboard?model=scratch-detector&range=3600", m.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut totals: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for w in json["shadow_agreement"].as_array().unwrap() {
        let t = totals.entry(w["shadow_version"].as_str().unwrap().to_string()).or_default();
        t.0 += w["compared"].as_u64().unwrap();
        let agreed = w["agreed"].as_f64().unwrap();
        assert_eq!(agreed.fract(), 0.0, "labels agree or not: {agreed}");
        t.1 += agreed as u64;
        t.2 += w["shadow_failed"].as_u64().unwrap();
    }
    assert_eq!(totals, BTreeMap::from([("2".to_string(), (40, 30, 5)), ("3".to_string(), (10, 10, 0))]));

    let views =
        vigil_monitor::Views::new(store.clone(), Default::default(), std::sync::Arc::new(MonitorConfig::default()));
    let rule = |metric: &str| vigil_monitor::config::Rule {
        name: "agreement".into(),
        metric_name: metric.into(),
        metric: metric.parse().unwrap(),
        model: None,
        variant: None,
        window: Duration::from_secs(3600),
        comparator: vigil_monitor::alarms::Comparator::Lt,
        threshold: 0.9,
        for_duration: Duration::ZERO,
        keep_firing_for: Duration::ZERO,
        label_delay: Duration::ZERO,
        severity: "warning".into(),
        baseline: vigil_monitor::views::Baseline::Training,
        baseline_offset: None,
        retrain: false,
        rollout: false,
        capture_rate: None,
    };
    let value = vigil_monitor::alarms::evaluate(&views, &rule("shadow.agreement"), "scratch-detector", Utc::now())
        .await
        .unwrap();
    assert_eq!(value, Some(40.0 / 50.0), "both shadow versions together: 40 of 50 agree");
    let none = vigil_monitor::alarms::evaluate(&views, &rule("shadow.agreement"), "other", Utc::now()).await.unwrap();
    assert_eq!(none, None, "no shadow ran: nothing to measure");

    let _ = m.stop.send(());
    m.task.await.unwrap().unwrap();
}

/// Drift against the training reference compares the traffic with the reference of the version
/// that serves it (the deployment's primary), not with the newest version the repository holds
/// (a retrained candidate waiting for its rollout, or one rolled back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_against_training_uses_the_reference_of_the_version_that_serves() {
    use vigil_store::{Change, DeploymentStore as _, RegistryStore as _};
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    // Versions 1 and 2 of the shipped model; 2's reference was made from dimmed images.
    let models = tempfile::tempdir().unwrap();
    let shipped = repo().join("models/scratch-detector/1");
    for version in ["1", "2"] {
        let dir = models.path().join("scratch-detector").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = std::fs::read_to_string(shipped.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), toml.replacen("version = 1", &format!("version = {version}"), 1))
            .unwrap();
        let mut reference = reference();
        if version == "2" {
            for edge in reference["features"]["brightness"]["bin_edges"].as_array_mut().unwrap() {
                *edge = (edge.as_f64().unwrap() * 0.5).into();
            }
            for value in reference["features"]["brightness"]["sample"].as_array_mut().unwrap() {
                *value = (value.as_f64().unwrap() * 0.5).into();
            }
        }
        std::fs::write(dir.join("reference.json"), reference.to_string()).unwrap();
    }
    let now = Utc::now();
    let (normal, _) = rows(now);
    store.insert_batch(&normal, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[1, 60], 100_000).await.unwrap() > 0 {}
    let config: MonitorConfig = toml::from_str("[rollups]\nresolutions = [1, 60]\n").unwrap();
    let catalog = vigil_monitor::Catalog::load(models.path()).unwrap();
    let views = vigil_monitor::Views::new(store.clone(), std::sync::Arc::new(catalog), std::sync::Arc::new(config));
    let scope = vigil_monitor::views::Scope { model: "scratch-detector".into(), version: None, variant: None };
    let training = vigil_monitor::views::Baseline::Training;
    let drift = || views.drift(&scope, now - chrono::Duration::minutes(55), now, &training);

    // Version 1 serves: its reference, and the traffic drawn from it has not drifted.
    for (version, digest) in [("1", "a"), ("2", "b")] {
        let row = vigil_store::testing::candidate_version("scratch-detector", version, &digest.repeat(64));
        store.register_version(&row, "").await.unwrap();
    }
    let change = Change { actor: "anna", reason: "", at: now };
    store
        .set_deployment(&vigil_store::testing::single_deployment("scratch-detector", "d1", "1"), &change)
        .await
        .unwrap();
    let report = drift().await.unwrap();
    assert!(report.baseline.starts_with("training reference of version 1"), "{}", report.baseline);
    let brightness = |r: &vigil_monitor::views::DriftReport| {
        r.features.iter().find(|f| f.feature == "brightness").map(|f| f.result.drifted).unwrap()
    };
    assert!(!brightness(&report), "traffic drawn from version 1's reference");
    // Version 2 promoted: its reference.
    store
        .set_deployment(&vigil_store::testing::single_deployment("scratch-detector", "d2", "2"), &change)
        .await
        .unwrap();
    let report = drift().await.unwrap();
    assert!(report.baseline.starts_with("training reference of version 2"), "{}", report.baseline);
    assert!(brightness(&report), "against version 2's dimmer reference the same traffic has drifted");
}

/// A recogniser's shadow agrees with the primary as far as their transcripts' words do (1 − the
/// word error rate against the primary's), not only when they match word for word.
#[tokio::test]
async fn a_transcribing_shadow_agrees_as_far_as_its_words_do() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let spoken = |trace: &str, variant: i16, version: &str, text: &str| {
        vigil_store::testing::spoken(now - chrono::Duration::minutes(5), trace, variant, version, text)
    };
    // (primary, shadow): equal; equal but for case and punctuation; one word of four wrong;
    // one word left out of three, and one word added to two; nothing in common.
    let pairs = [
        ("weather in oslo", "weather in oslo", 1.0),
        ("Call Anna.", "call anna", 1.0),
        ("play some jazz music", "play some jams music", 0.75),
        ("turn lights off", "turn off", 2.0 / 3.0),
        ("stop now", "stop it now", 0.5),
        ("hello", "goodbye world", 0.0),
    ];
    let mut rows = Vec::new();
    for (i, (primary, shadow, _)) in pairs.iter().enumerate() {
        rows.push(spoken(&format!("t{i}"), 1, "1", primary));
        rows.push(spoken(&format!("t{i}"), 3, "2", shadow));
    }
    store.insert_batch(&rows, &[]).await.unwrap();
    // The expected agreement from the pairs' own word counts, independently of the code under test.
    let expected: f64 = pairs.iter().map(|p| p.2).sum::<f64>() / pairs.len() as f64;

    let views =
        vigil_monitor::Views::new(store.clone(), Default::default(), std::sync::Arc::new(MonitorConfig::default()));
    let scope = vigil_monitor::views::Scope { model: "asr".into(), version: None, variant: None };
    let windows = views.shadow_agreement(&scope, now - chrono::Duration::hours(1), now, 3600).await.unwrap();
    let compared: u64 = windows.iter().map(|w| w.compared).sum();
    let agreed: f64 = windows.iter().map(|w| w.agreed).sum();
    assert_eq!(compared, pairs.len() as u64, "{windows:?}");
    assert!((agreed / compared as f64 - expected).abs() < 1e-9, "{agreed} of {compared}, expected {expected}");
    assert!(expected > 0.6 && expected < 0.7, "an exact match would give 2 of 6: {expected}");
}
