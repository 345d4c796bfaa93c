//! The logger's Prometheus metrics.
//!
//! - `vigil_logger_records_total{topic,outcome}`: records `inserted`, skipped as `duplicate`
//!   (already in the database), or `dead_lettered`.
//! - `vigil_logger_batches_total` and `vigil_logger_batch_duration_seconds`: batches written,
//!   and the time from decoding a batch to its database commit (retries included).
//! - `vigil_logger_consumer_lag{topic,partition}`: messages behind the end of each assigned
//!   partition, from the committed offset (librdkafka's statistics).
//! - `vigil_logger_assigned_partitions{topic}`: partitions of each topic this member of the
//!   consumer group holds (their sum over the group is the topic's partition count).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;
use vigil_logbus::topics;

use crate::pipeline::LoggerStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    topic: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    topic: String,
    partition: i32,
}

/// Counters, batch durations and consumer lag. Clones share the metrics.
#[derive(Clone, Debug)]
pub struct LoggerMetrics {
    records: Family<RecordLabels, Counter>,
    batches: Counter,
    batch_duration: Histogram,
    lag: Family<LagLabels, Gauge>,
    /// Partitions with a lag gauge, so that the ones no longer assigned are removed.
    lag_partitions: Arc<Mutex<HashSet<LagLabels>>>,
    assigned: Family<TopicLabels, Gauge>,
}

impl Default for LoggerMetrics {
    fn default() -> Self {
        Self {
            records: Family::default(),
            batches: Counter::default(),
            // 1 ms doubling to about 33 s.
            batch_duration: Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
            lag: Family::default(),
            lag_partitions: Arc::default(),
            assigned: Family::default(),
        }
    }
}

impl LoggerMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("vigil_logger_records", "Records by topic and outcome", self.records.clone());
        registry.register("vigil_logger_batches", "Batches written to the database", self.batches.clone());
        registry.register(
            "vigil_logger_batch_duration_seconds",
            "Time from decoding a batch to its database commit",
            self.batch_duration.clone(),
        );
        registry.register(
            "vigil_logger_consumer_lag",
            "Messages behind the end of each assigned partition",
            self.lag.clone(),
        );
        registry.register(
            "vigil_logger_assigned_partitions",
            "Partitions of each topic this member of the consumer group holds",
            self.assigned.clone(),
        );
    }

    fn count(&self, topic: &str, outcome: &'static str, n: u64) {
        if n > 0 {
            self.records.get_or_create(&RecordLabels { topic: topic.to_string(), outcome }).inc_by(n);
        }
    }

    /// Counts one dead-lettered record of `topic`.
    pub(crate) fn dead_lettered(&self, topic: &str) {
        self.count(topic, "dead_lettered", 1);
    }

    /// Counts a written batch: of its `rows` the database took (predictions, labels,
    /// feedback), `inserted` were new and the rest duplicates; it took `duration`.
    pub(crate) fn batch(&self, rows: (usize, usize, usize), inserted: (u64, u64, u64), duration: Duration) {
        let (p, l, f) = inserted;
        self.batch_rows(
            [(topics::PREDICTIONS, rows.0, p), (topics::LABELS, rows.1, l), (topics::FEEDBACK, rows.2, f)],
            duration,
        );
    }

    /// Counts a written batch of (topic, rows, new rows).
    fn batch_rows(&self, written: [(&str, usize, u64); 3], duration: Duration) {
        for (topic, rows, new) in written {
            self.count(topic, "inserted", new);
            self.count(topic, "duplicate", (rows as u64).saturating_sub(new));
        }
        self.batches.inc();
        self.batch_duration.observe(duration.as_secs_f64());
    }

    /// Sets the lag gauges from the consumer's statistics; drops those of partitions that are
    /// no longer assigned or whose lag is unknown.
    pub(crate) fn set_lag(&self, statistics: &Statistics) {
        let current = consumer_lag(statistics);
        let mut partitions = self.lag_partitions.lock().unwrap_or_else(|p| p.into_inner());
        for gone in partitions.iter().filter(|p| !current.contains_key(p)) {
            self.lag.remove(gone);
        }
        for (labels, lag) in &current {
            self.lag.get_or_create(labels).set(*lag);
        }
        *partitions = current.into_keys().collect();
        for (topic, t) in &statistics.topics {
            let held = t.partitions.values().filter(|p| p.partition >= 0 && p.desired).count();
            self.assigned.get_or_create(&TopicLabels { topic: topic.clone() }).set(held as i64);
        }
    }
}

/// Lag per assigned partition; librdkafka reports -1 while unknown and an internal partition -1.
fn consumer_lag(statistics: &Statistics) -> HashMap<LagLabels, i64> {
    statistics
        .topics
        .iter()
        .flat_map(|(topic, t)| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
                .map(move |p| (LagLabels { topic: topic.clone(), partition: p.partition }, p.consumer_lag))
        })
        .collect()
}

/// A registry with the process metrics and the logger's own, served at `/metrics`.
pub fn registry(stats: &LoggerStats) -> Arc<Registry> {
    registry_with_auth(stats).0
}

/// [`registry`] with the refusals of the /metrics port's token check registered in it.
pub fn registry_with_auth(stats: &LoggerStats) -> (Arc<Registry>, vigil_security::auth::AuthMetrics) {
    let mut registry = vigil_telemetry::registry();
    stats.metrics.register(&mut registry);
    let auth = vigil_security::auth::AuthMetrics::register(&mut registry);
    (Arc::new(registry), auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::{Partition, Topic};

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn statistics(partitions: &[(i32, bool, i64)]) -> Statistics {
        let partitions = partitions
            .iter()
            .map(|&(partition, desired, consumer_lag)| {
                (partition, Partition { partition, desired, consumer_lag, ..Default::default() })
            })
            .collect();
        let topic = Topic { topic: topics::PREDICTIONS.into(), partitions, ..Default::default() };
        Statistics { topics: [(topics::PREDICTIONS.to_string(), topic)].into(), ..Default::default() }
    }

    #[test]
    fn lag_gauges_follow_the_assigned_partitions() {
        let m = LoggerMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.set_lag(&statistics(&[(0, true, 5), (1, true, -1), (2, false, 9), (-1, true, 0), (3, true, 0)]));
        let t = text(&registry);
        assert!(t.contains(r#"vigil_logger_consumer_lag{topic="vigil.predictions.v1",partition="0"} 5"#), "{t}");
        assert!(t.contains(r#"vigil_logger_consumer_lag{topic="vigil.predictions.v1",partition="3"} 0"#), "{t}");
        assert_eq!(t.matches("vigil_logger_consumer_lag{").count(), 2, "{t}");
        assert!(t.contains(r#"vigil_logger_assigned_partitions{topic="vigil.predictions.v1"} 3"#), "{t}");
        m.set_lag(&statistics(&[(3, true, 2)]));
        let t = text(&registry);
        assert!(t.contains(r#"vigil_logger_consumer_lag{topic="vigil.predictions.v1",partition="3"} 2"#), "{t}");
        assert_eq!(t.matches("vigil_logger_consumer_lag{").count(), 1, "{t}");
        assert!(t.contains(r#"vigil_logger_assigned_partitions{topic="vigil.predictions.v1"} 1"#), "{t}");
    }

    #[test]
    fn batches_count_inserted_and_duplicate_rows_per_topic() {
        let m = LoggerMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.batch_rows(
            [(topics::PREDICTIONS, 3, 2), (topics::LABELS, 1, 1), (topics::FEEDBACK, 0, 0)],
            Duration::from_millis(3),
        );
        m.dead_lettered(topics::PREDICTIONS);
        let t = text(&registry);
        for line in [
            r#"vigil_logger_records_total{topic="vigil.predictions.v1",outcome="inserted"} 2"#,
            r#"vigil_logger_records_total{topic="vigil.predictions.v1",outcome="duplicate"} 1"#,
            r#"vigil_logger_records_total{topic="vigil.predictions.v1",outcome="dead_lettered"} 1"#,
            r#"vigil_logger_records_total{topic="vigil.labels.v1",outcome="inserted"} 1"#,
            "vigil_logger_batches_total 1",
            "vigil_logger_batch_duration_seconds_count 1",
            r#"vigil_logger_batch_duration_seconds_bucket{le="0.004"} 1"#,
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        assert!(!t.contains("feedback"), "no series for outcomes that never happened: {t}");
    }
}
