//! Kafka through rdkafka: an idempotent producer (`acks=all`), topic creation, and the sink the
//! emitter uses.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;

use crate::emitter::{EmitterStats, Envelope, Sink, SinkError};
use crate::kafka_security;
pub use crate::kafka_security::{KafkaSasl, KafkaTls};

/// Connection and producer settings, shared by every service that talks to Kafka.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Client id reported to the broker.
    pub client_id: String,
    /// How long the producer keeps retrying one record before reporting it failed.
    pub message_timeout_ms: u64,
    /// How long records wait to fill a batch. Records are off the request's path, so the default
    /// (500 ms) favours fewer, larger produce requests: about a third of the server's and the
    /// broker's CPU per record compared with 5 ms (README, logging benchmark).
    pub linger_ms: u64,
    /// Compression: none, gzip, lz4 or zstd (snappy is refused: some brokers corrupt it).
    pub compression: String,
    /// Idempotent producer (no duplicates from retries, order kept). Turning it off keeps
    /// `acks=all` and order (one request in flight per connection); duplicates from retries
    /// are then removed downstream by the logger's idempotent inserts. For brokers without
    /// working idempotence support.
    pub idempotence: bool,
    /// How the topics a service uses are created when they are missing.
    pub topics: TopicSettings,
    /// TLS to the brokers (`[kafka.tls]`): protocol `ssl`, or `sasl_ssl` with `sasl`.
    pub tls: Option<KafkaTls>,
    /// SASL credentials (`[kafka.sasl]`): SCRAM-SHA-256/512, or PLAIN over TLS.
    pub sasl: Option<KafkaSasl>,
}

/// Topic creation: each service creates the topics it uses at start, when they are missing
/// (`vigil kafka init` does the same for operators who create topics ahead).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Create missing topics at start (default true). Off for clusters where only operators
    /// create topics; a missing topic is then reported, not created.
    pub create: bool,
    /// Partitions of a created topic (default 6): the most loggers that can share the work,
    /// and the most stations whose records are written in parallel.
    pub partitions: i32,
    /// Replicas of each partition (default -1: the broker's `default.replication.factor`).
    /// Use 3 on a production cluster of three or more brokers.
    pub replication_factor: i32,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self { create: true, partitions: 6, replication_factor: -1 }
    }
}

impl TopicSettings {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions < 1 {
            return Err(format!("kafka.topics.partitions = {}: must be at least 1", self.partitions));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(format!(
                "kafka.topics.replication_factor = {}: use -1 (the broker's default) or at least 1",
                self.replication_factor
            ));
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "vigil".into(),
            message_timeout_ms: 30_000,
            linger_ms: 500,
            compression: "lz4".into(),
            idempotence: true,
            topics: TopicSettings::default(),
            tls: None,
            sasl: None,
        }
    }
}

impl KafkaConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers must not be empty".into());
        }
        if !["none", "gzip", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(format!("kafka.compression = '{}': use none, gzip, lz4 or zstd", self.compression));
        }
        kafka_security::validate(self.tls.as_ref(), self.sasl.as_ref())?;
        self.topics.validate()
    }

    /// librdkafka settings shared by producers, consumers and admin clients, with the
    /// connection's security (fails when the SASL password file cannot be read).
    pub fn client_config(&self) -> Result<ClientConfig, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        kafka_security::apply(&mut c, self.tls.as_ref(), self.sasl.as_ref()).map_err(KafkaError::ClientCreation)?;
        Ok(c)
    }

    /// Logs a warning when records would cross a network in clear: no `[kafka.tls]` and a
    /// broker beyond loopback.
    pub fn warn_if_plaintext(&self) {
        if self.tls.is_some() {
            return;
        }
        let remote: Vec<&str> = self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| {
                let host = b.rsplit_once(':').map_or(*b, |(host, _)| host).trim_matches(['[', ']']);
                host != "localhost" && !host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            })
            .collect();
        if !remote.is_empty() {
            tracing::warn!(brokers = ?remote, "Kafka without TLS: records cross the network in clear; add [kafka.tls]");
        }
    }

    /// A producer with `acks=all`, idempotent unless configured otherwise, ordered per partition.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.producer_config()?.create()
    }

    /// The client configuration [`KafkaConfig::producer`] creates its producer from.
    pub fn producer_config(&self) -> Result<ClientConfig, KafkaError> {
        self.warn_if_plaintext();
        let mut config = self.client_config()?;
        if self.idempotence {
            config.set("enable.idempotence", "true");
        } else {
            config.set("enable.idempotence", "false").set("max.in.flight.requests.per.connection", "1");
        }
        config
            .set("acks", "all")
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", &self.compression);
        Ok(config)
    }
}

/// Creates those of `topics` that do not exist yet with `settings`; returns the names of the
/// ones it created. Topics that exist already are left as they are (also when another client
/// creates them at the same moment).
pub async fn create_topics(
    config: &KafkaConfig,
    topics: &[&str],
    settings: TopicSettings,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.client_config()?.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, settings.partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(created)
}

/// Creates the missing ones of `topics` when `config.topics.create` is on, logging each topic
/// created; with creation off, only checks and reports what is missing.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), String> {
    if config.topics.create {
        let created = create_topics(config, topics, config.topics)
            .await
            .map_err(|e| format!("cannot create the topics {topics:?} on {}: {e}", config.brokers))?;
        for topic in &created {
            tracing::info!(
                topic,
                partitions = config.topics.partitions,
                replication_factor = config.topics.replication_factor,
                "created topic"
            );
        }
        return Ok(());
    }
    let missing = missing_topics(config, topics).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "topics {missing:?} do not exist on {} and kafka.topics.create is off: create them (vigil kafka init)",
            config.brokers
        ))
    }
}

/// Which of `topics` the cluster does not have.
pub async fn missing_topics(config: &KafkaConfig, topics: &[&str]) -> Result<Vec<String>, String> {
    let config = config.clone();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.client_config().and_then(|c| c.create()).map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(None, Timeout::After(Duration::from_secs(30)))
            .map_err(|e| format!("cannot read the topics of {}: {e}", config.brokers))?;
        let present: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        Ok(topics.into_iter().filter(|t| !present.contains(&t.as_str())).collect())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The emitter's sink onto Kafka. An idempotent producer that meets a fatal error (the broker
/// lost acknowledged records, or the sequence of a partition broke) refuses every record after
/// it; the sink then replaces it with a new producer and fails what the old one held as
/// transient, so that the emitter spools those records and replays them through the new one.
/// Replacements are paced ([`RestartPacing`]): a fatal error that recurs on every new producer
/// (its cause on the broker's side) makes one new producer per pause, the pause doubling from
/// 10 s up to 10 min, while the records wait in the spool. An emitter without a spool would
/// lose them: its sink replaces the producer at most once a second instead.
#[derive(Clone)]
pub struct KafkaSink {
    shared: Arc<Shared>,
}

struct Shared {
    config: KafkaConfig,
    producer: ArcSwap<FutureProducer>,
    /// The emitter's counters, where replacements are counted (`sink_restarts`).
    stats: OnceLock<Arc<EmitterStats>>,
    pacing: Mutex<RestartPacing>,
    /// A flush is under way (see [`Sink::hurry`]): one at a time.
    flushing: Arc<std::sync::atomic::AtomicBool>,
    /// librdkafka properties set over the configuration's in every producer made.
    overrides: Vec<(String, String)>,
    /// Records that found the producer's local queue full, in call order, with where to say
    /// they are in it: every record sent while one waits queues behind it (see [`KafkaSink::send`]).
    waiting: Mutex<VecDeque<(Envelope, tokio::sync::oneshot::Sender<PutIn>)>>,
}

/// A waiting record put in the producer's queue (its delivery, and the producer), or refused.
type PutIn = Result<(DeliveryFuture, Arc<FutureProducer>), (KafkaError, Arc<FutureProducer>)>;

/// Where a record sent went: into the producer's queue (or refused) at once, or in line.
enum Start {
    Now(Result<DeliveryFuture, KafkaError>),
    InLine(tokio::sync::oneshot::Receiver<PutIn>),
}

/// How long a record that found the producer's queue full waits before it tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

impl KafkaSink {
    /// A sink on a producer made by [`KafkaConfig::producer`].
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Self::with_overrides(config, &[])
    }

    /// As [`KafkaSink::new`], with librdkafka properties set over the configuration's in every
    /// producer it makes (a small `queue.buffering.max.messages`, say).
    pub fn with_overrides(config: &KafkaConfig, overrides: &[(&str, &str)]) -> Result<Self, KafkaError> {
        let overrides: Vec<(String, String)> = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let producer = make_producer(config, &overrides)?;
        Ok(Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                producer: ArcSwap::from_pointee(producer),
                stats: OnceLock::new(),
                pacing: Mutex::new(RestartPacing::default()),
                flushing: Arc::default(),
                overrides,
                waiting: Mutex::default(),
            }),
        })
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<(Envelope, tokio::sync::oneshot::Sender<PutIn>)>> {
        self.shared.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the waiting records in the producer's queue, oldest first, while it takes them;
    /// tells each where it went.
    fn put_waiting_in(&self) {
        let mut waiting = self.lock_waiting();
        while let Some((envelope, _)) = waiting.front() {
            let producer = self.producer();
            let record = FutureRecord::to(&envelope.topic).key(&envelope.key).payload(&envelope.payload);
            let result = producer.send_result(record).map_err(|(e, _)| e);
            if matches!(result, Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))) {
                return;
            }
            let Some((_, reply)) = waiting.pop_front() else { return };
            let _ = reply.send(match result {
                Ok(delivery) => Ok((delivery, producer)),
                Err(e) => Err((e, producer)),
            });
        }
    }

    /// Paces producer replacements with `pacing` instead of the default (10 s doubling to 10
    /// min). Call before the first record is sent.
    pub fn with_restart_pacing(self, pacing: RestartPacing) -> Self {
        *self.lock_pacing() = pacing;
        self
    }

    fn lock_pacing(&self) -> std::sync::MutexGuard<'_, RestartPacing> {
        self.shared.pacing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The producer records go through now.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.shared.producer.load_full()
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(Timeout::After(timeout))
    }

    /// Gives up on every record the producer still holds, queued or sent but not acknowledged:
    /// each fails at once (at shutdown, so the emitter can spool it instead of losing it). A
    /// record the broker did take may then be replayed too: downstream inserts are idempotent.
    pub fn abandon_undelivered(&self) {
        self.producer().purge(PurgeConfig::default().queue().inflight());
    }

    /// The error for a record `producer` did not deliver. When `producer` has met a fatal error
    /// it is replaced (once: a later caller finds the new one in place) and the error is
    /// transient, whatever the record's own error said.
    fn failed(&self, producer: &FutureProducer, e: KafkaError) -> SinkError {
        let Some((code, reason)) = producer.client().fatal_error() else {
            return sink_error(e);
        };
        self.replace(producer, code, &reason);
        SinkError::transient(format!("the producer met a fatal error ({code:?}: {reason}); sent again by a new one"))
    }

    fn replace(&self, failed: &FutureProducer, code: RDKafkaErrorCode, reason: &str) {
        // Replacements happen under the pacing lock, one at a time: a caller that waited for it
        // finds the producer it failed on already replaced.
        let mut pacing = self.lock_pacing();
        let current = self.shared.producer.load();
        if current.client().native_ptr() != failed.client().native_ptr() {
            return; // Replaced already.
        }
        if let Some(wait) = pacing.too_soon(Instant::now()) {
            if !std::mem::replace(&mut pacing.deferral_logged, true) {
                tracing::error!(
                    ?code,
                    reason,
                    wait_s = wait.as_secs_f64(),
                    "Kafka producer met a fatal error again soon after the last replacement: a new producer \
                     is made after a pause, records are kept in the spool until then; check the broker's log"
                );
            }
            return;
        }
        match make_producer(&self.shared.config, &self.shared.overrides) {
            Ok(fresh) => {
                let previous = self.shared.producer.compare_and_swap(&current, Arc::new(fresh));
                if !Arc::ptr_eq(&previous, &current) {
                    return; // Another caller replaced it meanwhile.
                }
                // Whatever the failed producer still holds fails now, and is spooled and sent
                // again through the new one.
                failed.purge(PurgeConfig::default().queue().inflight());
                pacing.replaced(Instant::now());
                drop(pacing);
                retire(arc_swap::Guard::into_inner(previous));
                if let Some(stats) = self.shared.stats.get() {
                    stats.sink_restarts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(?code, reason, "Kafka producer met a fatal error: replaced by a new producer");
            }
            Err(e) => {
                tracing::error!(?code, reason, error = %e, "Kafka producer met a fatal error and cannot be replaced yet");
            }
        }
    }
}

/// How often the sink may replace a producer that met a fatal error: the first replacement at
/// once; each later one at least `pause` after the one before, the pause doubling with every
/// replacement up to `max_pause` and back to `first_pause` once a producer has lasted twice
/// `max_pause`.
#[derive(Debug, Clone)]
pub struct RestartPacing {
    /// The pause after a first replacement.
    pub first_pause: Duration,
    /// The longest pause; a producer that lasts twice as long resets the pause to `first_pause`.
    pub max_pause: Duration,
    last: Option<Instant>,
    pause: Duration,
    deferral_logged: bool,
}

impl Default for RestartPacing {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(600))
    }
}

impl RestartPacing {
    /// Pauses from `first_pause` doubling up to `max_pause` (at least `first_pause`).
    pub fn new(first_pause: Duration, max_pause: Duration) -> Self {
        let max_pause = max_pause.max(first_pause);
        Self { first_pause, max_pause, last: None, pause: first_pause, deferral_logged: false }
    }

    /// How much longer a replacement must wait at `now`; `None` when it may go ahead.
    fn too_soon(&self, now: Instant) -> Option<Duration> {
        let last = self.last?;
        let since = now.saturating_duration_since(last);
        (since < self.pause).then(|| self.pause - since)
    }

    /// Records a replacement made at `now`, setting the pause before the next one.
    fn replaced(&mut self, now: Instant) {
        self.pause = match self.last {
            Some(last) if now.saturating_duration_since(last) < self.max_pause * 2 => {
                (self.pause * 2).min(self.max_pause)
            }
            _ => self.first_pause,
        };
        self.last = Some(now);
        self.deferral_logged = false;
    }
}

/// Drops a replaced producer on a thread of its own once the deliveries that hold it have
/// ended: dropping one joins its polling thread and flushes, which must not stall an async
/// worker.
fn retire(producer: Arc<FutureProducer>) {
    let retiring = std::thread::Builder::new().name("vigil-kafka-retire".into()).spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&producer) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(producer);
    });
    if let Err(e) = retiring {
        tracing::warn!(error = %e, "cannot start a thread to drop the replaced Kafka producer");
    }
}

impl Sink for KafkaSink {
    fn hurry(&self) {
        // librdkafka's flush sends what lingers at once and waits for the acknowledgements; it
        // blocks, so it runs on a blocking thread, one at a time, for 5 s at most (a broker that
        // is down would keep it; what is left is sent when its linger ends, as usual).
        if self.shared.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (producer, flushing) = (self.producer(), self.shared.flushing.clone());
        let timeout = match self.shared.config.message_timeout_ms {
            0 => Duration::from_secs(5), // no timeout
            ms => Duration::from_millis(ms).min(Duration::from_secs(5)),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            flushing.store(false, Ordering::Release);
            return;
        };
        runtime.spawn_blocking(move || {
            // librdkafka's own call with the whole timeout: it ignores the linger while it
            // waits. rdkafka's `flush` calls it with no timeout in a loop of 100 ms polls, during
            // which the linger applies again.
            let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: a live producer handle (held by `producer` until the call returns).
            let _ = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), timeout_ms) };
            flushing.store(false, Ordering::Release);
        });
    }

    fn attach(&self, stats: &Arc<EmitterStats>, spooled: bool) {
        let _ = self.shared.stats.set(stats.clone());
        if !spooled {
            // Records failed while a replacement waits would be lost: replace within a second
            // instead (no more often, for a cause that strikes every new producer).
            *self.lock_pacing() = RestartPacing::new(Duration::from_secs(1), Duration::from_secs(1));
        }
    }

    fn send(&self, envelope: Envelope) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        // Enqueue now, in call order, so that records with one key keep their order; the
        // idempotent producer retries delivery until message.timeout.ms. A record that finds
        // librdkafka's local queue full waits in line, and so does every record sent while one
        // waits, so none finds room before a record sent ahead of it.
        let mut producer = self.producer();
        let mut waiting = self.lock_waiting();
        let mut started = None;
        if waiting.is_empty() {
            let record = FutureRecord::to(&envelope.topic).key(&envelope.key).payload(&envelope.payload);
            match producer.send_result(record).map_err(|(e, _)| e) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {}
                result => started = Some(result),
            }
        }
        let start = match started {
            Some(result) => Start::Now(result),
            None => {
                let (reply, put_in) = tokio::sync::oneshot::channel();
                waiting.push_back((envelope, reply));
                Start::InLine(put_in)
            }
        };
        drop(waiting);
        let sink = self.clone();
        async move {
            let enqueued = match start {
                Start::Now(result) => result,
                Start::InLine(mut put_in) => loop {
                    // Any waiting record's sender puts the line in, oldest first.
                    sink.put_waiting_in();
                    match put_in.try_recv() {
                        Ok(Ok((delivery, by))) => {
                            producer = by;
                            break Ok(delivery);
                        }
                        Ok(Err((e, by))) => {
                            producer = by;
                            break Err(e);
                        }
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                            tokio::time::sleep(QUEUE_FULL_PAUSE).await
                        }
                        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                            return Err(SinkError::transient("the record's place in line was lost"));
                        }
                    }
                },
            };
            let delivery = match enqueued {
                Ok(delivery) => delivery,
                Err(e) => return Err(sink.failed(&producer, e)),
            };
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(sink.failed(&producer, e)),
                Err(_) => Err(SinkError::transient("producer closed before delivery")),
            }
        }
    }
}

/// The producer `config` makes, with `overrides` set over its properties.
fn make_producer(config: &KafkaConfig, overrides: &[(String, String)]) -> Result<FutureProducer, KafkaError> {
    if overrides.is_empty() {
        return config.producer();
    }
    let mut made = config.producer_config()?;
    for (key, value) in overrides {
        made.set(key, value);
    }
    made.create()
}

/// A producer error as a sink error: permanent when the record itself is at fault, doubtful
/// when the broker found it corrupt.
fn sink_error(e: KafkaError) -> SinkError {
    SinkError { permanent: refused_for_good(&e), doubtful: found_corrupt(&e), message: e.to_string() }
}

/// Whether the broker refused a record as corrupt (CORRUPT_MESSAGE: a checksum that failed,
/// which Kafka counts as retriable: bytes damaged on the way are whole on another try; or a
/// record at fault, which no try delivers).
pub fn found_corrupt(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidMessage)
}

/// Whether a producer refused a record for what it is (too large for the producer or the topic,
/// refused as an invalid record), which no retry changes.
pub fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_errors_are_classed_by_what_a_later_try_can_change() {
        let class = |code| {
            let e = sink_error(KafkaError::MessageProduction(code));
            (e.permanent, e.doubtful)
        };
        assert_eq!(class(RDKafkaErrorCode::MessageSizeTooLarge), (true, false));
        assert_eq!(class(RDKafkaErrorCode::InvalidRecord), (true, false));
        assert_eq!(class(RDKafkaErrorCode::InvalidMessage), (false, true), "CORRUPT_MESSAGE: tried once more");
        assert_eq!(class(RDKafkaErrorCode::MessageTimedOut), (false, false));
        assert_eq!(class(RDKafkaErrorCode::NotEnoughReplicas), (false, false));
    }

    #[test]
    fn restarts_are_paced_doubling_and_reset_after_a_quiet_spell() {
        let s = Duration::from_secs;
        let mut pacing = RestartPacing::new(s(10), s(60));
        let t0 = Instant::now();
        assert_eq!(pacing.too_soon(t0), None, "the first replacement goes ahead at once");
        pacing.replaced(t0);
        assert_eq!(pacing.too_soon(t0 + s(4)), Some(s(6)));
        assert_eq!(pacing.too_soon(t0 + s(10)), None);
        let t1 = t0 + s(10);
        pacing.replaced(t1);
        assert_eq!(pacing.too_soon(t1 + s(19)), Some(s(1)), "the pause doubled");
        let t2 = t1 + s(20);
        pacing.replaced(t2);
        let t3 = t2 + s(40);
        pacing.replaced(t3);
        assert_eq!(pacing.too_soon(t3 + s(59)), Some(s(1)), "capped at the longest pause");
        let t4 = t3 + s(60);
        pacing.replaced(t4);
        assert_eq!(pacing.too_soon(t4 + s(59)), Some(s(1)), "still capped");
        // A producer that lasted twice the longest pause: the next pause is the first one again.
        let t5 = t4 + s(120);
        pacing.replaced(t5);
        assert_eq!(pacing.too_soon(t5 + s(9)), Some(s(1)));
        assert_eq!(pacing.too_soon(t5 + s(10)), None);
    }

    #[test]
    fn without_a_spool_a_producer_is_replaced_within_a_second_every_time() {
        let config = KafkaConfig { brokers: "127.0.0.1:9".into(), ..Default::default() };
        let (spooled, unspooled) = (KafkaSink::new(&config).unwrap(), KafkaSink::new(&config).unwrap());
        spooled.attach(&Arc::default(), true);
        unspooled.attach(&Arc::default(), false);
        let now = Instant::now();
        for sink in [&spooled, &unspooled] {
            sink.lock_pacing().replaced(now);
        }
        let later = now + Duration::from_secs(1);
        assert!(spooled.lock_pacing().too_soon(later).is_some(), "paced: the records wait in the spool");
        assert_eq!(unspooled.lock_pacing().too_soon(later), None, "records failed meanwhile would be lost");
        assert!(unspooled.lock_pacing().too_soon(now).is_some(), "once a second at most");
    }

    #[test]
    fn the_longest_pause_is_never_below_the_first() {
        let pacing = RestartPacing::new(Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(pacing.max_pause, Duration::from_secs(30));
    }
}
