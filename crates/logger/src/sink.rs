//! Where records that cannot be decoded go, with the reason: the dead-letter topic (Kafka), or
//! the store's `dead_letters` table (the embedded default). Rows go to any
//! [`vigil_store::PredictionStore`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use vigil_logbus::kafka::KafkaConfig;
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
/// `vigil-source` (`topic/partition/offset`). A dead letter the topic refuses for good (the
/// headers took a record near the size limit over it) goes to the store's `dead_letters` table
/// instead, so that it never holds the partitions back. A producer that met a fatal error
/// (an idempotent producer whose sequence broke refuses every record after it) is replaced by
/// a new one, and the dead letter is sent again by the caller.
pub struct KafkaDeadLetters<S> {
    config: KafkaConfig,
    producer: Mutex<Arc<FutureProducer>>,
    /// When the producer was last replaced: a fatal error that strikes each new one too (its
    /// cause on the broker's side) gets a new one at most every [`REPLACE_PAUSE`].
    replaced: Mutex<Option<Instant>>,
    refused: StoreDeadLetters<S>,
}

/// The least time between two replacements of the dead-letter producer.
const REPLACE_PAUSE: Duration = Duration::from_secs(10);

impl<S: PredictionStore> KafkaDeadLetters<S> {
    /// Sends with a producer made from `config` (acks=all, idempotent); what the topic refuses
    /// goes to `store`.
    pub fn new(config: KafkaConfig, store: S) -> Result<Self, KafkaError> {
        let producer = Mutex::new(Arc::new(config.producer()?));
        Ok(Self { config, producer, replaced: Mutex::new(None), refused: StoreDeadLetters::new(store) })
    }

    /// The producer dead letters go through now.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces `failed` by a new producer, unless another send did already or the last
    /// replacement was under [`REPLACE_PAUSE`] ago.
    fn replace(&self, failed: Arc<FutureProducer>) -> Result<(), KafkaError> {
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        if replaced.is_some_and(|at| at.elapsed() < REPLACE_PAUSE) {
            return Ok(());
        }
        let mut current = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, &failed) {
            let old = std::mem::replace(&mut *current, Arc::new(self.config.producer()?));
            *replaced = Some(Instant::now());
            // Dropping a producer waits for its queue to be purged: off the async threads
            // (unless a send still holds it, which drops it last).
            tokio::task::spawn_blocking(move || drop((old, failed)));
        }
        Ok(())
    }
}

impl<S: PredictionStore> DeadLetterSink for KafkaDeadLetters<S> {
    async fn send(&self, dead: &DeadLetter) -> Result<(), String> {
        let m = &dead.message;
        let source = dead.source();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "vigil-reason", value: Some(dead.reason.as_str()) })
            .insert(Header { key: "vigil-source", value: Some(source.as_str()) });
        let payload = m.payload.clone().unwrap_or_default();
        let key = m.key.clone().unwrap_or_default();
        let record = FutureRecord::to(topics::DEAD_LETTER).payload(&payload).key(&key).headers(headers);
        let producer = self.producer();
        match producer.send(record, Timeout::After(Duration::from_secs(10))).await {
            Ok(_) => Ok(()),
            // A dead letter refused as corrupt is kept in the table too: not retried for good.
            Err((e, _)) if vigil_logbus::kafka::refused_for_good(&e) || vigil_logbus::kafka::found_corrupt(&e) => {
                tracing::error!(
                    source,
                    error = %e,
                    "the dead-letter topic refused a dead letter for good: kept in the dead_letters table"
                );
                let reason = format!("{}; the dead-letter topic refused it: {e}", dead.reason);
                self.refused.send(&DeadLetter { message: dead.message.clone(), reason }).await
            }
            Err((e, _)) => match producer.client().fatal_error() {
                Some((code, reason)) => {
                    tracing::error!(?code, reason, "the dead-letter producer met a fatal error: making a new one");
                    let made = self.replace(producer).map_err(|made| format!("; a new one failed too: {made}"));
                    Err(format!(
                        "the dead-letter producer met a fatal error ({code:?}: {reason}){}",
                        made.err().unwrap_or_default()
                    ))
                }
                None => Err(e.to_string()),
            },
        }
    }
}

/// A dead letter's id, the same each time the same message is dead-lettered (redelivered after
/// a crash or a rebalance), so the table keeps it once: a hash of where it came from and its
/// bytes (the embedded bus numbers messages afresh in each run: the bytes tell those apart).
fn dead_letter_id(dead: &DeadLetter) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let m = &dead.message;
    let mut hash = Sha256::new();
    for part in
        [dead.source().as_bytes(), m.key.as_deref().unwrap_or_default(), m.payload.as_deref().unwrap_or_default()]
    {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    let digest: [u8; 32] = hash.finalize().into();
    let first: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
    uuid::Builder::from_custom_bytes(first).into_uuid()
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
            id: dead_letter_id(dead),
            time: Utc::now(),
            topic: dead.message.topic.clone(),
            source: dead.source(),
            // Text columns take no NUL (Postgres refuses it, and the letter would be retried
            // for ever).
            reason: dead.reason.replace('\0', "\\0"),
            key: dead.message.key.clone(),
            payload: dead.message.payload.clone(),
        };
        self.store.insert_dead_letters(std::slice::from_ref(&row)).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Consumed;

    fn dead(offset: i64, payload: &[u8]) -> DeadLetter {
        let message = Consumed { topic: "t".into(), partition: 0, offset, key: None, payload: Some(payload.to_vec()) };
        DeadLetter { message, reason: "not a record".into() }
    }

    #[test]
    fn a_redelivered_dead_letter_keeps_its_id_and_another_gets_its_own() {
        assert_eq!(dead_letter_id(&dead(7, b"\xff")), dead_letter_id(&dead(7, b"\xff")));
        assert_ne!(dead_letter_id(&dead(7, b"\xff")), dead_letter_id(&dead(8, b"\xff")));
        assert_ne!(dead_letter_id(&dead(7, b"\xff")), dead_letter_id(&dead(7, b"\xfe")));
        let with_key =
            DeadLetter { message: Consumed { key: Some(b"k".to_vec()), ..dead(7, b"\xff").message }, ..dead(7, b"") };
        assert_ne!(dead_letter_id(&with_key), dead_letter_id(&dead(7, b"\xff")));
    }
}
