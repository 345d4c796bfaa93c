//! Kafka through rdkafka: an idempotent producer (`acks=all`), topic creation, and the sink the
//! emitter uses.

use std::future::Future;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::emitter::{Envelope, Sink, SinkError};

/// Producer settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
    #[serde(default = "default_true")]
    pub idempotence: bool,
}

fn default_true() -> bool {
    true
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
        Ok(())
    }

    /// librdkafka settings shared by producers and admin clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        c
    }

    /// A producer with `acks=all`, idempotent unless configured otherwise, ordered per partition.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut config = self.client_config();
        if self.idempotence {
            config.set("enable.idempotence", "true");
        } else {
            config.set("enable.idempotence", "false").set("max.in.flight.requests.per.connection", "1");
        }
        config
            .set("acks", "all")
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", &self.compression)
            .create()
    }
}

/// Creates `topics` with `partitions` each; topics that exist already are fine.
pub async fn create_topics(config: &KafkaConfig, topics: &[&str], partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.client_config().create()?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic, ?code, "cannot create topic"));
            }
        }
    }
    Ok(())
}

/// The emitter's sink onto Kafka.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
}

impl KafkaSink {
    /// Wraps a producer made by [`KafkaConfig::producer`].
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

impl Sink for KafkaSink {
    fn send(&self, envelope: Envelope) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        // Enqueue now, in call order, so that records with one key keep their order; the
        // idempotent producer retries delivery until message.timeout.ms.
        let record = FutureRecord::to(&envelope.topic).key(&envelope.key).payload(&envelope.payload);
        let enqueued = self.producer.send_result(record).map_err(|(e, _)| e);
        let producer = self.producer.clone();
        async move {
            let delivery = match enqueued {
                Ok(delivery) => delivery,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    // librdkafka's local queue is full: wait for room.
                    let record = FutureRecord::to(&envelope.topic).key(&envelope.key).payload(&envelope.payload);
                    return producer
                        .send(record, Timeout::Never)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| SinkError(e.to_string()));
                }
                Err(e) => return Err(SinkError(e.to_string())),
            };
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(SinkError(e.to_string())),
                Err(_) => Err(SinkError("producer closed before delivery".into())),
            }
        }
    }
}
