//! The edge server's store-and-forward: a broker outage in the middle of a steady stream, and a
//! full spool that is replayed by the next run.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;
use uuid::Uuid;
use vigil_logbus::spool::{FsyncPolicy, FullPolicy, SpoolConfig};
use vigil_logbus::topics;
use vigil_logger::LoggerStats;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn image() -> Vec<u8> {
    let dir = repo_root().join("samples/normal");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    std::fs::read(&files[0]).unwrap()
}

/// The prediction ids of the first `n` records of the predictions topic, partition by
/// partition in offset order.
async fn read_prediction_ids(brokers: &str, n: usize) -> Vec<Uuid> {
    use prost::Message as _;
    use rdkafka::message::Message as _;
    let consumer = reader(brokers, "order-check", topics::PREDICTIONS);
    let mut ids = Vec::new();
    while ids.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("records").unwrap();
        let record = vigil_proto::vigil::v1::PredictionRecord::decode(m.payload().unwrap()).unwrap();
        ids.push(Uuid::parse_str(&record.prediction_id).unwrap());
    }
    ids
}

fn edge_config(brokers: String, spool: SpoolConfig, message_timeout_ms: u64) -> vigil_edge::EdgeConfig {
    let mut c = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    c.logging.enabled = true;
    c.logging.kafka.brokers = brokers;
    c.logging.kafka.message_timeout_ms = message_timeout_ms;
    c.logging.spool = Some(spool);
    c
}

/// The next run after an outage: the broker back, a logger into a fresh database and an edge
/// server on `spool`, waited on until at least `records` predictions are stored.
struct NextRun {
    logger: RunningLogger,
    server: vigil_edge::RunningServer,
    store: PgStore,
    /// Declared last, so dropped last: dropping it drops the database under the logger.
    database: Database,
}

async fn next_run(broker: &mut Broker, spool: SpoolConfig, records: usize) -> NextRun {
    broker.resume().await;
    let brokers = broker.brokers();
    let db = Database::create();
    let logger = RunningLogger::quick(brokers.clone(), db.url());
    let server = vigil_edge::start(edge_config(brokers, spool, 5_000), false).await.unwrap();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "the replayed spool", || async {
        store.count_predictions().await.unwrap_or(0) >= records as i64
    })
    .await;
    NextRun { logger, server, store, database: db }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_30_second_broker_outage_loses_nothing_and_doubles_nothing() {
    let mut broker = Broker::start(3).await;
    let db = Database::create();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = SpoolConfig { dir: spool_dir.path().into(), fsync: FsyncPolicy::Always, ..Default::default() };
    // The shipped producer settings: acks=all, idempotent.
    let config = edge_config(broker.brokers(), spool, 3_000);
    assert!(config.logging.kafka.idempotence);
    let server = vigil_edge::start(config, false).await.unwrap();
    let logger = RunningLogger::quick(broker.brokers(), db.url());
    let logger_stats = logger.stats.clone();
    let mut client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let image = image();

    let mut ids = HashSet::new();
    let started = Instant::now();
    let mut stopped = false;
    let mut resumed = false;
    // A steady stream for 45 s; the broker process is killed at 10 s and restarted at 40 s.
    while started.elapsed() < Duration::from_secs(45) {
        if !stopped && started.elapsed() > Duration::from_secs(10) {
            broker.kill();
            stopped = true;
        }
        if !resumed && started.elapsed() > Duration::from_secs(40) {
            broker.resume().await;
            resumed = true;
        }
        let request = InspectRequest { image: image.clone(), station_id: "line-1".into(), ..Default::default() };
        let answer = client.inspect(request).await.expect("the edge server answers throughout the outage");
        ids.insert(Uuid::parse_str(&answer.into_inner().prediction_id).unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    assert!(emitter.stats().spooled.load(Ordering::Relaxed) > 0, "the outage was long enough to spool");

    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = store.count_predictions().await.unwrap_or(0);
        if count >= ids.len() as i64 {
            break;
        }
        let s = emitter.stats();
        assert!(
            Instant::now() < deadline,
            "{count} of {} records in Postgres; emitter: delivered {} failed {} spooled {} replayed {} dropped {}, {} in the spool",
            ids.len(),
            s.delivered.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.spooled.load(Ordering::Relaxed),
            s.replayed.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
            emitter.spooled_now()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stored = store.prediction_ids().await.unwrap();
    stored.sort();
    let mut answered: Vec<Uuid> = ids.iter().copied().collect();
    answered.sort();
    assert!(
        stored == answered,
        "every answered prediction stored once: {} stored, {} answered",
        stored.len(),
        answered.len()
    );
    assert_eq!(emitter.stats().dropped.load(Ordering::Relaxed), 0);
    // Each record inserted once. A record both delivered (its acknowledgement lost in the
    // crash) and replayed from the spool is in the topic twice; a batch written but not yet
    // committed when the group rebalanced around the broker restart is read twice: both are
    // skipped as repeats, and every read is either an insert or a repeat.
    eventually(Duration::from_secs(60), "the spool emptied", || async { emitter.spooled_now() == 0 }).await;
    let in_topic = broker.message_count(vigil_logbus::topics::PREDICTIONS);
    assert!(in_topic >= ids.len() as i64, "{in_topic} records in the topic, {} answered", ids.len());
    eventually(Duration::from_secs(60), "the logger read the whole topic", || {
        std::future::ready(LoggerStats::get(&logger_stats.consumed) >= in_topic as u64)
    })
    .await;
    let (consumed, inserted, repeats) = (
        LoggerStats::get(&logger_stats.consumed),
        LoggerStats::get(&logger_stats.inserted_predictions),
        LoggerStats::get(&logger_stats.duplicates),
    );
    eprintln!(
        "answered {}, in the topic {in_topic}, consumed {consumed}, inserted {inserted}, repeats {repeats}",
        ids.len()
    );
    assert_eq!(inserted, ids.len() as u64, "each answered prediction inserted once");
    assert_eq!(consumed, inserted + repeats);
    logger.stop().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_applies_its_policy_and_the_next_run_replays_it() {
    // No broker yet: every record goes to a small spool that refuses new records when full.
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = SpoolConfig {
        dir: spool_dir.path().into(),
        max_bytes: 16 * 1024,
        segment_bytes: 4 * 1024,
        fsync: FsyncPolicy::Never,
        when_full: FullPolicy::RejectNew,
    };
    let mut broker = Broker::start(1).await;
    let brokers = broker.brokers();
    broker.kill();
    let server = vigil_edge::start(edge_config(brokers.clone(), spool.clone(), 1_000), false).await.unwrap();
    let mut client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let image = image();
    let mut ids = Vec::new();
    for _ in 0..150 {
        let answer = client
            .inspect(InspectRequest { image: image.clone(), station_id: "s".into(), ..Default::default() })
            .await
            .unwrap();
        ids.push(Uuid::parse_str(&answer.into_inner().prediction_id).unwrap());
    }
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    assert!(emitter.drain(Duration::from_secs(30)).await, "every record settled (spooled or refused)");
    let dropped = emitter.stats().dropped.load(Ordering::Relaxed);
    let waiting = emitter.spooled_now();
    assert!(dropped > 0, "the spool filled and refused records");
    assert_eq!(waiting + dropped, 150, "each record either waits on disk or was counted as refused");
    server.shutdown().await.unwrap();

    // Next run, broker up: the spool is replayed; reject-new kept the oldest records.
    let NextRun { logger, server, store, database: _database } = next_run(&mut broker, spool, waiting as usize).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    let expected: HashSet<Uuid> = ids[..waiting as usize].iter().copied().collect();
    assert_eq!(stored, expected, "exactly the oldest records that fitted");
    // The spool is acknowledged once the broker confirmed every record (which can come a
    // moment after the logger already wrote them).
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    eventually(Duration::from_secs(30), "the spool acknowledged", || async { emitter.spooled_now() == 0 }).await;
    assert_eq!(emitter.stats().replayed.load(Ordering::Relaxed), waiting);
    // In emission order: one station, so one partition, read back offset by offset.
    assert_eq!(broker.message_count(topics::PREDICTIONS), waiting as i64, "each spooled record once");
    let in_topic = read_prediction_ids(&broker.brokers(), waiting as usize).await;
    assert_eq!(in_topic, ids[..waiting as usize], "replayed in emission order");
    logger.stop().await;
    server.shutdown().await.unwrap();
}

/// A server stopped while the broker is away, before its records time out in the producer:
/// what the producer holds goes to the spool at exit, and the next run delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_stopped_during_an_outage_spools_what_the_producer_holds() {
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = SpoolConfig { dir: spool_dir.path().into(), fsync: FsyncPolicy::Always, ..Default::default() };
    let mut broker = Broker::start(1).await;
    let brokers = broker.brokers();
    broker.kill();
    // Records wait in the producer for up to a minute, far longer than this server runs.
    let mut config = edge_config(brokers.clone(), spool.clone(), 60_000);
    config.limits.drain_timeout_ms = 1_000;
    let server = vigil_edge::start(config, false).await.unwrap();
    let mut client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let image = image();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let request = InspectRequest { image: image.clone(), station_id: "s".into(), ..Default::default() };
        ids.push(Uuid::parse_str(&client.inspect(request).await.unwrap().into_inner().prediction_id).unwrap());
    }
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    assert_eq!(emitter.stats().spooled.load(Ordering::Relaxed), 0, "held by the producer, not failed yet");
    server.shutdown().await.unwrap();
    let s = emitter.stats();
    assert_eq!(
        (s.spooled.load(Ordering::Relaxed), s.failed.load(Ordering::Relaxed), s.dropped.load(Ordering::Relaxed)),
        (20, 0, 0),
        "every record the producer held is on disk at exit"
    );

    // Next run, broker up: the spool is replayed, each record once.
    let NextRun { logger, server, store, database: _database } = next_run(&mut broker, spool, ids.len()).await;
    let stored: HashSet<Uuid> = store.prediction_ids().await.unwrap().into_iter().collect();
    assert_eq!(stored, ids.iter().copied().collect::<HashSet<Uuid>>(), "every answered prediction stored");
    logger.stop().await;
    server.shutdown().await.unwrap();
}

/// Without a spool, what the producer still holds when a server stops during an outage is lost
/// with the process: counted as dropped (and logged), so the metrics never claim it settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_spool_stopped_during_an_outage_counts_what_it_loses() {
    let mut broker = Broker::start(1).await;
    let brokers = broker.brokers();
    broker.kill();
    let mut config = edge_config(brokers, SpoolConfig::default(), 60_000);
    config.logging.spool = None;
    config.limits.drain_timeout_ms = 1_000;
    let server = vigil_edge::start(config, false).await.unwrap();
    let mut client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    for _ in 0..20 {
        let request = InspectRequest { image: image(), station_id: "s".into(), ..Default::default() };
        client.inspect(request).await.unwrap();
    }
    let emitter = server.records.as_ref().unwrap().emitter().clone();
    assert_eq!(emitter.stats().snapshot(), (20, 0, 0, 0), "held by the producer");
    server.shutdown().await.unwrap();
    assert_eq!(emitter.stats().snapshot(), (20, 0, 0, 20), "(emitted, delivered, failed, dropped) at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_spool_is_refused_until_the_first_stops() {
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = SpoolConfig { dir: spool_dir.path().into(), ..Default::default() };
    // No broker is needed to start: the producer connects lazily.
    let brokers = "127.0.0.1:9".to_string();
    let first = vigil_edge::start(edge_config(brokers.clone(), spool.clone(), 1_000), false).await.unwrap();
    let Err(e) = vigil_edge::start(edge_config(brokers.clone(), spool.clone(), 1_000), false).await else {
        panic!("two servers must not share one spool");
    };
    let message = format!("{e:#}");
    assert!(message.contains("cannot open the spool") && message.contains("in use by another server"), "{message}");
    first.shutdown().await.unwrap();
    let again = vigil_edge::start(edge_config(brokers, spool, 1_000), false).await.expect("free after shutdown");
    again.shutdown().await.unwrap();
}

/// The payloads of `topic`'s records until `distinct` different ones were read, with how many
/// records carried them.
async fn read_payloads(brokers: &str, topic: &str, distinct: usize) -> (HashSet<Vec<u8>>, usize) {
    use rdkafka::message::Message as _;
    let consumer = reader(brokers, "payload-check", topic);
    let (mut seen, mut records) = (HashSet::new(), 0);
    while seen.len() < distinct {
        let wait = tokio::time::timeout(Duration::from_secs(30), consumer.recv());
        let m = wait.await.unwrap_or_else(|_| panic!("{} of {distinct} payloads in {topic}", seen.len())).unwrap();
        seen.insert(m.payload().unwrap().to_vec());
        records += 1;
    }
    (seen, records)
}

/// An idempotent producer that meets a fatal error (the broker lost acknowledged records, or a
/// partition's sequence broke) refuses every record after it for good. The sink replaces it:
/// what the old producer held and what came after goes through the spool and the new producer,
/// and every record reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fatal_producer_error_replaces_the_producer_and_loses_nothing() {
    use rdkafka::producer::Producer as _;
    use vigil_logbus::kafka::KafkaSink;
    use vigil_logbus::spool::Spool;
    use vigil_logbus::{Emitter, Envelope};

    const TOPIC: &str = "fatal-check";
    let broker = Broker::start(1).await;
    let kafka = broker.kafka();
    assert!(kafka.idempotence, "the shipped producer is idempotent");
    vigil_logbus::kafka::create_topics(&kafka, &[TOPIC], kafka.topics).await.unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig { dir: spool_dir.path().into(), ..Default::default() }).unwrap();
    let sink = KafkaSink::new(&kafka).unwrap();
    let (emitter, _forward) =
        Emitter::start_with_spool(sink.clone(), 1_000, 100, Some(spool), Duration::from_millis(50));
    let record =
        |i: u32| Envelope { topic: TOPIC.into(), key: format!("k{}", i % 7), payload: i.to_be_bytes().to_vec() };

    for i in 0..100 {
        assert!(emitter.emit(record(i)));
    }
    assert!(emitter.drain(Duration::from_secs(30)).await, "delivered before the error");
    assert_eq!(emitter.stats().delivered.load(Ordering::Relaxed), 100);

    // Records waiting in the producer (500 ms linger) when the error strikes, then more after it.
    let first = sink.producer();
    for i in 100..150 {
        assert!(emitter.emit(record(i)));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    strike_fatal(&first);
    for i in 150..300 {
        assert!(emitter.emit(record(i)));
        tokio::task::yield_now().await;
    }

    eventually(Duration::from_secs(60), "every record delivered or replayed", || async {
        let s = emitter.stats();
        s.delivered.load(Ordering::Relaxed) + s.replayed.load(Ordering::Relaxed) >= 300 && emitter.spooled_now() == 0
    })
    .await;
    let s = emitter.stats();
    assert_eq!(s.sink_restarts.load(Ordering::Relaxed), 1, "one fatal error, one new producer");
    assert!(s.spooled.load(Ordering::Relaxed) > 0, "what the failed producer refused went through the spool");
    assert_eq!((s.failed.load(Ordering::Relaxed), s.dropped.load(Ordering::Relaxed)), (0, 0));
    let now = sink.producer();
    assert_ne!(now.client().native_ptr(), first.client().native_ptr());
    assert!(now.client().fatal_error().is_none());

    let (seen, records) = read_payloads(&broker.brokers(), TOPIC, 300).await;
    let expected: HashSet<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(seen, expected, "every record in the topic");
    // A record the old producer had sent when the error struck may be in the topic twice (the
    // loggers drop such doubles by record id); a new producer sends each record it is given once.
    assert!(records <= 300 + 50, "{records} records for 300 payloads");
}

/// A fatal error that strikes the new producer too (its cause on the broker's side) is not
/// answered by a new producer at every attempt: the next one comes after the pause, the records
/// wait in the spool meanwhile, and every record still reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_fatal_producer_error_replaces_the_producer_after_a_pause() {
    use rdkafka::producer::Producer as _;
    use vigil_logbus::kafka::{KafkaSink, RestartPacing};
    use vigil_logbus::spool::Spool;
    use vigil_logbus::{Emitter, Envelope};

    const TOPIC: &str = "fatal-again";
    const PAUSE: Duration = Duration::from_secs(5);
    let broker = Broker::start(1).await;
    let kafka = broker.kafka();
    vigil_logbus::kafka::create_topics(&kafka, &[TOPIC], kafka.topics).await.unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig { dir: spool_dir.path().into(), ..Default::default() }).unwrap();
    let sink = KafkaSink::new(&kafka).unwrap().with_restart_pacing(RestartPacing::new(PAUSE, PAUSE * 4));
    let (emitter, _forward) =
        Emitter::start_with_spool(sink.clone(), 1_000, 100, Some(spool), Duration::from_millis(50));
    let record =
        |i: u32| Envelope { topic: TOPIC.into(), key: format!("k{}", i % 7), payload: i.to_be_bytes().to_vec() };
    let native = |p: &rdkafka::producer::FutureProducer| p.client().native_ptr() as usize;
    for i in 0..50 {
        assert!(emitter.emit(record(i)));
    }
    assert!(emitter.drain(Duration::from_secs(30)).await, "delivered before the error");

    // The first fatal error: a new producer at once.
    let first = sink.producer();
    strike_fatal(&first);
    for i in 50..100 {
        assert!(emitter.emit(record(i)));
    }
    let replaced_by = Instant::now() + Duration::from_secs(30);
    while native(&sink.producer()) == native(&first) {
        assert!(Instant::now() < replaced_by, "the first fatal error replaced the producer");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replaced_at = Instant::now();

    // The same error on the new producer: it stays in place for the pause, records spool.
    let second = sink.producer();
    strike_fatal(&second);
    for i in 100..150 {
        assert!(emitter.emit(record(i)));
    }
    while replaced_at.elapsed() < PAUSE - Duration::from_millis(1_500) {
        assert_eq!(native(&sink.producer()), native(&second), "no new producer within the pause");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(emitter.stats().sink_restarts.load(Ordering::Relaxed), 1);
    assert!(emitter.spooled_now() > 0, "records wait in the spool during the pause");

    eventually(Duration::from_secs(60), "every record delivered or replayed", || async {
        let s = emitter.stats();
        s.delivered.load(Ordering::Relaxed) + s.replayed.load(Ordering::Relaxed) >= 150 && emitter.spooled_now() == 0
    })
    .await;
    let s = emitter.stats();
    assert_eq!(s.sink_restarts.load(Ordering::Relaxed), 2, "two fatal errors, two new producers");
    assert_eq!((s.failed.load(Ordering::Relaxed), s.dropped.load(Ordering::Relaxed)), (0, 0));
    assert!(sink.producer().client().fatal_error().is_none());
    let (seen, _) = read_payloads(&broker.brokers(), TOPIC, 150).await;
    let expected: HashSet<Vec<u8>> = (0..150u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(seen, expected, "every record in the topic");
}

/// A backlog replayed while traffic goes on empties, and the records after it go straight to
/// the broker again: each replay pass waits for one broker round trip, not for the producer's
/// linger (500 ms), so steady traffic cannot keep the spool from emptying.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_replayed_under_steady_traffic_empties_and_live_records_go_straight_again() {
    use vigil_logbus::kafka::KafkaSink;
    use vigil_logbus::spool::Spool;
    use vigil_logbus::{Emitter, Envelope};

    const TOPIC: &str = "backlog";
    let broker = Broker::start(1).await;
    let kafka = broker.kafka();
    assert_eq!(kafka.linger_ms, 500, "the shipped linger");
    vigil_logbus::kafka::create_topics(&kafka, &[TOPIC], kafka.topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig { dir: dir.path().into(), ..Default::default() };
    let record =
        |i: u32| Envelope { topic: TOPIC.into(), key: format!("k{}", i % 7), payload: i.to_be_bytes().to_vec() };
    let mut spool = Spool::open(config.clone()).unwrap();
    for i in 0..5_000 {
        spool.append(&record(i)).unwrap();
    }
    drop(spool);
    let (emitter, _forward) = Emitter::start_with_spool(
        KafkaSink::new(&kafka).unwrap(),
        1_000,
        100,
        Some(Spool::open(config).unwrap()),
        Duration::from_millis(500),
    );
    // 500 records a second (one every 2 ms) for up to 30 s, until the spool has emptied and a
    // live record went straight to the broker.
    let started = Instant::now();
    let mut sent = 5_000;
    while emitter.spooled_now() > 0 || emitter.stats().delivered.load(Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} records still in the spool after 30 s of steady traffic",
            emitter.spooled_now()
        );
        assert!(emitter.emit(record(sent)));
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(emitter.drain(Duration::from_secs(30)).await);
    let s = emitter.stats();
    assert_eq!(s.replayed.load(Ordering::Relaxed) + s.delivered.load(Ordering::Relaxed), u64::from(sent));
    let (seen, _) = read_payloads(&broker.brokers(), TOPIC, sent as usize).await;
    assert_eq!(seen.len(), sent as usize, "every record in the topic");
}

/// A record that finds the producer's local queue full waits in line, and every record sent
/// while it waits queues behind it: one station's records reach the topic in the order sent,
/// each once, though most of them found the queue (8 records here) full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_that_find_the_producer_queue_full_keep_their_order() {
    use rdkafka::message::Message as _;
    use vigil_logbus::{Envelope, Sink};
    let broker = Broker::start(1).await;
    let mut config = broker.kafka();
    config.linger_ms = 0;
    let sink =
        vigil_logbus::kafka::KafkaSink::with_overrides(&config, &[("queue.buffering.max.messages", "8")]).unwrap();
    const N: u32 = 3_000;
    let mut deliveries = Vec::new();
    for i in 0..N {
        let payload = i.to_be_bytes().to_vec();
        let envelope = Envelope { topic: topics::PREDICTIONS.into(), key: "line-1".into(), payload };
        // Each delivery on its own task, as the emitter's are in flight together; short pauses
        // let the queue drain part-way, so a record sent later could find room while earlier
        // ones wait for it.
        deliveries.push(tokio::spawn(sink.send(envelope)));
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().expect("delivered");
    }
    let consumer = reader(&broker.brokers(), "queue-full-order", topics::PREDICTIONS);
    let mut read = Vec::new();
    while read.len() < N as usize {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("records").unwrap();
        read.push(u32::from_be_bytes(m.payload().unwrap().try_into().unwrap()));
    }
    let out_of_order = read.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(out_of_order, 0, "records out of order: {:?}", &read[..read.len().min(40)]);
    assert_eq!(read.len(), N as usize);
    assert_eq!(broker.message_count(topics::PREDICTIONS), N as i64, "each record once");
}
