//! Real components for the logging tests: an Apache Kafka broker (KRaft) on free loopback
//! ports, a fresh Postgres database per test (or a server of the test's own), loggers in
//! process, and a /metrics scraper.

#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use vigil_testkit::{KafkaBroker as Broker, PostgresServer};

/// A fresh Postgres database per test, dropped at the end.
pub type Database = vigil_store::testing::TestDatabase;

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logger settings with small quick batches.
pub fn quick_config(brokers: String, database_url: String) -> vigil_logger::LoggerConfig {
    let mut config = vigil_logger::LoggerConfig::new(brokers, database_url);
    config.batch.max_records = 500;
    config.batch.max_wait_ms = 100;
    config
}

/// A logger running in this process until the returned sender fires.
pub struct RunningLogger {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Its counters.
    pub stats: std::sync::Arc<vigil_logger::LoggerStats>,
}

impl RunningLogger {
    /// Starts `vigil_logger::run` with `config`.
    pub fn start(config: vigil_logger::LoggerConfig) -> RunningLogger {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let stats = std::sync::Arc::new(vigil_logger::LoggerStats::default());
        let task = tokio::spawn(vigil_logger::run(config, stats.clone(), async move {
            let _ = rx.await;
        }));
        RunningLogger { stop, task, stats }
    }

    /// A logger on `brokers` writing to `database_url`, with small quick batches.
    pub fn quick(brokers: String, database_url: String) -> RunningLogger {
        Self::start(quick_config(brokers, database_url))
    }

    /// Asks it to finish its batch and stop; fails the test if it failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("logger task").expect("logger ran without error");
    }
}

/// `GET /metrics` over plain HTTP/1.1 (blocking): the body.
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The sum of the samples of `name` whose labels include `labels`; None when there is none.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    vigil_telemetry::sample(text, name, labels)
}

/// Renders a page in headless Chromium; returns the DOM after the scripts ran, and leaves a
/// screenshot at `screenshot`.
pub fn render_page(url: &str, screenshot: &std::path::Path) -> String {
    let chromium = std::env::var("VIGIL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "headless Chromium not found at {chromium}: install Debian's chromium (./dev setup does) or set VIGIL_CHROMIUM"
    );
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let out = std::process::Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,3000"])
            .arg("--virtual-time-budget=10000")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    run(&[format!("--screenshot={}", screenshot.display())]);
    run(&["--dump-dom".to_string()])
}

/// A typical inspection's prediction record (five input features, one score), for the
/// benchmarks; `i` varies its station and features.
pub fn bench_record(i: usize) -> vigil_proto::vigil::v1::PredictionRecord {
    use vigil_proto::vigil::v1::{Feature, PredictionOutput, PredictionRecord};
    PredictionRecord {
        schema_version: 1,
        prediction_id: uuid::Uuid::now_v7().to_string(),
        response_time: Some(std::time::SystemTime::now().into()),
        station_id: format!("line-{}", i % 12),
        model_name: "scratch-detector".into(),
        model_version: "1".into(),
        status: 1,
        api: "inspect".into(),
        features: ["brightness", "contrast", "sharpness", "width", "height"]
            .iter()
            .enumerate()
            .map(|(k, n)| Feature { name: n.to_string(), value: (i * 7 + k) as f64 / 3.0, ..Default::default() })
            .collect(),
        output: Some(PredictionOutput { label: "ok".into(), scores: vec![0.01], ..Default::default() }),
        decision: 1,
        queue_time_us: 120,
        compute_time_us: 900,
        ..Default::default()
    }
}

/// Triggers librdkafka's fatal error on `producer`, as a broker that lost acknowledged records
/// would.
pub fn strike_fatal(producer: &rdkafka::producer::FutureProducer) {
    use rdkafka::producer::Producer as _;
    let reason = c"broker lost acknowledged records";
    // SAFETY: a live producer handle and a NUL-terminated string; librdkafka's own test hook.
    unsafe {
        use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
        let code = rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
        rd_kafka_test_fatal_error(producer.client().native_ptr(), code, reason.as_ptr());
    }
    assert!(producer.client().fatal_error().is_some());
}

/// A consumer in group `group` reading `topic` from its first record, committing nothing.
pub fn reader(brokers: &str, group: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}
