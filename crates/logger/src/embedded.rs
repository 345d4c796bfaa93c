//! The logger of the embedded default: records from the in-process bus into any store (SQLite
//! by default), with the same decoding, batching and idempotent inserts as the Kafka logger.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vigil_logbus::Envelope;
use vigil_store::PredictionStore;

use crate::batch::{Consumed, decode};
use crate::consumer::{LoggerStats, retry};

/// Consumes `receiver` until every sender is gone, writing batches of at most `max_records`
/// records (waiting at most `max_wait` to fill one) into `store`.
pub async fn run<S: PredictionStore>(
    mut receiver: mpsc::Receiver<Envelope>,
    store: S,
    max_records: usize,
    max_wait: Duration,
    stats: Arc<LoggerStats>,
) {
    let mut offset = 0i64;
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_records {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let consumed: Vec<Consumed> = batch
            .into_iter()
            .map(|e| {
                offset += 1;
                Consumed {
                    topic: e.topic,
                    partition: 0,
                    offset,
                    key: Some(e.key.into_bytes()),
                    payload: Some(e.payload),
                }
            })
            .collect();
        let started = Instant::now();
        stats.consumed.fetch_add(consumed.len() as u64, Ordering::Relaxed);
        let decoded = decode(&consumed);
        for dead in &decoded.dead {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            stats.metrics.dead_lettered(&dead.message.topic);
            tracing::warn!(reason = dead.reason, "record dropped: cannot be decoded");
        }
        let (p, l) =
            retry("insert a batch", &stats, || store.insert_batch(&decoded.predictions, &decoded.labels)).await;
        stats.inserted_predictions.fetch_add(p, Ordering::Relaxed);
        stats.inserted_labels.fetch_add(l, Ordering::Relaxed);
        let f = retry("insert feedback", &stats, || store.insert_feedback(&decoded.feedback)).await;
        stats.inserted_feedback.fetch_add(f, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.metrics.batch(&decoded, (p, l, f), started.elapsed());
    }
}
