//! Predictions through vigil-edge → Kafka (a real broker) → vigil-logger → Postgres, and the
//! logger's /metrics.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;
use uuid::Uuid;
use vigil_logbus::topics;
use vigil_logger::LoggerStats;
use vigil_proto::vigil::v1::QueryPredictionsRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::prediction_log_client::PredictionLogClient;
use vigil_proto::vigil::v1::{FeedbackEvent, InspectRequest, PredictionOutput, PredictionRecord};
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn sample_images() -> Vec<Vec<u8>> {
    let mut files: Vec<_> =
        std::fs::read_dir(repo_root().join("samples/normal")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A `vigil-logger` process with its metrics on a free port.
pub struct LoggerProcess {
    pub child: std::process::Child,
    pub metrics: SocketAddr,
}

impl LoggerProcess {
    /// Starts the binary with `args` (plus `--metrics-listen 127.0.0.1:0`) and `env`, and
    /// reads the metrics address from its first line.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> LoggerProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-logger"))
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let metrics = line
            .split_once("(metrics on http://")
            .and_then(|(_, rest)| rest.split_once("/metrics)"))
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
            .0
            .parse()
            .unwrap();
        LoggerProcess { child, metrics }
    }

    /// `vigil_logger_records_total` of `topic` with `outcome` (0 when absent).
    pub fn records(&self, topic: &str, outcome: &str) -> f64 {
        sample(&scrape(self.metrics), "vigil_logger_records_total", &[("topic", topic), ("outcome", outcome)])
            .unwrap_or(0.0)
    }

    /// SIGTERM, then waits; fails the test unless it exits cleanly.
    pub fn terminate(mut self) {
        std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(self.child.wait().unwrap().success());
    }

    /// SIGKILL: no graceful commit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn record(i: usize) -> PredictionRecord {
    PredictionRecord {
        schema_version: 1,
        prediction_id: Uuid::now_v7().to_string(),
        response_time: Some(SystemTime::now().into()),
        station_id: format!("station-{}", i % 7),
        model_name: "scratch-detector".into(),
        model_version: "1".into(),
        status: 1,
        output: Some(PredictionOutput {
            label: "ok".into(),
            scores: vec![(i % 100) as f32 / 100.0],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_prediction_lands_once_with_its_features_and_outputs() {
    let broker = Broker::start(3).await;
    let db = Database::create();
    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    edge.logging.enabled = true;
    edge.logging.kafka = broker.kafka();
    let server = vigil_edge::start(edge, false).await.unwrap();
    let logger = RunningLogger::quick(broker.brokers(), db.url());

    let client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let images = sample_images();
    const N: usize = 300;
    let answers: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let mut c = client.clone();
            let image = images[i % images.len()].clone();
            async move {
                let request = InspectRequest {
                    image,
                    station_id: format!("line-{}", i % 3),
                    part_id: format!("part-{i}"),
                    ..Default::default()
                };
                c.inspect(request).await.unwrap().into_inner()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    // Refused inputs are logged too (as missing input, status INVALID_INPUT).
    let mut c = client.clone();
    for _ in 0..5 {
        c.inspect(InspectRequest {
            image: b"not an image".to_vec(),
            station_id: "line-9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    }

    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(90), "all records in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= (N + 5) as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.count_predictions().await.unwrap(), (N + 5) as i64, "nothing stored beside the answers");
    // The primary key keeps a row from being stored twice: doubles show in the topic and in
    // the logger's counters instead. The server sent each record once, and the logger inserted
    // each once, every other read counted as a repeat.
    assert_eq!(broker.message_count(topics::PREDICTIONS), (N + 5) as i64, "each record sent once");
    let stats = logger.stats.clone();
    eventually(Duration::from_secs(30), "the logger's counters", || {
        std::future::ready(LoggerStats::get(&stats.consumed) >= (N + 5) as u64)
    })
    .await;
    assert_eq!(LoggerStats::get(&stats.inserted_predictions), (N + 5) as u64, "each record inserted once");
    assert_eq!(LoggerStats::get(&stats.consumed), (N + 5) as u64 + LoggerStats::get(&stats.duplicates));
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    for a in &answers {
        let id = Uuid::parse_str(&a.prediction_id).unwrap();
        assert!(stored.contains(&id), "{id} missing");
        let (features, output, score, station) = store.prediction(id).await.unwrap().unwrap();
        let f = a.features.as_ref().unwrap();
        // jsonb keeps numbers as decimals: equal to the last bit or two.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        assert!(close(features["brightness"].as_f64().unwrap(), f.brightness));
        assert!(close(features["contrast"].as_f64().unwrap(), f.contrast));
        assert!(close(features["sharpness"].as_f64().unwrap(), f.sharpness));
        assert_eq!(score, Some(a.defect_probability));
        assert_eq!(output["scores"][0].as_f64().unwrap() as f32, a.defect_probability);
        assert_eq!(station, a.station_id);
    }
    let invalid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM predictions WHERE status = 2 AND features->'image' = 'null'::jsonb AND output_null",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(invalid, 5);
    // The same predictions through the analyst API (vigil-monitor's QueryPredictions).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor_addr = listener.local_addr().unwrap();
    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(vigil_monitor::serve(listener, store.clone(), async move {
        let _ = monitor_stopped.await;
    }));
    let mut analyst = PredictionLogClient::connect(format!("http://{monitor_addr}")).await.unwrap();
    let mut queried = HashSet::new();
    let mut token = String::new();
    loop {
        let page = analyst
            .query_predictions(QueryPredictionsRequest {
                page_size: 128,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        queried.extend(page.predictions.iter().map(|p| Uuid::parse_str(&p.prediction_id).unwrap()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(queried, stored);
    stop_monitor.send(()).unwrap();
    monitor.await.unwrap().unwrap();

    // Delivery reports can trail the logger's inserts by a moment.
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    assert!(emitter.drain(Duration::from_secs(30)).await);
    let (emitted, delivered, failed, dropped) = emitter.stats().snapshot();
    assert_eq!((emitted, delivered, failed, dropped), ((N + 5) as u64, (N + 5) as u64, 0, 0));

    logger.stop().await;
    server.shutdown().await.unwrap();
}

/// The first `n` messages of the dead-letter topic, by their `vigil-source` header: each
/// message's `vigil-reason` header and payload.
async fn dead_letters(brokers: &str, n: usize) -> HashMap<String, (String, Vec<u8>)> {
    let consumer = reader(brokers, "dead-letter-reader", topics::DEAD_LETTER);
    let mut found = HashMap::new();
    while found.len() < n {
        let m =
            tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("dead letters arrive").unwrap();
        let headers = m.headers().unwrap();
        let header = |key: &str| {
            headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
        };
        found.insert(header("vigil-source").unwrap(), (header("vigil-reason").unwrap(), m.payload().unwrap().to_vec()));
    }
    found
}

/// A row the database refuses for a reason the logger's own checks do not know (here a
/// constraint added to the table) is found within its batch and dead-lettered with the
/// database's reason; the rest of the batch, and every batch after it, is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_the_database_refuses_is_dead_lettered_and_its_batch_stored() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    sqlx::query("ALTER TABLE predictions ADD CONSTRAINT no_quarantined_station CHECK (station_id <> 'quarantined')")
        .execute(&pool)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    let mut good = Vec::new();
    // 40 records on one partition (one key), two of them refused, in batches of up to 500.
    for i in 0..40 {
        let mut r = record(i);
        if i == 7 || i == 23 {
            r.station_id = "quarantined".into();
        } else {
            good.push(r.prediction_id.clone());
        }
        let payload = r.encode_to_vec();
        producer
            .send(FutureRecord::to(topics::PREDICTIONS).key("k").payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let stats = Arc::new(LoggerStats::default());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let logger = tokio::spawn(vigil_logger::run(quick_config(broker.brokers(), db.url()), stats.clone(), async move {
        let _ = rx.await;
    }));
    eventually(Duration::from_secs(60), "the other 38 stored", || async {
        store.count_predictions().await.unwrap_or(0) == 38
    })
    .await;
    let mut stored: Vec<String> = store.prediction_ids().await.unwrap().iter().map(Uuid::to_string).collect();
    stored.sort();
    good.sort();
    assert_eq!(stored, good);
    eventually(Duration::from_secs(30), "all 40 handled", || {
        std::future::ready(LoggerStats::get(&stats.consumed) >= 40)
    })
    .await;

    let refused = dead_letters(&broker.brokers(), 2).await;
    for (reason, payload) in refused.values() {
        assert!(reason.starts_with("the database refused it") && reason.contains("no_quarantined_station"), "{reason}");
        let record = PredictionRecord::decode(payload.as_slice()).unwrap();
        assert_eq!(record.station_id, "quarantined", "the refused record's own bytes");
    }
    let mut sources: Vec<String> = refused.into_keys().collect();
    sources.sort();
    assert_eq!(sources, [format!("{}/0/23", topics::PREDICTIONS), format!("{}/0/7", topics::PREDICTIONS)]);
    assert_eq!(LoggerStats::get(&stats.dead_lettered), 2);
    assert_eq!(LoggerStats::get(&stats.inserted_predictions), 38);
    assert_eq!(LoggerStats::get(&stats.duplicates), 0, "a refused row is not a duplicate");
    stop.send(()).unwrap();
    logger.await.unwrap().unwrap();
}

/// Sends `payload` to the predictions topic as a server would, waiting for the broker to take it.
async fn send_prediction(producer: &FutureProducer, payload: Vec<u8>) {
    producer
        .send(FutureRecord::to(topics::PREDICTIONS).key("k").payload(&payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_future_schemas_are_dead_lettered_and_the_rest_flows() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    let send = |payload: Vec<u8>| send_prediction(&producer, payload);
    let good: Vec<PredictionRecord> = (0..10).map(record).collect();
    send(good[0].encode_to_vec()).await;
    send(vec![0xde, 0xad, 0xbe, 0xef, 0xff]).await;
    send(PredictionRecord { schema_version: 2, ..record(99) }.encode_to_vec()).await;
    // Decodable, but Postgres would refuse the batch that holds them, again and again: a NUL in
    // text, a time before 4713 BC.
    send(PredictionRecord { station_id: "line\0-3".into(), ..record(98) }.encode_to_vec()).await;
    let ancient = prost_types::Timestamp { seconds: -300_000_000_000, nanos: 0 };
    send(PredictionRecord { response_time: Some(ancient), ..record(97) }.encode_to_vec()).await;
    for r in &good[1..] {
        send(r.encode_to_vec()).await;
    }
    // A burst of records no server should have sent (wire type 7 in the first tag): each is
    // dead-lettered, and the burst does not hold the logger a round trip per record.
    let burst = 300u16;
    futures::future::join_all((0..burst).map(|i| send([&[0xff, 0xfe][..], &i.to_le_bytes()].concat()))).await;
    // Feedback flows into its table the same way.
    for kind in ["override", "click"] {
        let event = FeedbackEvent {
            schema_version: 1,
            event_id: Uuid::now_v7().to_string(),
            prediction_id: good[0].prediction_id.clone(),
            time: Some(SystemTime::now().into()),
            kind: kind.into(),
            ..Default::default()
        };
        let payload = event.encode_to_vec();
        producer
            .send(FutureRecord::to(topics::FEEDBACK).key("k").payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let stats = Arc::new(LoggerStats::default());
    let config = quick_config(broker.brokers(), db.url());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let logger = tokio::spawn(vigil_logger::run(config, stats.clone(), async move {
        let _ = rx.await;
    }));
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "valid records", || async {
        store.count_predictions().await.unwrap_or(0) == 10
    })
    .await;

    let total = 10 + 4 + u64::from(burst) + 2;
    eventually(Duration::from_secs(60), "every record handled", || {
        std::future::ready(LoggerStats::get(&stats.consumed) >= total)
    })
    .await;
    let reasons = dead_letters(&broker.brokers(), 4 + usize::from(burst)).await;
    let (reason, payload) = &reasons[&format!("{}/0/1", topics::PREDICTIONS)];
    assert!(reason.starts_with("not a PredictionRecord"), "{reason}");
    assert_eq!(payload, &vec![0xde, 0xad, 0xbe, 0xef, 0xff]);
    let (reason, _) = &reasons[&format!("{}/0/2", topics::PREDICTIONS)];
    assert!(reason.contains("schema version 2 is not supported"), "{reason}");
    let (reason, _) = &reasons[&format!("{}/0/3", topics::PREDICTIONS)];
    assert_eq!(reason, "station_id is invalid: holds a NUL character at byte 4");
    let (reason, _) = &reasons[&format!("{}/0/4", topics::PREDICTIONS)];
    assert_eq!(reason, "response_time is invalid: missing or out of range");
    let burst_reasons = reasons
        .values()
        .filter(|(reason, payload)| payload.starts_with(&[0xff, 0xfe]) && reason.starts_with("not a PredictionRecord"));
    assert_eq!(burst_reasons.count(), usize::from(burst), "each record of the burst kept once, with its bytes");
    assert_eq!(LoggerStats::get(&stats.dead_lettered), 4 + u64::from(burst));
    stop.send(()).unwrap();
    logger.await.unwrap().unwrap();
}

/// A record just under the producer's size limit that cannot be decoded: its dead letter, with
/// the reason and source headers, is over the limit, and the dead-letter topic can never take
/// it. It goes to the database's `dead_letters` table instead, and the records after it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_the_topic_refuses_for_good_is_kept_in_the_database_and_holds_nothing_back() {
    const SIZE: usize = 999_950; // librdkafka's message.max.bytes is 1,000,000
    let broker = Broker::start(1).await;
    let db = Database::create();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    let send = |payload: Vec<u8>| send_prediction(&producer, payload);
    let good: Vec<PredictionRecord> = (0..5).map(record).collect();
    send(good[0].encode_to_vec()).await;
    let mut garbage = vec![0xff, 0xfe];
    garbage.resize(SIZE, 7);
    send(garbage.clone()).await;
    for r in &good[1..] {
        send(r.encode_to_vec()).await;
    }
    let stats = Arc::new(LoggerStats::default());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let logger = tokio::spawn(vigil_logger::run(quick_config(broker.brokers(), db.url()), stats.clone(), async move {
        let _ = rx.await;
    }));
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "the records after the refused dead letter", || async {
        store.count_predictions().await.unwrap_or(0) == 5
    })
    .await;
    eventually(Duration::from_secs(30), "every record handled", || {
        std::future::ready(LoggerStats::get(&stats.consumed) >= 6)
    })
    .await;
    let kept = store.dead_letters(10).await.unwrap();
    assert_eq!(kept.len(), 1, "one dead letter kept");
    assert_eq!(kept[0].source, format!("{}/0/1", topics::PREDICTIONS));
    assert!(kept[0].reason.starts_with("not a PredictionRecord"), "{}", kept[0].reason);
    assert!(kept[0].reason.contains("the dead-letter topic refused it"), "{}", kept[0].reason);
    assert_eq!(kept[0].payload.as_deref(), Some(&garbage[..]), "kept with its bytes");
    assert_eq!(broker.message_count(topics::DEAD_LETTER), 0);
    assert_eq!(LoggerStats::get(&stats.dead_lettered), 1);
    stop.send(()).unwrap();
    logger.await.unwrap().unwrap();
}

/// An idempotent dead-letter producer that met a fatal error refuses every dead letter after
/// it: the sink makes a new producer, so the caller's next attempt goes through and the logger
/// (which retries a dead letter until it is kept) does not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_producer_that_met_a_fatal_error_is_replaced() {
    use vigil_logger::batch::{Consumed, DeadLetter};
    use vigil_logger::sink::{DeadLetterSink, KafkaDeadLetters};

    let broker = Broker::start(1).await;
    let db = Database::create();
    let kafka = broker.kafka();
    vigil_logbus::kafka::create_topics(&kafka, &[topics::DEAD_LETTER], kafka.topics).await.unwrap();
    let sink = KafkaDeadLetters::new(kafka, PgStore::connect_lazy(&db.url(), 2).unwrap()).unwrap();
    let letter = |offset: i64| {
        let message =
            Consumed { topic: "t".into(), partition: 0, offset, key: None, payload: Some(vec![0xff; offset as usize]) };
        DeadLetter { message, reason: "not a record".into() }
    };
    sink.send(&letter(1)).await.unwrap();
    let first = sink.producer();
    strike_fatal(&first);
    let refused = sink.send(&letter(2)).await.unwrap_err();
    assert!(refused.contains("fatal error"), "{refused}");
    sink.send(&letter(2)).await.expect("sent by a new producer");
    assert!(!Arc::ptr_eq(&first, &sink.producer()), "a new producer");
    sink.send(&letter(3)).await.unwrap();
    let kept = dead_letters(&broker.brokers(), 3).await;
    for offset in 1..=3 {
        let (reason, payload) = &kept[&format!("t/0/{offset}")];
        assert_eq!((reason.as_str(), payload.len()), ("not a record", offset as usize));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_logger_serves_records_by_outcome_batches_and_lag_at_metrics() {
    let broker = Broker::start(2).await;
    let db = Database::create();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    const N: usize = 40;
    let records: Vec<PredictionRecord> = (0..N).map(record).collect();
    // Every record once, the first one again (a duplicate), and one that cannot be decoded.
    let payloads = records.iter().chain(&records[..1]).map(|r| r.encode_to_vec()).chain([vec![0xff, 0xff]]);
    for (i, payload) in payloads.enumerate() {
        let record = FutureRecord::to(topics::PREDICTIONS).key("k").payload(&payload).partition(i as i32 % 2);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    let mut logger = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-logger"))
        .args(["--brokers", &broker.brokers(), "--database-url", &db.url(), "--batch-max-wait-ms", "100"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(logger.stdout.take().unwrap()), &mut line).unwrap();
    let metrics: std::net::SocketAddr = line
        .split_once("(metrics on http://")
        .and_then(|(_, rest)| rest.split_once("/metrics)"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .0
        .parse()
        .unwrap();

    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= N as i64
    })
    .await;
    let records_of = |text: &str, outcome: &str| {
        sample(text, "vigil_logger_records_total", &[("topic", topics::PREDICTIONS), ("outcome", outcome)])
    };
    let mut text = String::new();
    eventually(Duration::from_secs(30), "counters and the lag of both partitions", || {
        text = scrape(metrics);
        let lags = (0..2).map(|p| {
            let partition = p.to_string();
            let labels = [("topic", topics::PREDICTIONS), ("partition", partition.as_str())];
            sample(&text, "vigil_logger_consumer_lag", &labels)
        });
        let caught_up = lags.into_iter().all(|lag| lag == Some(0.0));
        let done = records_of(&text, "inserted") == Some(N as f64) && records_of(&text, "duplicate") == Some(1.0);
        std::future::ready(caught_up && done)
    })
    .await;
    assert_eq!(store.count_predictions().await.unwrap(), N as i64);
    assert_eq!(records_of(&text, "dead_lettered"), Some(1.0), "{text}");
    let batches = sample(&text, "vigil_logger_batches_total", &[]).unwrap();
    assert!(batches >= 1.0, "{text}");
    assert_eq!(sample(&text, "vigil_logger_batch_duration_seconds_count", &[]), Some(batches), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0, "{text}");

    std::process::Command::new("kill").args(["-TERM", &logger.id().to_string()]).status().unwrap();
    assert!(logger.wait().unwrap().success());
    assert!(std::net::TcpStream::connect(metrics).is_err(), "the metrics endpoint stops with the logger");
}

/// Sends `records`, keyed by station, at most 2,000 in flight; returns their ids in order.
async fn produce(producer: &FutureProducer, records: impl IntoIterator<Item = PredictionRecord>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    for r in records {
        ids.push(Uuid::parse_str(&r.prediction_id).unwrap());
        let producer = producer.clone();
        pending.push(async move {
            let payload = r.encode_to_vec();
            let record = FutureRecord::to(topics::PREDICTIONS).key(&r.station_id).payload(&payload);
            producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
        });
        if pending.len() >= 2_000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap();
    }
    ids
}

fn idempotent_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// The stored ids, each as often as it is stored, against the produced ones.
async fn assert_stored_exactly(store: &PgStore, produced: &[Uuid]) {
    let mut stored = store.prediction_ids().await.unwrap();
    let mut expected = produced.to_vec();
    stored.sort();
    expected.sort();
    assert_eq!(stored.len(), expected.len(), "stored rows against produced records");
    assert!(stored == expected, "exactly the produced ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logger_killed_mid_batch_and_restarted_at_once_writes_every_record_exactly_once() {
    // Positions are committed every 60 s (the most allowed), and the kill comes well before the
    // first commit: the restarted logger must read again what the killed one had written.
    killed_mid_batch_and_restarted(60_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logger_committing_positions_every_10_ms_killed_mid_batch_loses_nothing() {
    // Positions committed as often as allowed: one stored before its batch was in the database
    // (or out of order, past a batch still being written) would be committed before the kill,
    // and the restarted logger would skip records.
    killed_mid_batch_and_restarted(10).await;
}

/// Kills a logger with batches in flight, restarts one at once, and checks every record was
/// stored exactly once; with commits rarer than the run, that the killed one's were read again.
async fn killed_mid_batch_and_restarted(commit_interval_ms: u64) {
    let broker = Broker::start(3).await;
    let db = Database::create();
    const N: usize = 20_000;
    let ids = produce(&idempotent_producer(&broker.brokers()), (0..N).map(record)).await;
    assert_eq!(broker.message_count(topics::PREDICTIONS), N as i64, "the topic holds each record once");

    let brokers = broker.brokers();
    let url = db.url();
    let args = ["--brokers", &brokers, "--database-url", &url, "--batch-max-records", "500"];
    let interval = commit_interval_ms.to_string();
    let env = [("VIGIL_LOGGER__COMMIT_INTERVAL_MS", interval.as_str())];
    let rare_commits = commit_interval_ms >= 60_000;
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    let first = LoggerProcess::spawn(&args, &env);
    let spawned = std::time::Instant::now();
    eventually(Duration::from_secs(55), "the first batches", || async {
        store.count_predictions().await.unwrap_or(0) >= 2_000
    })
    .await;
    first.kill(); // SIGKILL, with batches in flight: no graceful commit
    if rare_commits {
        assert!(spawned.elapsed() < Duration::from_secs(60), "killed before the first commit");
    }
    // A commit the server had already received when the connection died still lands: the
    // count is read once it stopped moving for a second.
    let mut at_kill = store.count_predictions().await.unwrap();
    let mut still_since = std::time::Instant::now();
    while still_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = store.count_predictions().await.unwrap();
        if now != at_kill {
            (at_kill, still_since) = (now, std::time::Instant::now());
        }
    }
    assert!(at_kill < N as i64, "killed too late to test anything ({at_kill})");

    // Restarted at once, as a supervisor would: the group hands it the partitions when the
    // killed member's session times out.
    let second = LoggerProcess::spawn(&args, &env);
    eventually(Duration::from_secs(120), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= N as i64
    })
    .await;
    let expected_inserts = (N as i64 - at_kill) as f64;
    eventually(Duration::from_secs(30), "the restarted logger's counters", || {
        std::future::ready(second.records(topics::PREDICTIONS, "inserted") == expected_inserts)
    })
    .await;
    let reread = second.records(topics::PREDICTIONS, "duplicate");
    if rare_commits {
        assert!(reread > 0.0, "the restarted logger read again records the killed one had written");
    }
    assert!(reread <= at_kill as f64, "it re-read only what was written before the kill: {reread} > {at_kill}");
    assert_stored_exactly(&store, &ids).await;
    second.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logger_with_a_session_timeout_above_30_s_starts_and_writes() {
    // librdkafka requires max.poll.interval.ms >= session.timeout.ms: a 60 s session timeout
    // must not stop the consumer from starting.
    let broker = Broker::start(3).await;
    let db = Database::create();
    let ids = produce(&idempotent_producer(&broker.brokers()), (0..1_000).map(record)).await;
    let (brokers, url) = (broker.brokers(), db.url());
    let logger = LoggerProcess::spawn(
        &["--brokers", &brokers, "--database-url", &url],
        &[("VIGIL_LOGGER__SESSION_TIMEOUT_MS", "60000")],
    );
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= ids.len() as i64
    })
    .await;
    assert_stored_exactly(&store, &ids).await;
    logger.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_and_restarted_under_the_logger_loses_nothing_and_doubles_nothing() {
    let broker = Broker::start(2).await;
    // A server of this test's own: it is stopped for real (pg_ctl stop -m immediate: a crash).
    let mut postgres = PostgresServer::start().await;
    let logger = RunningLogger::quick(broker.brokers(), postgres.url());
    let stats = logger.stats.clone();
    let producer = idempotent_producer(&broker.brokers());
    let store = PgStore::connect_lazy(&postgres.url(), 2).unwrap();
    let mut ids = produce(&producer, (0..200).map(record)).await;
    eventually(Duration::from_secs(60), "the first records", || async {
        store.count_predictions().await.unwrap_or(0) >= 200
    })
    .await;

    postgres.stop(vigil_testkit::postgres::StopMode::Immediate);
    ids.extend(produce(&producer, (200..500).map(record)).await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(LoggerStats::get(&stats.retries) > 0, "the logger met the outage and retried");
    assert_eq!(LoggerStats::get(&stats.inserted_predictions), 200, "nothing written while the database is away");
    postgres.resume().await;

    eventually(Duration::from_secs(60), "the records sent during the outage", || async {
        store.count_predictions().await.unwrap_or(0) >= 500
    })
    .await;
    eventually(Duration::from_secs(30), "the logger's counters", || {
        std::future::ready(LoggerStats::get(&stats.consumed) >= 500)
    })
    .await;
    assert_stored_exactly(&store, &ids).await;
    assert_eq!(LoggerStats::get(&stats.inserted_predictions), 500, "each record inserted once");
    logger.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loggers_joining_and_leaving_under_load_write_each_record_once() {
    let broker = Broker::start(6).await;
    let db = Database::create();
    let config = || {
        let mut c = quick_config(broker.brokers(), db.url());
        c.batch.max_records = 200;
        c.batch.max_wait_ms = 50;
        c
    };
    let a = RunningLogger::start(config());
    let b = RunningLogger::start(config());
    let (a_stats, b_stats) = (a.stats.clone(), b.stats.clone());
    let producer = idempotent_producer(&broker.brokers());
    // A steady stream: rounds of 400 records, 150 ms apart. A third logger joins after round
    // 10; the first leaves after round 25 once it has written (a loaded machine may take a
    // while to hand it partitions); the stream goes on to round 40 and until the third has
    // written.
    let mut ids = Vec::new();
    let mut c: Option<RunningLogger> = None;
    let mut a = Some(a);
    let wrote = |s: &Arc<LoggerStats>| LoggerStats::get(&s.inserted_predictions) > 0;
    for round in 0.. {
        ids.extend(produce(&producer, (0..400).map(|i| record(round * 400 + i))).await);
        if round == 10 {
            c = Some(RunningLogger::start(config()));
        }
        if round >= 25 && a.is_some() && wrote(&a_stats) {
            a.take().unwrap().stop().await;
        }
        if round >= 40 && a.is_none() && c.as_ref().is_some_and(|c| wrote(&c.stats)) {
            break;
        }
        assert!(round < 400, "after {round} rounds the first or the joining logger has written nothing");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let c = c.unwrap();
    let c_stats = c.stats.clone();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(90), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= ids.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_stored_exactly(&store, &ids).await;
    b.stop().await;
    c.stop().await;
    let all = [&a_stats, &b_stats, &c_stats];
    let sum =
        |f: fn(&LoggerStats) -> &std::sync::atomic::AtomicU64| all.iter().map(|s| LoggerStats::get(f(s))).sum::<u64>();
    assert_eq!(sum(|s| &s.inserted_predictions), ids.len() as u64, "each record inserted by exactly one logger");
    assert_eq!(
        sum(|s| &s.consumed),
        ids.len() as u64 + sum(|s| &s.duplicates),
        "every read inserted or known as a repeat"
    );
    for (name, s) in [("first", &a_stats), ("second", &b_stats), ("joining", &c_stats)] {
        assert!(LoggerStats::get(&s.inserted_predictions) > 0, "the {name} logger wrote records");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_logger_creates_missing_topics_or_waits_for_an_operator_to() {
    let broker = Broker::start_bare(vigil_testkit::kafka::Profile::Test).await;
    let db = Database::create();
    assert_eq!(broker.partitions(topics::PREDICTIONS), 0, "a bare broker");

    // Creation off: the logger reports the missing topics and waits; it creates nothing.
    let mut waiting = quick_config(broker.brokers(), db.url());
    waiting.kafka.topics.create = false;
    let waiting = RunningLogger::start(waiting);
    eventually(Duration::from_secs(30), "the missing topics reported", || {
        std::future::ready(LoggerStats::get(&waiting.stats.retries) > 0)
    })
    .await;
    assert_eq!(broker.partitions(topics::PREDICTIONS), 0, "nothing created with creation off");

    // Creation on (the default): the topics appear with the configured partitions.
    let mut creating = quick_config(broker.brokers(), db.url());
    creating.kafka.topics.partitions = 3;
    let creating = RunningLogger::start(creating);
    eventually(Duration::from_secs(60), "the topics created", || {
        std::future::ready(vigil_logbus::topics::ALL.iter().all(|t| broker.partitions(t) == 3))
    })
    .await;
    let ids = produce(&idempotent_producer(&broker.brokers()), (0..50).map(record)).await;
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "the records", || async { store.count_predictions().await.unwrap_or(0) >= 50 })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_stored_exactly(&store, &ids).await;
    // The waiting logger joined the group once the topics existed; together they inserted
    // each record once.
    let (c, w) = (creating.stats.clone(), waiting.stats.clone());
    creating.stop().await;
    waiting.stop().await;
    let inserted = LoggerStats::get(&c.inserted_predictions) + LoggerStats::get(&w.inserted_predictions);
    assert_eq!(inserted, 50);
}

/// A logger stopped while its database is away stops within `batch.drain_timeout_ms`,
/// committing nothing it did not write: the next logger writes every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logger_stopped_while_its_database_is_away_stops_in_time_and_loses_nothing() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let ids = produce(&idempotent_producer(&broker.brokers()), (0..50).map(record)).await;
    // Nothing listens on port 9 (discard): every write is retried.
    let mut away = quick_config(broker.brokers(), "postgres://vigil:vigil@127.0.0.1:9/vigil".into());
    away.migrate = false;
    away.batch.drain_timeout_ms = 500;
    let logger = RunningLogger::start(away);
    eventually(Duration::from_secs(60), "a batch read and its write retried", || {
        std::future::ready(LoggerStats::get(&logger.stats.retries) > 0)
    })
    .await;
    tokio::time::timeout(Duration::from_secs(20), logger.stop())
        .await
        .expect("the logger stops after its drain limit, not when the database returns");

    let next = RunningLogger::quick(broker.brokers(), db.url());
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= 50
    })
    .await;
    assert_stored_exactly(&store, &ids).await;
    next.stop().await;
}
