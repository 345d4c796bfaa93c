//! The one logging loop: source -> decode -> sinks. Messages are grouped into size- and
//! time-bounded batches; each batch's dead letters go to the dead-letter sink and its rows to
//! the store in one transaction; up to `max_in_flight` batches are written at once, and the
//! source learns of written batches strictly in consumption order.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use vigil_store::{PredictionStore, ReviewStore};

use crate::batch::{Consumed, decode};
use crate::config::BatchSettings;
use crate::metrics::LoggerMetrics;
use crate::sink::DeadLetterSink;
use crate::source::Source;

/// Counters of a running logger.
#[derive(Debug, Default)]
pub struct LoggerStats {
    pub consumed: AtomicU64,
    pub inserted_predictions: AtomicU64,
    pub inserted_labels: AtomicU64,
    pub inserted_feedback: AtomicU64,
    /// Records already in the database (redelivered after a crash or a rebalance): skipped.
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Failed database or dead-letter attempts (each retried).
    pub retries: AtomicU64,
    /// The Prometheus metrics (register them with [`LoggerMetrics::register`]).
    pub metrics: LoggerMetrics,
}

impl LoggerStats {
    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Runs until `shutdown` resolves or the source ends; the batches in hand are written and
/// their position committed first.
pub async fn run<S, P, D>(
    mut source: S,
    store: &P,
    dead_letters: &D,
    settings: BatchSettings,
    stats: &Arc<LoggerStats>,
    shutdown: impl Future<Output = ()>,
) where
    S: Source,
    P: PredictionStore + ReviewStore,
    D: DeadLetterSink,
{
    tokio::pin!(shutdown);
    let max_in_flight = settings.max_in_flight.max(1);
    let stats = &**stats;
    // Batches being written, in consumption order; each yields itself when written.
    let mut in_flight = FuturesOrdered::new();
    let mut ended = false;
    while !ended {
        let first = tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                mark_written(&mut source, done);
                continue;
            }
            m = source.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.max_wait();
        while batch.len() < settings.max_records {
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => mark_written(&mut source, done),
                m = source.recv() => match m {
                    Some(m) => batch.push(m),
                    None => {
                        ended = true;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        while in_flight.len() >= max_in_flight {
            if let Some(done) = in_flight.next().await {
                mark_written(&mut source, done);
            }
        }
        in_flight.push_back(async move {
            write(&batch, store, dead_letters, stats).await;
            batch
        });
    }
    tracing::info!(batches = in_flight.len(), "stopping: writing the batches in hand, then committing");
    while let Some(done) = in_flight.next().await {
        mark_written(&mut source, done);
    }
    source.close();
}

fn mark_written<S: Source>(source: &mut S, batch: Vec<Consumed>) {
    source.written(&batch);
}

/// Dead-letters what cannot be decoded, inserts the rest in one transaction; retries each
/// until it succeeds (a broker or database outage pauses the logger, it never skips).
async fn write<P: PredictionStore + ReviewStore, D: DeadLetterSink>(
    batch: &[Consumed],
    store: &P,
    dead_letters: &D,
    stats: &LoggerStats,
) {
    let started = Instant::now();
    stats.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let decoded = decode(batch);
    for dead in &decoded.dead {
        retry("keep a dead letter", stats, || dead_letters.send(dead)).await;
        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        stats.metrics.dead_lettered(&dead.message.topic);
        tracing::warn!(source = dead.source(), reason = dead.reason, "dead-lettered");
    }
    let (p, l) = retry("insert a batch", stats, || store.insert_batch(&decoded.predictions, &decoded.labels)).await;
    // Feedback in its own statement: idempotent on the event id, so a retry after a crash
    // between the two transactions doubles nothing.
    let f = retry("insert feedback", stats, || store.insert_feedback(&decoded.feedback)).await;
    // Items for a person, after their predictions: queued once, whatever the redeliveries.
    if !decoded.reviews.is_empty() {
        retry("queue items for review", stats, || store.enqueue_reviews(&decoded.reviews)).await;
    }
    let rows = (decoded.predictions.len() + decoded.labels.len() + decoded.feedback.len()) as u64;
    stats.inserted_predictions.fetch_add(p, Ordering::Relaxed);
    stats.inserted_labels.fetch_add(l, Ordering::Relaxed);
    stats.inserted_feedback.fetch_add(f, Ordering::Relaxed);
    stats.duplicates.fetch_add(rows.saturating_sub(p + l + f), Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.metrics.batch(&decoded, (p, l, f), started.elapsed());
}

/// Retries `attempt` with backoff (100 ms doubling to 5 s) until it succeeds.
pub(crate) async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, stats: &LoggerStats, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
