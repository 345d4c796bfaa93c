//! Prediction records from a server: the Kafka producer, the optional disk spool for when the
//! broker is away, and the emitter request handlers hand records to; drained in a
//! [`Lifecycle`] stage at shutdown.

use std::time::Duration;

use anyhow::{Context, Result};
use vigil_logbus::Emitter;
use vigil_logbus::kafka::KafkaSink;
use vigil_logbus::spool::Spool;
use vigil_serving::RecordEmitter;

use crate::config::LoggingConfig;
use crate::lifecycle::Lifecycle;

/// How often records waiting in the spool are offered to the broker again.
const REPLAY_INTERVAL: Duration = Duration::from_millis(500);

/// How long, at shutdown, records the broker did not take have to reach the spool.
const SPOOL_AT_EXIT: Duration = Duration::from_secs(10);

/// How long the forwarder is given, after the producer's last flush, to account for what it
/// delivered before what is left is counted lost.
const SETTLE_AFTER_FLUSH: Duration = Duration::from_millis(500);

/// Starts prediction logging as `config` says (None when it is off). At shutdown, `stage`
/// hands the last records to the broker within `drain`, then closes the spool: what is still
/// on disk is the next run's to replay.
pub fn start(
    config: &LoggingConfig,
    lifecycle: &mut Lifecycle,
    stage: &'static str,
    drain: Duration,
) -> Result<Option<RecordEmitter>> {
    if !config.enabled {
        return Ok(None);
    }
    let sink = KafkaSink::new(&config.kafka)
        .with_context(|| format!("cannot create the Kafka producer for {}", config.kafka.brokers))?;
    if config.kafka.topics.create {
        // Best effort, off the start-up path: the logger creates the topics too, and records
        // sent before the topic exists wait in the producer or the spool.
        let kafka = config.kafka.clone();
        lifecycle.spawn_helper(stage, "records topic check", move |stop| async move {
            tokio::select! {
                checked = vigil_logbus::kafka::ensure_topics(&kafka, &[vigil_logbus::topics::PREDICTIONS]) => {
                    if let Err(e) = checked {
                        tracing::warn!(error = %e, "records topic not checked; the logger creates it when it starts");
                    }
                }
                () = stop.stopped() => {}
            }
            Ok(())
        });
    }
    let spool = match &config.spool {
        Some(spool_config) => {
            let spool = Spool::open(spool_config.clone())
                .with_context(|| format!("cannot open the spool in {}", spool_config.dir.display()))?;
            if !spool.is_empty() {
                tracing::info!(records = spool.len(), "replaying records spooled by an earlier run");
            }
            Some(spool)
        }
        None => None,
    };
    let (emitter, forward) =
        Emitter::start_with_spool(sink.clone(), config.queue_capacity, config.max_in_flight, spool, REPLAY_INTERVAL);
    let policy = config.policy.load().map_err(anyhow::Error::msg)?;
    let records = RecordEmitter::new(emitter.clone(), config.server_id.clone()).with_policy(policy);
    lifecycle.spawn(stage, "records", move |stop| async move {
        stop.stopped().await;
        if !emitter.drain(drain).await {
            // The broker is not taking them: what the producer holds and what is queued goes to
            // the spool for the next run, instead of being lost with the process.
            let abandon = || sink.abandon_undelivered();
            if emitter.spool_the_rest(abandon, SPOOL_AT_EXIT).await {
                tracing::warn!("the broker did not take the last prediction records: spooled for the next run");
            } else {
                tracing::warn!("prediction records still queued at exit");
            }
        }
        let flushed = tokio::task::spawn_blocking(move || sink.flush(drain)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "records not flushed to Kafka before exit"),
            Err(e) => tracing::warn!(error = %e, "records flush failed"),
        }
        emitter.close_spool().await;
        // The forwarder accounts for what the flush delivered, then stops; what is not settled
        // then goes with the process: said and counted, not lost unseen.
        emitter.drain(SETTLE_AFTER_FLUSH).await;
        forward.abort();
        let _ = forward.await;
        let lost = emitter.give_up_unsettled();
        if lost > 0 {
            tracing::error!(
                records = lost,
                "prediction records neither delivered to Kafka nor spooled at exit: lost (some may have reached \
                 the broker unconfirmed); configure [logging.spool] to keep them through an outage"
            );
        }
        Ok(())
    });
    Ok(Some(records))
}
