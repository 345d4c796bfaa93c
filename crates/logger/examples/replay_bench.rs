//! Spool replay benchmark: how fast a server's backlog reaches a real broker (Apache Kafka, one
//! KRaft broker) once the uplink is back. N prediction records are written to a spool as an
//! outage leaves them; an emitter with the shipped producer settings (500 ms linger) and the
//! shipped replay interval then replays them, alone and beside live records emitted at a steady
//! rate. Prints records per second replayed and the CPU the process spent per record.
//!
//!     cargo run --release -p vigil-logger --example replay_bench -- [records, default 100000]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use support::{Broker, bench_record};
use vigil_logbus::kafka::KafkaSink;
use vigil_logbus::spool::{FsyncPolicy, Spool, SpoolConfig};
use vigil_logbus::{Emitter, Envelope, topics};
use vigil_telemetry::process;

/// The server's replay interval (`vigil-server`'s records).
const REPLAY_INTERVAL: Duration = Duration::from_millis(500);

fn record(i: usize) -> Envelope {
    let record = bench_record(i);
    Envelope { topic: topics::PREDICTIONS.into(), key: record.station_id.clone(), payload: record.encode_to_vec() }
}

/// Replays a spool of `records` through a new emitter, with `live` records a second emitted
/// meanwhile; returns (seconds to empty the spool, process CPU µs per record sent).
async fn replay(broker: &Broker, records: usize, live: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config =
        SpoolConfig { dir: dir.path().into(), max_bytes: 4 << 30, fsync: FsyncPolicy::Never, ..Default::default() };
    let mut spool = Spool::open(config.clone()).unwrap();
    for i in 0..records {
        spool.append(&record(i)).unwrap();
    }
    drop(spool);
    let spool = Spool::open(config).unwrap();
    let sink = KafkaSink::new(&broker.kafka()).unwrap();
    let cpu = || process::read().map_or(0.0, |s| s.cpu_seconds);
    let (cpu_before, started) = (cpu(), Instant::now());
    let (emitter, _task) = Emitter::start_with_spool(sink, 10_000, 1_000, Some(spool), REPLAY_INTERVAL);
    let mut sent_live = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_report = Instant::now();
    loop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * live as f64) as u64;
        while sent_live < due {
            emitter.emit(record(sent_live as usize));
            sent_live += 1;
        }
        let replayed = emitter.stats().replayed.load(Ordering::Relaxed);
        if replayed >= records as u64 && emitter.spooled_now() == 0 {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let s = emitter.stats();
            eprintln!(
                "  {:.0} s: {replayed} of {records} replayed, {} delivered live, {} in the spool, {} failed",
                started.elapsed().as_secs_f64(),
                s.delivered.load(Ordering::Relaxed),
                emitter.spooled_now(),
                s.failed.load(Ordering::Relaxed)
            );
        }
        assert!(started.elapsed() < Duration::from_secs(600), "replayed {replayed} of {records} in 10 minutes");
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(emitter.drain(Duration::from_secs(30)).await);
    let cpu_us = (cpu() - cpu_before) * 1e6 / (records as f64 + sent_live as f64);
    (seconds, cpu_us)
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("records: a number"));
    let broker = Broker::start(6).await;
    let kafka = broker.kafka();
    vigil_logbus::kafka::create_topics(&kafka, &[topics::PREDICTIONS], kafka.topics).await.unwrap();
    println!("| spool replay | records | live records/s | seconds | replayed records/s | process CPU µs/record |");
    println!("|---|---:|---:|---:|---:|---:|");
    for live in [0, 1_000] {
        let (seconds, cpu_us) = replay(&broker, records, live).await;
        println!(
            "| {} | {records} | {live} | {seconds:.1} | {:.0} | {cpu_us:.1} |",
            if live == 0 { "backlog alone" } else { "beside live traffic" },
            records as f64 / seconds
        );
    }
}
