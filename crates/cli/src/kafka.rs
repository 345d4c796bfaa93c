//! `vigil kafka init`: creates Vigil's topics ahead, for operators who do not let services create
//! them (`kafka.topics.create = false`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_logbus::kafka::{KafkaConfig, KafkaSasl, KafkaTls, TopicSettings, create_topics, missing_topics};
use vigil_logbus::topics;

/// Kafka administration.
#[derive(Args, Debug)]
pub struct KafkaArgs {
    #[command(subcommand)]
    command: KafkaCommand,
}

#[derive(Subcommand, Debug)]
enum KafkaCommand {
    /// Create Vigil's topics (predictions, labels, feedback, dead letters) where missing.
    Init(InitArgs),
}

/// How a command reaches Kafka: the brokers, and TLS and SASL when the cluster requires them.
#[derive(Args, Debug, Clone)]
pub struct KafkaConnectArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "VIGIL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Connect over TLS, verifying the brokers against this CA bundle (PEM).
    #[arg(long, env = "VIGIL_KAFKA_CA_CERT")]
    pub kafka_ca_cert: Option<PathBuf>,
    /// Client certificate for brokers that require mutual TLS (with --kafka-client-key).
    #[arg(long, env = "VIGIL_KAFKA_CLIENT_CERT", requires = "kafka_client_key")]
    pub kafka_client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "VIGIL_KAFKA_CLIENT_KEY", requires = "kafka_client_cert")]
    pub kafka_client_key: Option<PathBuf>,
    /// Connect over TLS, verifying the brokers against the system's CA roots.
    #[arg(long)]
    pub kafka_tls: bool,
    /// SASL user (SCRAM); with --kafka-password-file.
    #[arg(long, env = "VIGIL_KAFKA_USERNAME", requires = "kafka_password_file")]
    pub kafka_username: Option<String>,
    /// A file holding the SASL password.
    #[arg(long, env = "VIGIL_KAFKA_PASSWORD_FILE", requires = "kafka_username")]
    pub kafka_password_file: Option<PathBuf>,
    /// SASL mechanism: SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN.
    #[arg(long, default_value = "SCRAM-SHA-256")]
    pub kafka_sasl_mechanism: String,
}

impl KafkaConnectArgs {
    /// Settings for a client named `client_id`; flag errors named as flags.
    pub fn config(&self, client_id: &str) -> Result<KafkaConfig> {
        let tls =
            (self.kafka_tls || self.kafka_ca_cert.is_some() || self.kafka_client_cert.is_some()).then(|| KafkaTls {
                ca_cert: self.kafka_ca_cert.clone(),
                client_cert: self.kafka_client_cert.clone(),
                client_key: self.kafka_client_key.clone(),
            });
        let sasl = self.kafka_username.as_ref().map(|username| KafkaSasl {
            mechanism: self.kafka_sasl_mechanism.clone(),
            username: username.clone(),
            password_file: self.kafka_password_file.clone(),
            password: None,
        });
        let config =
            KafkaConfig { brokers: self.brokers.clone(), client_id: client_id.into(), tls, sasl, ..Default::default() };
        config.validate().map_err(|e| anyhow::anyhow!("{}", e.replace("kafka.", "--kafka ")))?;
        Ok(config)
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    kafka: KafkaConnectArgs,
    /// Partitions of each created topic.
    #[arg(long, default_value_t = TopicSettings::default().partitions)]
    partitions: i32,
    /// Replicas of each partition (-1: the broker's default.replication.factor).
    #[arg(long, default_value_t = TopicSettings::default().replication_factor, allow_negative_numbers = true)]
    replication_factor: i32,
}

/// Runs the subcommand; returns the exit code.
pub async fn run(args: KafkaArgs) -> Result<u8> {
    let KafkaCommand::Init(args) = args.command;
    let settings =
        TopicSettings { create: true, partitions: args.partitions, replication_factor: args.replication_factor };
    settings.validate().map_err(|e| anyhow::anyhow!(e.replace("kafka.topics.", "--").replace('_', "-")))?;
    let config = args.kafka.config("vigil-kafka-init")?;
    let missing = missing_topics(&config, &topics::ALL).await.map_err(anyhow::Error::msg)?;
    let created = create_topics(&config, &topics::ALL, settings)
        .await
        .with_context(|| format!("cannot create topics on {}", config.brokers))?;
    for topic in topics::ALL {
        if created.iter().any(|c| c == topic) {
            println!("created {topic} ({} partitions)", settings.partitions);
        } else if missing.iter().any(|m| m == topic) {
            // Missing a moment ago, not created by us: someone else just did.
            println!("exists  {topic} (created meanwhile by another client)");
        } else {
            println!("exists  {topic}");
        }
    }
    Ok(0)
}
