//! Logger ingestion benchmark: N prediction records on a real broker (Apache Kafka, 4
//! partitions), drained into a fresh Postgres database by one logger, then by two and four
//! loggers of one consumer group sharing the partitions. A last
//! row runs the logger's own work without a broker (decode and insert the same messages, in
//! the logger's batch size and with its batches in flight, into a fresh database), which bounds
//! what a logger can do when the broker is not the limit. Prints records per second for each, and the ratios.
//!
//!     cargo run --release -p vigil-logger --example ingest_bench -- [records, default 200000]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Broker, Database, RunningLogger, bench_record};
use vigil_logbus::topics;
use vigil_logger::batch::{Consumed, decode};
use vigil_logger::{BatchSettings, LoggerConfig};
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;
use vigil_telemetry::process;

/// CPU seconds so far of: this process (the loggers), the broker, and every Postgres process.
fn cpu(broker: &Broker) -> [f64; 3] {
    let of = |pid: u32| process::read_pid(pid).map_or(0.0, |s| s.cpu_seconds);
    let postgres: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(of)
        .sum();
    [process::read().map_or(0.0, |s| s.cpu_seconds), broker.pid().map_or(0.0, of), postgres]
}

/// A drain's throughput, time, and CPU µs per record of loggers, broker and Postgres.
struct Drained {
    records_per_second: f64,
    total: Duration,
    cpu_us: [f64; 3],
    /// The predictions table with its indexes and TOAST, per row.
    bytes_per_row: f64,
}

async fn drain(broker: &Broker, records: usize, loggers: usize, group: &str) -> Drained {
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 1).unwrap();
    store.migrate().await.unwrap();
    let started = Instant::now();
    let cpu_before = cpu(broker);
    let running: Vec<RunningLogger> = (0..loggers)
        .map(|_| {
            RunningLogger::start(LoggerConfig {
                group_id: group.into(),
                migrate: false,
                ..LoggerConfig::new(broker.brokers(), db.url())
            })
        })
        .collect();
    // Throughput counts from the first stored record: joining the consumer group (a few seconds
    // with a fresh group) is start-up, reported apart.
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let n = store.count_predictions().await.unwrap();
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= records as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t_first, n_first) = first.expect("records stored");
    let steady = t_first.elapsed();
    eprintln!(
        "  first records stored after {:.1} s; the rest in {:.1} s",
        (t_first - started).as_secs_f64(),
        steady.as_secs_f64()
    );
    let cpu_after = cpu(broker);
    for logger in running {
        logger.stop().await;
    }
    let bytes: i64 =
        sqlx::query_scalar("SELECT pg_total_relation_size('predictions')").fetch_one(store.pool()).await.unwrap();
    Drained {
        bytes_per_row: bytes as f64 / records as f64,
        records_per_second: (records as i64 - n_first) as f64 / steady.as_secs_f64(),
        total: started.elapsed(),
        cpu_us: std::array::from_fn(|i| (cpu_after[i] - cpu_before[i]) * 1e6 / records as f64),
    }
}

/// Decode and insert in the logger's batch size, as many batches at once as the logger writes,
/// with no broker: the logger's ceiling on this database.
async fn without_broker(records: usize) -> (f64, Duration) {
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let BatchSettings { max_records: batch, max_in_flight: max_batches_in_flight, .. } = LoggerConfig::default().batch;
    let messages: Vec<Consumed> = (0..records)
        .map(|i| Consumed {
            topic: topics::PREDICTIONS.into(),
            partition: (i % 4) as i32,
            offset: (i / 4) as i64,
            key: None,
            payload: Some(bench_record(i).encode_to_vec()),
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(messages.chunks(batch))
        .map(|chunk| {
            let store = store.clone();
            async move {
                let decoded = decode(chunk);
                store.insert_batch(&decoded.predictions, &decoded.labels).await.unwrap();
            }
        })
        .buffered(max_batches_in_flight)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(store.count_predictions().await.unwrap(), records as i64);
    (records as f64 / elapsed.as_secs_f64(), elapsed)
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::args().nth(1).map(|a| a.parse().expect("records: a number")).unwrap_or(200_000);
    let broker = Broker::start_with(vigil_testkit::kafka::Profile::Throughput, 4).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    eprintln!("producing {records} records ...");
    let t0 = Instant::now();
    futures::stream::iter(0..records)
        .map(|i| {
            let producer = producer.clone();
            async move {
                let r = bench_record(i);
                let payload = r.encode_to_vec();
                producer
                    .send(
                        FutureRecord::to(topics::PREDICTIONS).key(&r.station_id).payload(&payload),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        })
        .buffer_unordered(5_000)
        .collect::<Vec<_>>()
        .await;
    eprintln!("produced in {:.1} s", t0.elapsed().as_secs_f64());
    eprintln!("the logger's work without a broker ...");
    let (alone, t3) = without_broker(records).await;
    let mut groups = Vec::new();
    for loggers in [1, 2, 4] {
        eprintln!("{loggers} logger(s) ...");
        groups.push((loggers, drain(&broker, records, loggers, &format!("bench-{loggers}")).await));
    }
    println!("\n{}", vigil_telemetry::benchmark_header());
    println!(
        "\n| logger ingestion | records | seconds (incl. group join) | records/s (after the first batch) | vs one logger | CPU µs/record: loggers, broker, Postgres |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    let cpu = |d: &Drained| format!("{:.1}, {:.1}, {:.1}", d.cpu_us[0], d.cpu_us[1], d.cpu_us[2]);
    let base = groups[0].1.records_per_second;
    for (loggers, d) in &groups {
        let name = if *loggers == 1 { "1 logger".to_string() } else { format!("{loggers} loggers") };
        println!(
            "| {name} | {records} | {:.1} | {:.0} | {:.2}x | {} |",
            d.total.as_secs_f64(),
            d.records_per_second,
            d.records_per_second / base,
            cpu(d)
        );
    }
    println!(
        "| decode + insert, no broker ({} batches in flight) | {records} | {:.1} | {alone:.0} | {:.2}x | - |",
        LoggerConfig::default().batch.max_in_flight,
        t3.as_secs_f64(),
        alone / base
    );
    println!("\nPostgres: {:.0} bytes per stored prediction (table, indexes and TOAST)", groups[0].1.bytes_per_row);
}
