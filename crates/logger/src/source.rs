//! Where records come from: a Kafka consumer group, or the embedded default's in-process bus.
//! A source hands out messages in order and is told, in the same order, which of them are
//! written, so that it can commit its position.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use vigil_logbus::Envelope;

use crate::batch::Consumed;
use crate::config::LoggerConfig;
use crate::metrics::LoggerMetrics;

/// A stream of messages with a position that can be committed.
pub trait Source: Send {
    /// The next message; `None` once the source has ended (the bus's senders are gone).
    fn recv(&mut self) -> impl Future<Output = Option<Consumed>> + Send;
    /// `batch` is written (and every batch before it): its position may be committed.
    fn written(&mut self, batch: &[Consumed]);
    /// Commits the position of everything marked written; called once at the end.
    fn close(&mut self);
}

/// The consumer's context: turns the client's periodic statistics into the lag gauges.
pub struct LagContext {
    metrics: LoggerMetrics,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.set_lag(&statistics);
    }
}

impl ConsumerContext for LagContext {}

/// A member of a Kafka consumer group. Offsets are stored by hand, only for written batches,
/// and committed in the background and at close.
pub struct KafkaSource {
    consumer: StreamConsumer<LagContext>,
}

impl KafkaSource {
    /// Joins `config.group_id` and subscribes to `config.consume`.
    pub fn subscribe(config: &LoggerConfig, metrics: LoggerMetrics) -> anyhow::Result<Self> {
        config.kafka.warn_if_plaintext();
        let consumer: StreamConsumer<LagContext> = config
            .kafka
            .client_config()?
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", config.commit_interval_ms.to_string())
            // Offsets are stored by hand, only after the database commit: with automatic
            // storing, offsets of messages dropped while closing during a rebalance get
            // committed and their records are skipped.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (config.session_timeout_ms / 4).max(100).to_string())
            // A logger waiting on the database reads nothing: this bounds the stall it rides out
            // before the group hands its partitions away (validated: at least the session timeout).
            .set("max.poll.interval.ms", config.max_poll_interval_ms.to_string())
            .set("statistics.interval.ms", config.statistics_interval_ms.max(1).to_string())
            .create_with_context(LagContext { metrics })
            .context("cannot create the Kafka consumer")?;
        let topics: Vec<&str> = config.consume.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("cannot subscribe")?;
        Ok(Self { consumer })
    }
}

impl Source for KafkaSource {
    async fn recv(&mut self) -> Option<Consumed> {
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    return Some(Consumed {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn written(&mut self, batch: &[Consumed]) {
        // After a long database outage the group may have moved these partitions elsewhere;
        // their new owner reads the batch again and the idempotent insert skips it.
        let stored = next_offsets(batch).and_then(|list| Ok(self.consumer.store_offsets(&list)?));
        if let Err(e) = stored {
            tracing::warn!(error = %e, "offsets not stored (partitions reassigned?); the batch will be read again");
        }
    }

    fn close(&mut self) {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; the last batch will be read again (inserts are idempotent)");
        }
    }
}

/// For each partition, the offset after the last message of the batch.
fn next_offsets(batch: &[Consumed]) -> anyhow::Result<TopicPartitionList> {
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

/// The in-process bus of the embedded default; it ends when every sender is gone. Nothing to
/// commit: what was handed out is gone from the bus.
pub struct BusSource {
    receiver: mpsc::Receiver<Envelope>,
    next_offset: i64,
}

impl BusSource {
    /// Reads `receiver`.
    pub fn new(receiver: mpsc::Receiver<Envelope>) -> Self {
        Self { receiver, next_offset: 0 }
    }
}

impl Source for BusSource {
    async fn recv(&mut self) -> Option<Consumed> {
        let envelope = self.receiver.recv().await?;
        self.next_offset += 1;
        Some(Consumed {
            topic: envelope.topic,
            partition: 0,
            offset: self.next_offset,
            key: Some(envelope.key.into_bytes()),
            payload: Some(envelope.payload),
        })
    }

    fn written(&mut self, _batch: &[Consumed]) {}

    fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_is_one_past_the_last_message_of_each_partition() {
        let m = |partition, offset| Consumed { topic: "t".into(), partition, offset, key: None, payload: None };
        let list = next_offsets(&[m(0, 5), m(1, 9), m(0, 7), m(0, 6)]).unwrap();
        let mut offsets: Vec<(i32, Offset)> = list.elements().iter().map(|e| (e.partition(), e.offset())).collect();
        offsets.sort_by_key(|(p, _)| *p);
        assert_eq!(offsets, vec![(0, Offset::Offset(8)), (1, Offset::Offset(10))]);
    }
}
