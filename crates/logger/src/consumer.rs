//! The consume → decode → insert → store-offsets loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use vigil_logbus::topics;
use vigil_store::PgStore;

use crate::batch::{Consumed, DeadLetter, decode};
use crate::metrics::LoggerMetrics;

/// Logger settings.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    pub brokers: String,
    /// Consumer group; logger instances in one group share the partitions.
    pub group_id: String,
    pub database_url: String,
    pub topics: Vec<String>,
    /// Most records per database transaction.
    pub batch_max_records: usize,
    /// Longest a batch waits to fill after its first record.
    pub batch_max_wait: Duration,
    /// Batches written at once, each in its own transaction and connection; offsets are stored
    /// in consumption order, each only after its batch and every earlier one committed.
    pub max_batches_in_flight: usize,
    /// Apply the schema migrations at start.
    pub migrate: bool,
    /// How often the consumer lag is refreshed from the Kafka client's statistics.
    pub statistics_interval: Duration,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "vigil-logger".into(),
            database_url: "postgres://127.0.0.1/vigil".into(),
            topics: vec![topics::PREDICTIONS.into(), topics::LABELS.into(), topics::FEEDBACK.into()],
            batch_max_records: 5_000,
            batch_max_wait: Duration::from_millis(200),
            max_batches_in_flight: 2,
            migrate: true,
            statistics_interval: Duration::from_secs(5),
        }
    }
}

/// Counters of a running logger.
#[derive(Debug, Default)]
pub struct LoggerStats {
    pub consumed: AtomicU64,
    pub inserted_predictions: AtomicU64,
    pub inserted_labels: AtomicU64,
    pub inserted_feedback: AtomicU64,
    /// Records already in the database (redelivered after a crash): skipped.
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Failed database attempts (each retried).
    pub database_retries: AtomicU64,
    /// The Prometheus metrics (register them with [`LoggerMetrics::register`]).
    pub metrics: LoggerMetrics,
}

/// The consumer's context: turns the client's periodic statistics into the lag gauges.
struct LagContext {
    metrics: LoggerMetrics,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.set_lag(&statistics);
    }
}

impl ConsumerContext for LagContext {}

/// Runs until `shutdown` resolves; the batch in hand is finished first.
pub async fn run(config: LoggerConfig, stats: Arc<LoggerStats>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let store = PgStore::connect_lazy(&config.database_url, 4).context("database_url")?;
    if config.migrate {
        retry("migrate the database", &stats, || store.migrate()).await;
    }
    let consumer: StreamConsumer<LagContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "vigil-logger")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        // Offsets are stored by hand, only after the database commit.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // A rebalance waits at most this long for members that do not rejoin (a crashed
        // logger): a restarted logger gets its partitions within it.
        .set("max.poll.interval.ms", "30000")
        .set("statistics.interval.ms", config.statistics_interval.as_millis().max(1).to_string())
        .create_with_context(LagContext { metrics: stats.metrics.clone() })
        .context("cannot create the Kafka consumer")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "vigil-logger-deadletter")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create the dead-letter producer")?;
    let topic_refs: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).context("cannot subscribe")?;
    tracing::info!(group = config.group_id, topics = ?config.topics, "consuming");

    tokio::pin!(shutdown);
    let in_flight_max = config.max_batches_in_flight.max(1);
    let (store, producer, stats) = (&store, &producer, &*stats);
    // Batches being written, in consumption order; each yields the offsets to store.
    let mut in_flight = FuturesOrdered::new();
    'consume: loop {
        let first = tokio::select! {
            _ = &mut shutdown => break 'consume,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                store_offsets(&consumer, done);
                continue;
            }
            m = consumer.recv() => m,
        };
        let first = match first {
            Ok(m) => consumed(&m),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.batch_max_wait;
        while batch.len() < config.batch_max_records {
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => store_offsets(&consumer, done),
                m = consumer.recv() => match m {
                    Ok(m) => batch.push(consumed(&m)),
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // At most `in_flight_max` batches are written at once: wait for the oldest first.
        while in_flight.len() >= in_flight_max {
            if let Some(done) = in_flight.next().await {
                store_offsets(&consumer, done);
            }
        }
        in_flight.push_back(async move {
            process(&batch, store, producer, stats).await;
            next_offsets(&batch)
        });
    }
    tracing::info!(batches = in_flight.len(), "shutting down: finishing the batches in hand, then committing offsets");
    while let Some(done) = in_flight.next().await {
        store_offsets(&consumer, done);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; the last batch will be read again (inserts are idempotent)");
    }
    Ok(())
}

/// Stores a written batch's offsets for the next automatic commit.
fn store_offsets(consumer: &StreamConsumer<LagContext>, offsets: Result<TopicPartitionList>) {
    // After a long database outage the group may have moved these partitions elsewhere; their
    // new owner reads the batch again and the idempotent insert skips it.
    match offsets {
        Ok(list) => {
            if let Err(e) = consumer.store_offsets(&list) {
                tracing::warn!(error = %e, "offsets not stored (partitions reassigned?); the batch will be read again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "offsets not stored; the batch will be read again"),
    }
}

fn consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    Consumed {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

/// For each partition, the offset after the last message of the batch.
fn next_offsets(batch: &[Consumed]) -> Result<TopicPartitionList> {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let e = last.entry((m.topic.as_str(), m.partition)).or_insert(m.offset);
        *e = (*e).max(m.offset);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        list.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(list)
}

/// Dead-letters what cannot be decoded, inserts the rest in one transaction; retries each
/// until it succeeds (a broker or database outage pauses the logger, it never skips).
async fn process(batch: &[Consumed], store: &PgStore, producer: &FutureProducer, stats: &LoggerStats) {
    let started = Instant::now();
    stats.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let decoded = decode(batch);
    for dead in &decoded.dead {
        retry("dead-letter a record", stats, || dead_letter(producer, dead)).await;
        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        stats.metrics.dead_lettered(&dead.message.topic);
        tracing::warn!(
            topic = dead.message.topic,
            partition = dead.message.partition,
            offset = dead.message.offset,
            reason = dead.reason,
            "dead-lettered"
        );
    }
    let (p, l) = retry("insert a batch", stats, || store.insert_batch(&decoded.predictions, &decoded.labels)).await;
    // Feedback in its own statement: idempotent on the event id, so a retry after a crash
    // between the two transactions doubles nothing.
    let f = retry("insert feedback", stats, || store.insert_feedback(&decoded.feedback)).await;
    stats.inserted_feedback.fetch_add(f, Ordering::Relaxed);
    let rows = (decoded.predictions.len() + decoded.labels.len() + decoded.feedback.len()) as u64;
    stats.inserted_predictions.fetch_add(p, Ordering::Relaxed);
    stats.inserted_labels.fetch_add(l, Ordering::Relaxed);
    stats.duplicates.fetch_add(rows.saturating_sub(p + l + f), Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.metrics.batch(&decoded, (p, l, f), started.elapsed());
}

async fn dead_letter(producer: &FutureProducer, dead: &DeadLetter) -> Result<(), rdkafka::error::KafkaError> {
    let m = &dead.message;
    let source = format!("{}/{}/{}", m.topic, m.partition, m.offset);
    let headers = OwnedHeaders::new()
        .insert(Header { key: "vigil-reason", value: Some(dead.reason.as_str()) })
        .insert(Header { key: "vigil-source", value: Some(source.as_str()) });
    let payload = m.payload.clone().unwrap_or_default();
    let key = m.key.clone().unwrap_or_default();
    let record = FutureRecord::to(topics::DEAD_LETTER).payload(&payload).key(&key).headers(headers);
    producer.send(record, Timeout::After(Duration::from_secs(10))).await.map(|_| ()).map_err(|(e, _)| e)
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
                stats.database_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
