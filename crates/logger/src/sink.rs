//! Where records that cannot be decoded go, with the reason: the dead-letter topic (Kafka), or
//! the store's `dead_letters` table (the embedded default). Rows go to any
//! [`vigil_store::PredictionStore`].

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use vigil_logbus::topics;
use vigil_store::{DeadLetterRow, PredictionStore};

use crate::batch::DeadLetter;

/// Keeps a record that cannot be decoded. Delivery is at least once: a crash after it and
/// before the batch's position is committed sends it again.
pub trait DeadLetterSink: Send + Sync {
    /// Keeps `dead`; an error is retried by the caller.
    fn send(&self, dead: &DeadLetter) -> impl Future<Output = Result<(), String>> + Send;
}

/// `vigil.deadletter.v1`: the original key and payload, headers `vigil-reason` and
/// `vigil-source` (`topic/partition/offset`).
pub struct KafkaDeadLetters {
    producer: FutureProducer,
}

impl KafkaDeadLetters {
    /// Sends with `producer` (acks=all, idempotent).
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, dead: &DeadLetter) -> Result<(), String> {
        let m = &dead.message;
        let source = dead.source();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "vigil-reason", value: Some(dead.reason.as_str()) })
            .insert(Header { key: "vigil-source", value: Some(source.as_str()) });
        let payload = m.payload.clone().unwrap_or_default();
        let key = m.key.clone().unwrap_or_default();
        let record = FutureRecord::to(topics::DEAD_LETTER).payload(&payload).key(&key).headers(headers);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

/// The store's `dead_letters` table.
pub struct StoreDeadLetters<S> {
    store: S,
}

impl<S: PredictionStore> StoreDeadLetters<S> {
    /// Keeps dead letters in `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

impl<S: PredictionStore> DeadLetterSink for StoreDeadLetters<S> {
    async fn send(&self, dead: &DeadLetter) -> Result<(), String> {
        let row = DeadLetterRow {
            id: uuid::Uuid::now_v7(),
            time: Utc::now(),
            topic: dead.message.topic.clone(),
            source: dead.source(),
            reason: dead.reason.clone(),
            key: dead.message.key.clone(),
            payload: dead.message.payload.clone(),
        };
        self.store.insert_dead_letters(std::slice::from_ref(&row)).await.map(|_| ()).map_err(|e| e.to_string())
    }
}
