//! The shipped Prometheus alert rules and Grafana dashboards name only metrics the services
//! really export: vigil-edge (logging to a real broker, with a spool), vigil-logger (consuming
//! into Postgres) and vigil-monitor (an alarm firing at a webhook that refuses) run with
//! traffic, their /metrics are scraped, and every metric name in `deploy/prometheus` and
//! `deploy/grafana` must be among what they exported.

#[path = "../../logger/tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The metric names an exposition announces, with the sample names Prometheus derives from
/// them (`_total`, `_bucket`, `_sum`, `_count`, `_created`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            names.insert(name.to_string());
            for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Every token in `text` that looks like one of Vigil's or the process collector's metrics.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (text[i..].starts_with("vigil_") || text[i..].starts_with("process_")) {
            let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |n| i + n);
            names.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    // Job and rule names that are not metrics.
    names.retain(|n| n != "vigil_analyst");
    names
}

fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path, extension));
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_and_dashboards_name_exported_metrics() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let spool = tempfile::tempdir().unwrap();

    // vigil-edge: logging through the broker, a spool, and traffic (answered and refused).
    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root().join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    edge.logging.enabled = true;
    edge.logging.kafka = broker.kafka();
    edge.logging.spool =
        Some(vigil_logbus::spool::SpoolConfig { dir: spool.path().to_path_buf(), ..Default::default() });
    let server = vigil_edge::start(edge, false).await.unwrap();
    let image = std::fs::read_dir(root().join("samples/normal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .map(|p| std::fs::read(p).unwrap())
        .unwrap();
    let mut inspection = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    for i in 0..20 {
        let request =
            InspectRequest { image: image.clone(), station_id: format!("line-{}", i % 2), ..Default::default() };
        inspection.inspect(request).await.unwrap();
    }
    let refused = InspectRequest { image: b"not an image".to_vec(), ..Default::default() };
    inspection.inspect(refused).await.unwrap_err();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let bad = ModelInferRequest { model_name: "scratch-detector".into(), ..Default::default() };
    oip.model_infer(bad).await.unwrap_err();

    // vigil-logger, with its /metrics served as the binary serves them.
    let stats = Arc::new(vigil_logger::LoggerStats::default());
    let mut logger_config = quick_config(broker.brokers(), db.url());
    logger_config.statistics_interval_ms = 200;
    let (stop_logger, logger_stopped) = tokio::sync::oneshot::channel::<()>();
    let logger = tokio::spawn(vigil_logger::run(logger_config, stats.clone(), async move {
        let _ = logger_stopped.await;
    }));
    let logger_metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let logger_metrics_addr = logger_metrics.local_addr().unwrap();
    let router = vigil_telemetry::metrics_router(vigil_logger::metrics::registry(&stats));
    tokio::spawn(vigil_telemetry::serve_http(logger_metrics, router, std::future::pending()));
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "the records in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= 21
    })
    .await;

    // vigil-monitor: a rule that fires at once, notifying a webhook that refuses.
    let monitor_toml = spool.path().join("monitor.toml");
    std::fs::write(
        &monitor_toml,
        format!(
            r#"
        models = {models:?}
        [rollups]
        poll = "200ms"
        [alerting]
        evaluate_every = "200ms"
        webhook_url = "http://127.0.0.1:9/refuses"
        webhook_timeout = "500ms"
        webhook_max_backoff = "200ms"
        webhook_max_attempts = 2
        [[alerting.rules]]
        name = "any-traffic"
        metric = "error_rate"
        window = "1h"
        comparator = ">="
        threshold = 0
        for = "0s"
        severity = "warning"
        "#,
            models = root().join("models").display().to_string()
        ),
    )
    .unwrap();
    let monitor_config = vigil_monitor::MonitorConfig::load(&monitor_toml).unwrap();
    let grpc = vigil_monitor::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor_http = http.local_addr().unwrap();
    let monitor = vigil_monitor::start(store.clone(), monitor_config, grpc, http).await.unwrap();
    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(monitor.run_until(async move {
        let _ = monitor_stopped.await;
    }));

    let scrape_all = || {
        let mut names = BTreeSet::new();
        let mut text = String::new();
        for addr in [server.metrics_addr.unwrap(), logger_metrics_addr, monitor_http] {
            let body = scrape(addr);
            names.extend(exported_names(&body));
            text.push_str(&body);
        }
        (names, text)
    };
    eventually(Duration::from_secs(60), "webhook failures and consumer lag in /metrics", || async {
        let (names, _) = scrape_all();
        names.contains("vigil_monitor_webhook_deliveries_total") && names.contains("vigil_logger_consumer_lag")
    })
    .await;
    let (exported, text) = scrape_all();
    if std::env::var_os("VIGIL_PRINT_METRICS").is_some() {
        println!("{text}");
    }

    let mut checked = 0;
    let mut unknown = Vec::new();
    let files =
        [files_under(&root().join("deploy/prometheus"), "yml"), files_under(&root().join("deploy/grafana"), "json")]
            .concat();
    assert!(files.len() >= 4, "rules, the scrape configuration and dashboards: {files:?}");
    for file in &files {
        let names = referenced_names(&std::fs::read_to_string(file).unwrap());
        checked += names.len();
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{}: {name}", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(unknown.is_empty(), "metrics no service exports:\n{}", unknown.join("\n"));
    assert!(checked >= 20, "only {checked} metric references found");

    let _ = stop_monitor.send(());
    monitor.await.unwrap().unwrap();
    let _ = stop_logger.send(());
    logger.await.unwrap().unwrap();
    server.shutdown().await.unwrap();
}

#[test]
fn names_are_read_from_expositions_and_expressions() {
    let exposition = "# TYPE vigil_requests counter\nvigil_requests_total{code=\"OK\"} 3\n# TYPE vigil_x histogram\n";
    let names = exported_names(exposition);
    assert!(names.contains("vigil_requests_total") && names.contains("vigil_x_bucket"));
    let expr = "sum(rate(vigil_requests_total{code!=\"OK\"}[5m])) / sum(rate(vigil_requests_total[5m])) > 0.05 and process_threads";
    let referenced = referenced_names(expr);
    assert_eq!(referenced.into_iter().collect::<Vec<_>>(), ["process_threads", "vigil_requests_total"]);
    assert!(referenced_names("my_vigil_thing").is_empty(), "a name inside another is not a reference");
}
