//! Alarms end to end on a real store: rules fire and resolve from logged predictions, every
//! transition is kept, and the webhook gets each one in order although it first fails and
//! then hangs; rule files with mistakes are refused with the rule named.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::Utc;
use parking_lot::Mutex;
use vigil_monitor::MonitorConfig;
use vigil_proto::vigil::v1::ListAlertsRequest;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_store::AlertStore as _;
use vigil_store::testing::{TestDatabase, prediction};
use vigil_store::{MonitorStore, PgStore, PredictionRow, PredictionStore, SqliteStore};

/// Serves `app` on a free loopback port; returns the URL of its `/hook` route.
async fn serve_hook(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A webhook receiver that answers 500 to the first call, hangs on the second, answers 503
/// until `open` is set, then accepts.
async fn flaky_webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let (r, c, o) = (received.clone(), calls.clone(), open.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let (r, c, o) = (r.clone(), c.clone(), o.clone());
            async move {
                match c.fetch_add(1, Ordering::SeqCst) {
                    0 => StatusCode::INTERNAL_SERVER_ERROR,
                    1 => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        StatusCode::OK
                    }
                    _ if !o.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => {
                        r.lock().push(body);
                        StatusCode::OK
                    }
                }
            }
        }),
    );
    let url = serve_hook(app).await;
    (url, received, calls, open)
}

fn rows(n: usize, status: i16) -> Vec<PredictionRow> {
    (0..n)
        .map(|i| {
            let mut r = prediction(
                Utc::now() - chrono::Duration::milliseconds(i as i64),
                0.1,
                serde_json::json!({ "brightness": 80.0 }),
            );
            r.status = status;
            r
        })
        .collect()
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_fire_resolve_and_reach_a_flaky_webhook_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    let (url, received, calls, open) = flaky_webhook().await;
    let config: MonitorConfig = toml::from_str(&format!(
        r#"
        models = "{models}"
        [rollups]
        resolutions = [1, 60]
        poll = "100ms"
        [alerting]
        evaluate_every = "200ms"
        webhook_url = "{url}"
        webhook_timeout = "300ms"
        webhook_max_backoff = "500ms"
        [[alerting.rules]]
        name = "error-rate"
        metric = "error_rate"
        window = "1h"
        comparator = ">"
        threshold = 0.2
        severity = "critical"
        [[alerting.rules]]
        name = "busy"
        metric = "requests"
        window = "1h"
        comparator = ">="
        threshold = 5
        for = "1s"
        [[alerting.rules]]
        name = "accuracy"
        metric = "accuracy"
        window = "1h"
        comparator = "<"
        threshold = 0.9
        [[alerting.rules]]
        name = "canary-errors"
        metric = "error_rate"
        variant = "canary"
        window = "1h"
        comparator = ">"
        threshold = 0.2
        "#,
        models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"),
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(vigil_monitor::run(store.clone(), config.clone(), grpc, http, async move {
        let _ = stopped.await;
    }));

    // Half the requests fail: the error-rate alarm fires at once; `busy` waits its 1 s. One
    // transaction, so that no evaluation sees the failures without the successes.
    store.insert_batch(&[rows(10, 3), rows(10, 1)].concat(), &[]).await.unwrap();
    let state = |key: &'static str| {
        let store = store.clone();
        async move { store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == key).map(|a| a.state) }
    };
    eventually("error-rate firing", || async {
        state("error-rate/scratch-detector").await.as_deref() == Some("firing")
    })
    .await;
    eventually("busy firing", || async { state("busy/scratch-detector").await.as_deref() == Some("firing") }).await;
    // No labels: accuracy has no data and never leaves inactive.
    assert_eq!(state("accuracy/scratch-detector").await, None);
    // Every failure was the primary's: the canary-scoped rule sees no traffic of its variant.
    assert_eq!(state("canary-errors/scratch-detector").await, None);

    // Mostly good requests now: error rate 10/200 = 5%, the alarm resolves, while the webhook is
    // still failing (evaluation does not wait for it).
    store.insert_batch(&rows(180, 1), &[]).await.unwrap();
    eventually("error-rate resolved", || async {
        state("error-rate/scratch-detector").await.as_deref() == Some("resolved")
    })
    .await;
    // Evaluation went on while the receiver refused everything; it opens only now, after a
    // 500, a timeout and a 503 were each retried.
    assert!(received.lock().is_empty());
    eventually("a 500, a timeout and a 503", || async { calls.load(Ordering::SeqCst) >= 3 }).await;
    open.store(true, Ordering::SeqCst);

    // Every notifiable transition arrives once, in order, after a 500 and a timeout.
    eventually("three notifications", || async { received.lock().len() >= 3 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<(String, String)> = received
        .lock()
        .iter()
        .map(|b| (b["rule"].as_str().unwrap().to_string(), b["state"].as_str().unwrap().to_string()))
        .collect();
    let error_rate: Vec<&str> = got.iter().filter(|(r, _)| r == "error-rate").map(|(_, s)| s.as_str()).collect();
    assert_eq!(error_rate, ["firing", "resolved"], "{got:?}");
    assert_eq!(got.iter().filter(|(r, s)| r == "busy" && s == "firing").count(), 1, "{got:?}");
    assert_eq!(got.len(), 3, "nothing twice: {got:?}");
    assert!(calls.load(Ordering::SeqCst) >= 5, "a 500 and a timeout were retried");
    assert!(store.unsent_alert_events(10).await.unwrap().is_empty());
    let history: Vec<String> =
        store.alert_history(100).await.unwrap().into_iter().map(|e| format!("{}:{}", e.rule, e.state)).collect();
    assert!(
        history.contains(&"busy:pending".to_string()) && history.contains(&"error-rate:resolved".to_string()),
        "{history:?}"
    );
    let first = received.lock()[0].clone();
    assert!(first["message"].as_str().unwrap().contains("error_rate = 0.5000 (> 0.2)"), "{first}");

    // ListAlerts: firing first; resolved only when asked.
    let mut client = MonitoringClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let open = client.list_alerts(ListAlertsRequest::default()).await.unwrap().into_inner().alerts;
    assert_eq!(open.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(), ["busy"]);
    let all =
        client.list_alerts(ListAlertsRequest { include_resolved: true, limit: 0 }).await.unwrap().into_inner().alerts;
    assert_eq!(all.iter().map(|a| a.state.as_str()).collect::<Vec<_>>(), ["firing", "resolved"]);

    let _ = stop.send(());
    monitor.await.unwrap().unwrap();

    // The busy rule made critical with a higher threshold it still passes: the firing alarm
    // shows the rule as it is now, with no transition and no one notified.
    let views = vigil_monitor::Views::new(store.clone(), Default::default(), Arc::new(config.clone()));
    let rules = config.rules().unwrap();
    let mut changed = rules.iter().find(|r| r.name == "busy").unwrap().clone();
    (changed.severity, changed.threshold) = ("critical".into(), 6.0);
    let evaluate = |rules: Vec<vigil_monitor::config::Rule>| {
        let views = &views;
        async move {
            vigil_monitor::alarms::evaluate_all(views, &rules, Utc::now(), &Default::default(), &mut Default::default())
                .await
                .unwrap()
        }
    };
    evaluate(vec![changed.clone()]).await;
    let busy = store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == "busy/scratch-detector").unwrap();
    assert_eq!((busy.state.as_str(), busy.severity.as_str(), busy.threshold), ("firing", "critical", 6.0));
    assert!(store.unsent_alert_events(10).await.unwrap().is_empty(), "a rule change notifies no one");
    // The rule now watches another model: this model's alarm ends instead of firing for good.
    evaluate(vec![vigil_monitor::config::Rule { model: Some("other".into()), ..changed }]).await;
    let busy = store.load_alerts().await.unwrap().into_iter().find(|a| a.alert_key == "busy/scratch-detector").unwrap();
    assert_eq!(busy.state, "resolved");
    assert!(busy.message.contains("no longer configured for scratch-detector"), "{}", busy.message);

    // A rule taken out of the configuration ends its alarm instead of leaving it firing.
    store.insert_batch(&rows(100, 3), &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[1, 60], 100_000).await.unwrap() > 0 {}
    evaluate(rules).await;
    assert_eq!(state("error-rate/scratch-detector").await.as_deref(), Some("firing"));
    evaluate(vec![]).await;
    assert_eq!(state("error-rate/scratch-detector").await.as_deref(), Some("resolved"));
}

/// A webhook receiver that accepts everything and keeps (rule, state) of each call.
async fn counting_webhook() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let r = r.clone();
            async move {
                let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
                r.lock().push((field("rule"), field("state")));
                StatusCode::OK
            }
        }),
    );
    let url = serve_hook(app).await;
    (url, received)
}

/// A running monitor: stop it with `stop`; `/metrics` on `http`.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: std::net::SocketAddr,
}

impl Running {
    /// This monitor's `vigil_monitor_alerting_leader` gauge.
    async fn leading(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http)).await.unwrap().text().await.unwrap();
        vigil_telemetry::sample(&text, "vigil_monitor_alerting_leader", &[]).expect("leader gauge")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A monitor on `store` with one error-rate rule.
fn start_monitor(store: &PgStore, webhook: &str) -> Running {
    let config: MonitorConfig = toml::from_str(&format!(
        r#"
        models = "{models}"
        [rollups]
        resolutions = [1, 60]
        poll = "100ms"
        [alerting]
        evaluate_every = "200ms"
        webhook_url = "{webhook}"
        [[alerting.rules]]
        name = "error-rate"
        metric = "error_rate"
        window = "1h"
        comparator = ">"
        threshold = 0.2
        "#,
        models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"),
    ))
    .unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    grpc.set_nonblocking(true).unwrap();
    http.set_nonblocking(true).unwrap();
    let addr = http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(vigil_monitor::run(
        store.clone(),
        config,
        tokio::net::TcpListener::from_std(grpc).unwrap(),
        tokio::net::TcpListener::from_std(http).unwrap(),
        async move {
            let _ = stopped.await;
        },
    ));
    Running { stop, task, http: addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_on_one_database_notify_once_and_the_second_takes_over() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    let (url, received) = counting_webhook().await;
    let first = start_monitor(&store, &url);
    eventually("the first monitor leads", || async { first.leading().await == 1.0 }).await;
    let second = start_monitor(&store, &url);
    let state = || {
        let store = store.clone();
        async move {
            store
                .load_alerts()
                .await
                .unwrap()
                .into_iter()
                .find(|a| a.alert_key == "error-rate/scratch-detector")
                .map(|a| a.state)
        }
    };

    // Both monitors run, both see the failing requests: one of them fires, once.
    store.insert_batch(&rows(10, 3), &[]).await.unwrap();
    eventually("error-rate firing", || async { state().await.as_deref() == Some("firing") }).await;
    eventually("the firing notified", || async { !received.lock().is_empty() }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((first.leading().await, second.leading().await), (1.0, 0.0), "the first started leads");

    // The leader stops; the second takes over and resolves.
    first.stop().await;
    store.insert_batch(&rows(190, 1), &[]).await.unwrap();
    eventually("error-rate resolved by the second monitor", || async { state().await.as_deref() == Some("resolved") })
        .await;
    eventually("the resolution notified", || async { received.lock().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(second.leading().await, 1.0);
    second.stop().await;

    let got = received.lock().clone();
    let want = [("error-rate".to_string(), "firing".to_string()), ("error-rate".to_string(), "resolved".to_string())];
    assert_eq!(got, want, "each transition notified once, by one monitor");
    let history: Vec<String> = store.alert_history(100).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, ["resolved", "firing"], "each transition stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_refused_for_good_is_given_up_and_the_next_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    refused_for_good(store).await;
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    refused_for_good(store).await;
}

async fn refused_for_good<S: MonitorStore>(store: S) {
    // The receiver refuses anything about the alarm "broken" (a payload it cannot take), forever.
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let r = r.clone();
            async move {
                if body["rule"] == "broken" {
                    return StatusCode::BAD_REQUEST;
                }
                r.lock().push(body["rule"].as_str().unwrap_or_default().to_string());
                StatusCode::OK
            }
        }),
    );
    let url = serve_hook(app).await;
    let alert = |rule: &str| vigil_store::monitoring::AlertRow {
        alert_key: format!("{rule}/m"),
        rule: rule.into(),
        model_name: "m".into(),
        metric: "error_rate".into(),
        severity: "warning".into(),
        state: "firing".into(),
        value: Some(1.0),
        threshold: 0.5,
        since: Utc::now(),
        message: format!("{rule} firing"),
    };
    store.save_alert(&alert("broken"), true).await.unwrap();
    store.save_alert(&alert("fine"), true).await.unwrap();

    let hook = vigil_monitor::notify::Webhook {
        url,
        timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(50),
        max_attempts: 3,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (_leading_tx, leading) = tokio::sync::watch::channel(true);
    let notifier = tokio::spawn(vigil_monitor::notify::run(store.clone(), hook, Default::default(), leading, stopped));
    eventually("the later notification delivered", || async { received.lock().len() == 1 }).await;
    let _ = stop.send(true);
    notifier.await.unwrap();

    assert_eq!(*received.lock(), ["fine"], "the refused one never arrived; the next one did");
    assert!(store.unsent_alert_events(10).await.unwrap().is_empty(), "nothing left waiting");
    let history = store.alert_history(10).await.unwrap();
    let broken = history.iter().find(|e| e.rule == "broken").expect("kept in the history");
    assert_eq!(broken.attempts, 3, "tried max_attempts times, then given up");
    assert_eq!(history.iter().find(|e| e.rule == "fine").unwrap().attempts, 1);
}

#[test]
fn rule_files_with_mistakes_are_refused_naming_the_rule() {
    let load = |rule: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.toml");
        std::fs::write(&path, format!("[[alerting.rules]]\nname = \"r1\"\n{rule}")).unwrap();
        MonitorConfig::load(&path).unwrap_err().to_string()
    };
    let base = "window = \"5m\"\ncomparator = \">\"\nthreshold = 1\n";
    let e = load(&format!("metric = \"latency_p95\"\n{base}"));
    assert!(e.contains("alarm rule 'r1'") && e.contains("unknown metric 'latency_p95'"), "{e}");
    let e = load("metric = \"error_rate\"\nwindow = \"5m\"\ncomparator = \"=>\"\nthreshold = 1\n");
    assert!(e.contains("unknown comparator '=>'"), "{e}");
    let e = load("metric = \"error_rate\"\nwindow = \"five minutes\"\ncomparator = \">\"\nthreshold = 1\n");
    assert!(e.contains("is not a duration"), "{e}");
    let e = load(&format!("metric = \"error_rate\"\nvariant = \"blue\"\n{base}"));
    assert!(e.contains("variant 'blue' is not primary, canary or shadow"), "{e}");
    let e = load(&format!("metric = \"error_rate\"\nseverity = \"panic\"\n{base}"));
    assert!(e.contains("severity 'panic'"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.toml");
    std::fs::write(&path, "[rollups]\nresolutions = [60, 90]\n").unwrap();
    let e = MonitorConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("each a multiple of the one before"), "{e}");
    let e = load(&format!("metric = \"error_rate\"\nthreshhold = 2\n{base}"));
    assert!(e.contains("unknown field `threshhold`"), "{e}");
    std::fs::write(&path, "[alerting]\nwebhook_max_attempts = 0\n").unwrap();
    let e = MonitorConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("webhook_max_attempts must be at least 1"), "{e}");
    let drift = "metric = \"drift.pitch_hz.detected\"\ncomparator = \">=\"\nthreshold = 1\n";
    let e = load(&format!("{drift}window = \"2h\"\nbaseline_offset = \"1h\"\n"));
    assert!(e.contains("baseline_offset 1h is shorter than the window 2h"), "{e}");
    let e = load(&format!(
        "{drift}window = \"1h\"\nbaseline_offset = \"1d\"\nbaseline_since = \"2026-01-01T00:00:00Z\"\n\
         baseline_until = \"2026-01-02T00:00:00Z\"\n"
    ));
    assert!(e.contains("not both"), "{e}");
    let e = load(&format!("{drift}window = \"1h\"\nbaseline_offset = \"yesterday\"\n"));
    assert!(e.contains("'yesterday' is not a duration"), "{e}");
}

/// A rule with the `capture` action raises its model's capture rate while it fires (the servers
/// get it in the model's deployment), ends it when it resolves, and when the rule leaves the
/// configuration; a rule asking for a capture rate without the action is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alarm_raises_the_capture_rate_the_servers_get_until_it_resolves() {
    use vigil_store::{CaptureBoostStore, DeploymentStore, RegistryStore};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    let rule = |extra: &str| {
        format!(
            "[rollups]\nresolutions = [1, 60]\n[[alerting.rules]]\nname = \"dim-light\"\nmetric = \"requests\"\n\
             model = \"scratch-detector\"\nwindow = \"10m\"\ncomparator = \">\"\nthreshold = 5\n{extra}"
        )
    };
    let config: MonitorConfig = toml::from_str(&rule("actions = [\"capture\"]\ncapture_rate = 0.5\n")).unwrap();
    let rules = config.rules().unwrap();
    let bad: MonitorConfig = toml::from_str(&rule("capture_rate = 0.5\n")).unwrap();
    assert!(bad.rules().unwrap_err().to_string().contains("capture_rate goes with the capture action"));
    let bad: MonitorConfig = toml::from_str(&rule("actions = [\"capture\"]\n")).unwrap();
    assert!(bad.rules().unwrap_err().to_string().contains("needs capture_rate in (0, 1]"));
    let now = Utc::now();
    let rows: Vec<PredictionRow> =
        (0..10).map(|_| prediction(now - chrono::Duration::minutes(1), 0.2, serde_json::json!({}))).collect();
    store.insert_batch(&rows, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[1, 60], 100_000).await.unwrap() > 0 {}
    store
        .register_version(&vigil_store::testing::candidate_version("scratch-detector", "1", &"a".repeat(64)), "")
        .await
        .unwrap();
    let by = vigil_store::Change { actor: "ben", reason: "", at: now };
    store.set_deployment(&vigil_store::testing::single_deployment("scratch-detector", "d1", "1"), &by).await.unwrap();
    let views = vigil_monitor::Views::new(store.clone(), Default::default(), Arc::new(config));
    let spec_rate = || {
        let store = store.clone();
        async move { vigil_server::control::snapshot_from_store(&store).await.unwrap().deployments[0].capture_rate }
    };
    assert_eq!(spec_rate().await, 0.0);

    vigil_monitor::alarms::evaluate_all(&views, &rules, now, &Default::default(), &mut Default::default())
        .await
        .unwrap();
    let boosts = store.capture_boosts().await.unwrap();
    assert_eq!(boosts.iter().map(|b| (b.rule.as_str(), b.rate)).collect::<Vec<_>>(), [("dim-light", 0.5)]);
    assert_eq!(spec_rate().await, 0.5, "the servers get the raised rate with the deployment");
    // A raise lost after its alarm's change was saved (the monitor stopped between the two) is
    // made again while the alarm fires, though its state does not change.
    assert!(store.end_capture_boost("scratch-detector", "dim-light").await.unwrap());
    vigil_monitor::alarms::evaluate_all(&views, &rules, now, &Default::default(), &mut Default::default())
        .await
        .unwrap();
    assert_eq!(store.capture_boosts().await.unwrap().len(), 1, "raised again while firing");
    assert_eq!(spec_rate().await, 0.5);
    // Later the window holds nothing: resolved, and the rate is the servers' own again.
    vigil_monitor::alarms::evaluate_all(
        &views,
        &rules,
        now + chrono::Duration::hours(1),
        &Default::default(),
        &mut Default::default(),
    )
    .await
    .unwrap();
    assert!(store.capture_boosts().await.unwrap().is_empty());
    assert_eq!(spec_rate().await, 0.0);
    // Firing again, then the rule is taken out of the configuration: the raise ends with it.
    vigil_monitor::alarms::evaluate_all(&views, &rules, now, &Default::default(), &mut Default::default())
        .await
        .unwrap();
    assert_eq!(store.capture_boosts().await.unwrap().len(), 1);
    vigil_monitor::alarms::evaluate_all(&views, &[], now, &Default::default(), &mut Default::default()).await.unwrap();
    assert!(store.capture_boosts().await.unwrap().is_empty());
}

/// Labels arrive late (inspectors label a shift's parts the next morning): an accuracy rule over
/// the last hour sees none, while one with `label_delay` judges the hour that far back, where
/// the labels are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_delay_judges_the_window_whose_labels_have_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    let now = Utc::now();
    // 20 predictions three hours ago, labelled since: 15 of them otherwise than predicted.
    let rows: Vec<PredictionRow> =
        (0..20).map(|i| prediction(now - chrono::Duration::minutes(180 - i), 0.1, serde_json::json!({}))).collect();
    let predicted = rows[0].output["label"].as_str().unwrap().to_string();
    let labels: Vec<vigil_store::LabelRow> = rows
        .iter()
        .enumerate()
        .map(|(i, p)| vigil_store::LabelRow {
            label_id: uuid::Uuid::now_v7(),
            prediction_id: p.prediction_id,
            label: if i < 5 { predicted.clone() } else { format!("not-{predicted}") },
            time: now,
            source: "inspector".into(),
        })
        .collect();
    store.insert_batch(&rows, &labels).await.unwrap();
    let config = |delay: &str| -> MonitorConfig {
        toml::from_str(&format!(
            "[[alerting.rules]]\nname = \"accuracy\"\nmetric = \"accuracy\"\nwindow = \"1h\"\ncomparator = \"<\"\n\
             threshold = 0.9\n{delay}"
        ))
        .unwrap()
    };
    let value = |config: MonitorConfig| {
        let store = store.clone();
        async move {
            let rule = config.rules().unwrap().remove(0);
            let views = vigil_monitor::Views::new(store, Default::default(), Arc::new(config));
            vigil_monitor::alarms::evaluate(&views, &rule, "scratch-detector", now).await.unwrap()
        }
    };
    assert_eq!(value(config("")).await, None, "no prediction of the last hour is labelled");
    assert_eq!(value(config("label_delay = \"150m\"")).await, Some(0.25), "5 of 20 right, 2.5 to 3.5 hours ago");
    // Only label metrics take a delay.
    let mut wrong = config("label_delay = \"1d\"");
    wrong.alerting.rules[0].metric = "error_rate".into();
    let e = wrong.rules().unwrap_err().to_string();
    assert!(e.contains("label_delay is for label metrics"), "{e}");
}

/// Precision and recall over a rule's window pool the counts of every rollup window in it. A
/// window of ten labelled items with one false alarm and one miss, and a window of two hits:
/// precision and recall are 2/3 each, where averaging the windows' ratios by items labelled
/// would give (0 x 10 + 1 x 2) / 12 = 1/6. Label coverage divides the items labelled by the
/// requests in the same whole windows: every item is labelled, one of them in the first minute
/// window's part before the rule's window starts, and coverage is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_recall_and_coverage_pool_the_counts_of_their_windows() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    // Half a minute into a minute window, so that the rule's 10 minutes start mid-window.
    let now = vigil_monitor::rollup::window_start(Utc::now(), 60) + chrono::Duration::seconds(30);
    let at = |seconds_ago: i64| now - chrono::Duration::seconds(seconds_ago);
    // (score: defect predicted at 0.5 and above, label, seconds ago)
    let mut items = vec![(0.9, "ok", 300), (0.1, "defect", 300)];
    items.extend(std::iter::repeat_n((0.1, "ok", 300), 8));
    items.extend([(0.9, "defect", 180), (0.9, "defect", 180), (0.1, "ok", 610)]);
    let rows: Vec<PredictionRow> =
        items.iter().map(|&(score, _, ago)| prediction(at(ago), score, serde_json::json!({}))).collect();
    let labels: Vec<vigil_store::LabelRow> = rows
        .iter()
        .zip(&items)
        .map(|(p, &(_, label, _))| vigil_store::LabelRow {
            label_id: uuid::Uuid::now_v7(),
            prediction_id: p.prediction_id,
            label: label.into(),
            time: now,
            source: "inspector".into(),
        })
        .collect();
    store.insert_batch(&rows, &labels).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[60], 100_000).await.unwrap() > 0 {}
    let catalog = vigil_monitor::catalog::Catalog::from_models(vec![vigil_monitor::catalog::ModelInfo {
        name: "scratch-detector".into(),
        version: "1".into(),
        labels: vec!["ok".into(), "defect".into()],
        reference: None,
    }]);
    for (metric, expected) in [("precision", 2.0 / 3.0), ("recall", 2.0 / 3.0), ("label_coverage", 1.0)] {
        let config: MonitorConfig = toml::from_str(&format!(
            "[rollups]\nresolutions = [60]\n[[alerting.rules]]\nname = \"{metric}\"\nmetric = \"{metric}\"\n\
             window = \"10m\"\ncomparator = \"<\"\nthreshold = 0.5\n"
        ))
        .unwrap();
        let rule = config.rules().unwrap().remove(0);
        let views = vigil_monitor::Views::new(store.clone(), Arc::new(catalog.clone()), Arc::new(config));
        let value = vigil_monitor::alarms::evaluate(&views, &rule, "scratch-detector", now).await.unwrap();
        let value = value.unwrap_or_else(|| panic!("{metric}: no value"));
        assert!((value - expected).abs() < 1e-9, "{metric} = {value}, not {expected}");
    }
}

/// A round with a time budget stops starting evaluations once it has passed (after its first)
/// and the next round goes on from there: a configuration too large for one round is evaluated
/// over several, every rule in turn, instead of the same rules every round and never the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_its_budget_leaves_the_rest_to_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    PredictionStore::migrate(&store).await.unwrap();
    let config_of = |names: &[&str]| {
        let mut text = String::from("[rollups]\nresolutions = [1, 60]\n");
        for name in names {
            text += &format!(
                "[[alerting.rules]]\nname = \"{name}\"\nmetric = \"requests\"\nmodel = \"scratch-detector\"\n\
                 window = \"10m\"\ncomparator = \">\"\nthreshold = 5\n"
            );
        }
        toml::from_str::<MonitorConfig>(&text).unwrap()
    };
    let config = config_of(&["a", "b", "c"]);
    let rules = config.rules().unwrap();
    let now = Utc::now();
    let rows: Vec<PredictionRow> =
        (0..10).map(|_| prediction(now - chrono::Duration::minutes(1), 0.2, serde_json::json!({}))).collect();
    store.insert_batch(&rows, &[]).await.unwrap();
    while vigil_monitor::rollup::step(&store, &[1, 60], 100_000).await.unwrap() > 0 {}
    let views = vigil_monitor::Views::new(store.clone(), Default::default(), Arc::new(config));
    let firing = || {
        let store = store.clone();
        async move {
            let mut names: Vec<String> = store
                .load_alerts()
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.state == "firing")
                .map(|a| a.rule)
                .collect();
            names.sort();
            names
        }
    };
    // A budget every evaluation is over: one rule a round, each in turn.
    let mut rounds = vigil_monitor::alarms::Rounds::with_budget(Duration::ZERO);
    let mut seen = Vec::new();
    for _ in 0..3 {
        vigil_monitor::alarms::evaluate_all(&views, &rules, now, &Default::default(), &mut rounds).await.unwrap();
        seen.push(firing().await);
    }
    assert_eq!(seen, [vec!["a"], vec!["a", "b"], vec!["a", "b", "c"]]);
    // Then round again from the first: the window empties an hour on, one resolution a round.
    let later = now + chrono::Duration::hours(1);
    vigil_monitor::alarms::evaluate_all(&views, &rules, later, &Default::default(), &mut rounds).await.unwrap();
    assert_eq!(firing().await, ["b", "c"]);
    // The next round goes on from the rule it stopped at, not from its place: with a rule added
    // before it, b is next (by place, a would be evaluated again and b wait).
    let grown = config_of(&["new", "a", "b", "c"]).rules().unwrap();
    vigil_monitor::alarms::evaluate_all(&views, &grown, later, &Default::default(), &mut rounds).await.unwrap();
    assert_eq!(firing().await, ["c"]);
    // Without a budget, every rule every round.
    vigil_monitor::alarms::evaluate_all(&views, &rules, later, &Default::default(), &mut Default::default())
        .await
        .unwrap();
    assert!(firing().await.is_empty());
}
