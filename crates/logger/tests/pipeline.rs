//! Predictions through vigil-edge → Kafka (a real broker) → vigil-logger → Postgres, and the
//! logger's /metrics.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;
use uuid::Uuid;
use vigil_logbus::topics;
use vigil_logger::{LoggerConfig, LoggerStats};
use vigil_proto::vigil::v1::QueryPredictionsRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::prediction_log_client::PredictionLogClient;
use vigil_proto::vigil::v1::{FeedbackEvent, InspectRequest, PredictionOutput, PredictionRecord};
use vigil_store::PgStore;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn sample_images() -> Vec<Vec<u8>> {
    let mut files: Vec<_> =
        std::fs::read_dir(repo_root().join("samples/normal")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
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
    assert_eq!(store.count_predictions().await.unwrap(), (N + 5) as i64, "nothing doubled");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_future_schemas_are_dead_lettered_and_the_rest_flows() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    let send = |payload: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::to(topics::PREDICTIONS).key("k").payload(&payload), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let good: Vec<PredictionRecord> = (0..10).map(record).collect();
    send(good[0].encode_to_vec()).await;
    send(vec![0xde, 0xad, 0xbe, 0xef, 0xff]).await;
    send(PredictionRecord { schema_version: 2, ..record(99) }.encode_to_vec()).await;
    for r in &good[1..] {
        send(r.encode_to_vec()).await;
    }
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
    let config = LoggerConfig {
        brokers: broker.brokers(),
        database_url: db.url(),
        batch_max_wait: Duration::from_millis(100),
        ..LoggerConfig::default()
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let logger = tokio::spawn(vigil_logger::run(config, stats.clone(), async move {
        let _ = rx.await;
    }));
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "valid records", || async {
        store.count_predictions().await.unwrap_or(0) == 10
    })
    .await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topics::DEAD_LETTER]).unwrap();
    let mut reasons = HashMap::new();
    while reasons.len() < 2 {
        let m =
            tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("dead letters arrive").unwrap();
        let headers = m.headers().unwrap();
        let header = |key: &str| {
            headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
        };
        reasons
            .insert(header("vigil-source").unwrap(), (header("vigil-reason").unwrap(), m.payload().unwrap().to_vec()));
    }
    let (reason, payload) = &reasons[&format!("{}/0/1", topics::PREDICTIONS)];
    assert!(reason.starts_with("not a PredictionRecord"), "{reason}");
    assert_eq!(payload, &vec![0xde, 0xad, 0xbe, 0xef, 0xff]);
    let (reason, _) = &reasons[&format!("{}/0/2", topics::PREDICTIONS)];
    assert!(reason.contains("schema version 2 is not supported"), "{reason}");
    assert_eq!(stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 2);
    stop.send(()).unwrap();
    logger.await.unwrap().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logger_killed_mid_stream_resumes_without_loss_or_doubles() {
    let broker = Broker::start(3).await;
    let db = Database::create();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    const N: usize = 20_000;
    let mut ids = HashSet::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..N {
        let r = record(i);
        ids.insert(Uuid::parse_str(&r.prediction_id).unwrap());
        let producer = producer.clone();
        pending.push(async move {
            let payload = r.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(topics::PREDICTIONS).key(&r.station_id).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if pending.len() >= 2_000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap();
    }

    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil-logger"))
            .args(["--brokers", &broker.brokers(), "--database-url", &db.url(), "--batch-max-records", "500"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    let mut first = spawn();
    eventually(Duration::from_secs(60), "the first batches", || async {
        store.count_predictions().await.unwrap_or(0) >= 2_000
    })
    .await;
    first.kill().unwrap(); // SIGKILL: no graceful commit
    first.wait().unwrap();
    let at_kill = store.count_predictions().await.unwrap();
    assert!(at_kill < N as i64, "killed too late to test anything ({at_kill})");

    // Restart after the group's session timeout (10 s), as a supervisor would after a crash:
    // the test broker (tansu 0.6) does not evict a dead member while a new one is joining.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut second = spawn();
    eventually(Duration::from_secs(120), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= N as i64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    assert_eq!(stored.len(), N);
    assert_eq!(stored, ids, "exactly the produced ids");
    std::process::Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert!(second.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_pauses_the_logger_and_loses_nothing() {
    let broker = Broker::start(2).await;
    let db = Database::create();
    // The logger reaches Postgres through a proxy that the test cuts for 8 seconds.
    let mut outage = Outage::start(5432).await;
    let via_proxy = db.url().replace(":5432/", &format!(":{}/", outage.port));
    let logger = RunningLogger::quick(broker.brokers(), via_proxy);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().unwrap();
    let mut ids = HashSet::new();
    let send = async |n: usize, ids: &mut HashSet<Uuid>| {
        for i in 0..n {
            let r = record(i);
            ids.insert(Uuid::parse_str(&r.prediction_id).unwrap());
            let payload = r.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(topics::PREDICTIONS).key(&r.station_id).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    send(200, &mut ids).await;
    eventually(Duration::from_secs(60), "the first records", || async {
        store.count_predictions().await.unwrap_or(0) >= 200
    })
    .await;

    outage.cut();
    send(300, &mut ids).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(store.count_predictions().await.unwrap(), 200, "nothing written while the database is away");
    outage.restore().await;

    eventually(Duration::from_secs(60), "the records sent during the outage", || async {
        store.count_predictions().await.unwrap_or(0) >= 500
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    assert_eq!(stored, ids);
    logger.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_loggers_share_the_partitions_and_write_each_record_once() {
    let broker = Broker::start(4).await;
    let db = Database::create();
    let start = |stats: Arc<LoggerStats>| {
        let config = LoggerConfig {
            brokers: broker.brokers(),
            database_url: db.url(),
            batch_max_records: 200,
            batch_max_wait: Duration::from_millis(50),
            ..LoggerConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (
            tx,
            tokio::spawn(vigil_logger::run(config, stats, async move {
                let _ = rx.await;
            })),
        )
    };
    let (a_stats, b_stats) = (Arc::new(LoggerStats::default()), Arc::new(LoggerStats::default()));
    let (stop_a, a) = start(a_stats.clone());
    let (stop_b, b) = start(b_stats.clone());
    // Let both join the group before records arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.brokers()).set("linger.ms", "5").create().unwrap();
    let records: Vec<PredictionRecord> = (0..4_000).map(record).collect();
    let ids: HashSet<Uuid> = records.iter().map(|r| Uuid::parse_str(&r.prediction_id).unwrap()).collect();
    futures::stream::iter(records.into_iter().enumerate())
        .map(|(i, r)| {
            let producer = producer.clone();
            async move {
                let payload = r.encode_to_vec();
                // Keys spread over the four partitions.
                let key = format!("station-{}", i % 16);
                producer
                    .send(FutureRecord::to(topics::PREDICTIONS).key(&key).payload(&payload), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        })
        .buffer_unordered(500)
        .collect::<Vec<_>>()
        .await;
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(90), "every record", || async {
        store.count_predictions().await.unwrap_or(0) >= 4_000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    assert_eq!(stored, ids);
    let consumed = |s: &LoggerStats| s.consumed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        consumed(&a_stats) > 0 && consumed(&b_stats) > 0,
        "both loggers took partitions: {} and {}",
        consumed(&a_stats),
        consumed(&b_stats)
    );
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}
