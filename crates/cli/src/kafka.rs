//! `vigil kafka init`: creates Vigil's topics ahead, for operators who do not let services create
//! them (`kafka.topics.create = false`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_logbus::kafka::{KafkaConfig, TopicSettings, create_topics, missing_topics};
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

#[derive(Args, Debug)]
struct InitArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "VIGIL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
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
    let config =
        KafkaConfig { brokers: args.brokers.clone(), client_id: "vigil-kafka-init".into(), ..Default::default() };
    let missing = missing_topics(&config, &topics::ALL).await.map_err(anyhow::Error::msg)?;
    let created = create_topics(&config, &topics::ALL, settings)
        .await
        .with_context(|| format!("cannot create topics on {}", args.brokers))?;
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
