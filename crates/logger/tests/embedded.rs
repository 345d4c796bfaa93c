//! The embedded default's logger: the in-process bus into SQLite through the same pipeline as
//! the Kafka logger, with records that cannot be decoded kept in the `dead_letters` table.

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use uuid::Uuid;
use vigil_logbus::{Envelope, Sink, topics};
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_proto::vigil::v1::{PredictionOutput, PredictionRecord};
use vigil_store::PredictionStore as _;
use vigil_store::SqliteStore;

fn record(i: usize) -> PredictionRecord {
    PredictionRecord {
        schema_version: 1,
        prediction_id: Uuid::now_v7().to_string(),
        response_time: Some(SystemTime::now().into()),
        station_id: format!("station-{i}"),
        model_name: "scratch-detector".into(),
        model_version: "1".into(),
        status: 1,
        output: Some(PredictionOutput { label: "ok".into(), scores: vec![0.25], ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn undecodable_records_are_kept_as_dead_letters_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let (sink, receiver) = vigil_logbus::in_process::channel(100);
    let stats = Arc::new(LoggerStats::default());
    let batch = BatchSettings { max_records: 4, max_wait_ms: 20, max_in_flight: 1, ..Default::default() };
    let logger = tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, stats.clone()));

    let good: Vec<PredictionRecord> = (0..10).map(record).collect();
    let envelope = |payload: Vec<u8>| Envelope { topic: topics::PREDICTIONS.into(), key: "line-1".into(), payload };
    let garbage = vec![0xde, 0xad, 0xbe, 0xef, 0xff];
    let future = PredictionRecord { schema_version: 3, ..record(99) }.encode_to_vec();
    for (i, r) in good.iter().enumerate() {
        sink.send(envelope(r.encode_to_vec())).await.unwrap();
        if i == 3 {
            sink.send(envelope(garbage.clone())).await.unwrap();
            sink.send(envelope(future.clone())).await.unwrap();
        }
    }
    drop(sink); // the bus ends: the logger writes what it has and returns
    logger.await.unwrap();

    let mut stored = store.prediction_ids().await.unwrap();
    stored.sort();
    let mut expected: Vec<Uuid> = good.iter().map(|r| Uuid::parse_str(&r.prediction_id).unwrap()).collect();
    expected.sort();
    assert_eq!(stored, expected);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_payload = |p: &[u8]| dead.iter().find(|d| d.payload.as_deref() == Some(p)).expect("kept with its bytes");
    let g = by_payload(&garbage);
    assert!(g.reason.starts_with("not a PredictionRecord"), "{}", g.reason);
    assert_eq!(
        (g.topic.as_str(), g.source.as_str(), g.key.as_deref()),
        (topics::PREDICTIONS, "vigil.predictions.v1/0/5", Some(&b"line-1"[..]))
    );
    let f = by_payload(&future);
    assert!(f.reason.contains("schema version 3 is not supported"), "{}", f.reason);
    assert_eq!(LoggerStats::get(&stats.dead_lettered), 2);
    assert_eq!(LoggerStats::get(&stats.inserted_predictions), 10);
}

/// Records that carry an image for review fill a batch by bytes long before they do by count:
/// `batch.max_bytes` bounds what a logger holds, and every record is still stored.
#[tokio::test]
async fn batches_are_bounded_by_bytes_as_well_as_by_records() {
    use vigil_proto::vigil::v1::ReviewRequest;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let (sink, receiver) = vigil_logbus::in_process::channel(100);
    let stats = Arc::new(LoggerStats::default());
    let batch = BatchSettings {
        max_records: 1_000,
        max_bytes: 10_000,
        max_wait_ms: 200,
        max_in_flight: 1,
        ..Default::default()
    };
    let logger = tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, stats.clone()));
    let with_image = |i| PredictionRecord {
        review: Some(ReviewRequest { policy: "unsure".into(), input: vec![7; 4_000], ..Default::default() }),
        ..record(i)
    };
    for i in 0..10 {
        let payload = with_image(i).encode_to_vec();
        assert!(payload.len() > 4_000);
        sink.send(Envelope { topic: topics::PREDICTIONS.into(), key: "line-1".into(), payload }).await.unwrap();
    }
    drop(sink);
    logger.await.unwrap();
    assert_eq!(store.count_predictions().await.unwrap(), 10);
    // 10 records of 4 KB in batches that stop once they hold 10,000 bytes: three records at most.
    let batches = LoggerStats::get(&stats.batches);
    assert!(batches >= 4, "{batches} batches: at most 3 records each");
}
