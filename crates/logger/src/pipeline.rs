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

use crate::batch::{Consumed, DeadLetter, decode};
use crate::config::BatchSettings;
use crate::metrics::LoggerMetrics;
use crate::sink::DeadLetterSink;
use crate::source::Source;

/// Counters of a running logger.
#[derive(Debug, Default)]
pub struct LoggerStats {
    /// Records read and handled (stored, found already stored, or dead-lettered). Counted
    /// after every other counter of their batch: whoever reads this value reads theirs too.
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
        counter.load(Ordering::Acquire)
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
        let size = |m: &Consumed| m.payload.as_ref().map_or(0, Vec::len);
        let mut bytes = size(&first);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.max_wait();
        while batch.len() < settings.max_records && bytes < settings.max_bytes {
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => mark_written(&mut source, done),
                m = source.recv() => match m {
                    Some(m) => {
                        bytes += size(&m);
                        batch.push(m);
                    }
                    None => {
                        ended = true;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Room for this batch; a shutdown meanwhile still writes it, within the drain limit.
        while in_flight.len() >= max_in_flight {
            tokio::select! {
                _ = &mut shutdown => {
                    ended = true;
                    break;
                }
                Some(done) = in_flight.next() => mark_written(&mut source, done),
            }
        }
        in_flight.push_back(async move {
            write(&batch, store, dead_letters, stats).await;
            batch
        });
    }
    tracing::info!(batches = in_flight.len(), "stopping: writing the batches in hand, then committing");
    let drain = async {
        while let Some(done) = in_flight.next().await {
            mark_written(&mut source, done);
        }
    };
    let drained = match settings.drain_timeout() {
        Some(limit) => tokio::time::timeout(limit, drain).await,
        None => {
            drain.await;
            Ok(())
        }
    };
    if drained.is_err() {
        // Their positions are not committed: the next start reads them again (inserts are
        // idempotent on the record id).
        tracing::warn!(
            batches = in_flight.len(),
            timeout_ms = settings.drain_timeout_ms,
            "stopping with batches unwritten (batch.drain_timeout_ms): they are read again on the next start"
        );
    }
    drop(in_flight);
    source.close();
}

fn mark_written<S: Source>(source: &mut S, batch: Vec<Consumed>) {
    source.written(&batch);
}

/// Dead-letters what cannot be decoded, inserts the rest in one transaction; retries each
/// until it succeeds (a broker or database outage pauses the logger, it never skips). Rows the
/// database refuses as data (a value or a constraint it will never take) are found by halving
/// the set until each stands alone, and dead-lettered with the database's reason: the rest of
/// the batch is stored, and the logger moves on.
/// Dead letters of a batch being sent at once.
const DEAD_LETTERS_AT_ONCE: usize = 64;

async fn write<P: PredictionStore + ReviewStore, D: DeadLetterSink>(
    batch: &[Consumed],
    store: &P,
    dead_letters: &D,
    stats: &LoggerStats,
) {
    let started = Instant::now();
    let mut decoded = decode(batch);
    let d = &decoded;
    let np = d.predictions.len();
    // Predictions and labels in one transaction, as one list: predictions, then labels.
    let (stored, refused_rows) = insert_isolating("insert a batch", np + d.labels.len(), stats, |r| {
        store.insert_batch(
            &d.predictions[r.start.min(np)..r.end.min(np)],
            &d.labels[r.start.max(np) - np..r.end.max(np) - np],
        )
    })
    .await;
    let (p, l) = stored.iter().fold((0, 0), |(p, l), (a, b)| (p + a, l + b));
    let refused_predictions = refused_rows.iter().filter(|(i, _)| *i < np).count();
    let refused_labels = refused_rows.len() - refused_predictions;
    let mut refused: Vec<(usize, String)> = refused_rows
        .into_iter()
        .map(|(i, why)| (if i < np { d.prediction_sources[i] } else { d.label_sources[i - np] }, why))
        .collect();
    // Feedback in its own statement: idempotent on the event id, so a retry after a crash
    // between the two transactions doubles nothing.
    let (stored, refused_feedback) =
        insert_isolating("insert feedback", d.feedback.len(), stats, |r| store.insert_feedback(&d.feedback[r])).await;
    let f: u64 = stored.iter().sum();
    let taken = (np - refused_predictions, d.labels.len() - refused_labels, d.feedback.len() - refused_feedback.len());
    refused.extend(refused_feedback.into_iter().map(|(i, why)| (d.feedback_sources[i], why)));
    // Items for a person, after their predictions (none for a prediction refused): queued once,
    // whatever the redeliveries.
    let kept: Vec<usize> =
        (0..d.reviews.len()).filter(|&i| !refused.iter().any(|(source, _)| *source == d.review_sources[i])).collect();
    if !kept.is_empty() {
        let reviews: Vec<_> = kept.iter().map(|&i| d.reviews[i].clone()).collect();
        let (_, refused_reviews) =
            insert_isolating("queue items for review", reviews.len(), stats, |r| store.enqueue_reviews(&reviews[r]))
                .await;
        refused.extend(refused_reviews.into_iter().map(|(i, why)| (d.review_sources[kept[i]], why)));
    }
    decoded.dead.extend(refused.into_iter().map(|(source, why)| DeadLetter {
        message: batch[source].clone(),
        reason: format!("the database refused it: {why}"),
    }));
    // All of a batch's dead letters at once: one at a time, a burst of bad records would hold
    // the batch for a round trip each.
    futures::stream::iter(&decoded.dead)
        .for_each_concurrent(DEAD_LETTERS_AT_ONCE, |dead| async move {
            retry("keep a dead letter", stats, || dead_letters.send(dead)).await;
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            stats.metrics.dead_lettered(&dead.message.topic);
            tracing::warn!(source = dead.source(), reason = dead.reason, "dead-lettered");
        })
        .await;
    let rows = (taken.0 + taken.1 + taken.2) as u64;
    stats.inserted_predictions.fetch_add(p, Ordering::Relaxed);
    stats.inserted_labels.fetch_add(l, Ordering::Relaxed);
    stats.inserted_feedback.fetch_add(f, Ordering::Relaxed);
    stats.duplicates.fetch_add(rows.saturating_sub(p + l + f), Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.metrics.batch(taken, (p, l, f), started.elapsed());
    stats.consumed.fetch_add(batch.len() as u64, Ordering::Release);
}

/// Runs `insert` over rows `0..len`, retrying outages; where the database refuses a range as
/// data, halves it until the rows at fault stand alone. Returns what each insert that went
/// through returned, and each refused row's index with the database's reason.
async fn insert_isolating<T, F, Fut>(
    what: &str,
    len: usize,
    stats: &LoggerStats,
    mut insert: F,
) -> (Vec<T>, Vec<(usize, String)>)
where
    F: FnMut(std::ops::Range<usize>) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    // The ranges still to insert; the whole to begin with.
    let mut ranges = Vec::new();
    ranges.push(0..len);
    while let Some(range) = ranges.pop() {
        match retry_unless(what, stats, || insert(range.clone()), refused_as_data).await {
            Ok(done) => stored.push(done),
            Err(e) if range.len() <= 1 => refused.extend(range.map(|i| (i, e.to_string()))),
            Err(e) => {
                tracing::warn!(error = %e, rows = range.len(), "the database refused rows to {what}: finding which");
                let middle = range.start + range.len() / 2;
                ranges.push(middle..range.end);
                ranges.push(range.start..middle);
            }
        }
    }
    (stored, refused)
}

/// Whether the database refused the rows themselves (a value it cannot hold, a constraint they
/// break), which no retry changes, rather than being away or busy.
fn refused_as_data(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        // Postgres: SQLSTATE classes 22 (data exception), 23 (integrity constraint violation)
        // and 54 (program limit exceeded: a value too large for an index row);
        // any backend: a constraint broken (SQLite's codes are numbers, not SQLSTATEs).
        sqlx::Error::Database(db) => {
            let postgres = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            postgres.is_some_and(|pg| ["22", "23", "54"].iter().any(|class| pg.code().starts_with(class)))
                || !matches!(db.kind(), ErrorKind::Other)
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Retries `attempt` with backoff (100 ms doubling to 5 s) until it succeeds.
pub(crate) async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, stats: &LoggerStats, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match retry_unless(what, stats, attempt, |_| false).await {
        Ok(v) => v,
        Err(_) => unreachable!("an attempt that never gives up returns only once it succeeds"),
    }
}

/// As [`retry`], but an error `give_up` picks is returned instead of retried.
async fn retry_unless<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    stats: &LoggerStats,
    mut attempt: F,
    give_up: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if give_up(&e) => return Err(e),
            Err(e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
