//! The logging service on Kafka and Postgres: creates the topics it uses when they are missing,
//! joins the consumer group, and runs the pipeline with the dead-letter topic.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use vigil_logbus::topics;
use vigil_store::{PgStore, PredictionStore};

use crate::config::LoggerConfig;
use crate::pipeline::{self, LoggerStats, retry};
use crate::sink::KafkaDeadLetters;
use crate::source::KafkaSource;

/// Runs until `shutdown` resolves; the batches in hand are finished first.
pub async fn run(
    config: LoggerConfig,
    stats: Arc<LoggerStats>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let store =
        PgStore::connect_lazy(&config.database_url, config.batch.max_in_flight as u32 + 2).context("database_url")?;
    tokio::pin!(shutdown);
    if config.migrate {
        tokio::select! {
            _ = retry("migrate the database", &stats, || store.migrate()) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
    let mut used: Vec<&str> = config.consume.iter().map(String::as_str).collect();
    used.push(topics::DEAD_LETTER);
    tokio::select! {
        _ = retry("make sure the topics exist", &stats, || vigil_logbus::kafka::ensure_topics(&config.kafka, &used)) => {}
        _ = &mut shutdown => return Ok(()),
    }
    let source = KafkaSource::subscribe(&config, stats.metrics.clone())?;
    let mut producer_config = config.kafka.clone();
    producer_config.client_id = format!("{}-deadletter", config.kafka.client_id);
    // A batch's dead letters are sent together and awaited: lingering only delays the batch.
    producer_config.linger_ms = producer_config.linger_ms.min(5);
    let dead_letters =
        KafkaDeadLetters::new(producer_config, store.clone()).context("cannot create the dead-letter producer")?;
    tracing::info!(group = config.group_id, topics = ?config.consume, brokers = config.kafka.brokers, "consuming");
    pipeline::run(source, &store, &dead_letters, config.batch, &stats, shutdown).await;
    Ok(())
}
