//! Serving throughput with prediction logging on versus off, same load, same run: an edge
//! server with the shipped model, 16 closed-loop Inspect clients, records to a real broker.
//!
//! Two layouts, each alternating off/on twice:
//! - **shared**: the broker, the server and the load generator all share every core;
//! - **broker apart**: the broker pinned to the last core, this process (server and load
//!   generator) to the others, as when the broker runs on its own machine.
//!
//! For each run it also prints the CPU time per request of this process and of the broker, read
//! from `/proc`, so the cost can be split between the server and the broker.
//!
//!     cargo run --release -p vigil-logger --example logging_cost -- [seconds per run, default 5]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Broker;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_telemetry::process;

const CLIENTS: usize = 16;

/// One measured run.
struct Run {
    requests_per_second: f64,
    /// CPU time of this process (server, load generator, Kafka client) per request.
    server_cpu_us: f64,
    /// CPU time of the broker per request.
    broker_cpu_us: f64,
}

fn cpu_seconds(pid: Option<u32>) -> f64 {
    let stat = match pid {
        Some(pid) => process::read_pid(pid),
        None => process::read(),
    };
    stat.map_or(0.0, |s| s.cpu_seconds)
}

async fn measure(broker: &Broker, logging: bool, seconds: f64, image: &[u8]) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut config = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root.join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    config.logging.enabled = logging;
    config.logging.kafka.brokers = broker.brokers();
    let server = vigil_edge::start(config, false).await.unwrap();
    let client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let duration = Duration::from_secs_f64(seconds);
    let (server_cpu, broker_cpu) = (cpu_seconds(None), cpu_seconds(broker.pid()));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut c = client.clone();
            let image = image.to_vec();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < duration {
                    let r = InspectRequest {
                        image: image.clone(),
                        station_id: format!("line-{}", i % 4),
                        ..Default::default()
                    };
                    c.inspect(r).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Records still in the producer's hands are part of this run's cost: wait for them.
    if let Some(records) = &server.records {
        records.emitter().drain(Duration::from_secs(30)).await;
        let (emitted, delivered, failed, dropped) = records.emitter().stats().snapshot();
        eprintln!("  records: emitted {emitted}, delivered {delivered}, failed {failed}, dropped {dropped}");
    }
    let per_request = |before: f64, after: f64| (after - before) * 1e6 / total as f64;
    let run = Run {
        requests_per_second: total as f64 / elapsed,
        server_cpu_us: per_request(server_cpu, cpu_seconds(None)),
        broker_cpu_us: per_request(broker_cpu, cpu_seconds(broker.pid())),
    };
    server.shutdown().await.unwrap();
    run
}

/// Pins every thread of `pid` to `cpus` (a taskset list such as "0" or "0-1").
fn pin(pid: u32, cpus: &str) {
    let status = Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).output();
    match status {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("taskset failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("taskset (util-linux) is needed to pin the broker: {e}"),
    }
}

fn mean(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(f).sum::<f64>() / runs.len() as f64
}

async fn layout(name: &str, broker: &Broker, seconds: f64, image: &[u8]) -> Vec<String> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..2 {
        eprintln!("{name}, round {round}: logging off ...");
        off.push(measure(broker, false, seconds, image).await);
        eprintln!("{name}, round {round}: logging on ...");
        on.push(measure(broker, true, seconds, image).await);
    }
    let base = mean(&off, |r| r.requests_per_second);
    let row = |label: &str, runs: &[Run]| {
        let rate = mean(runs, |r| r.requests_per_second);
        format!(
            "| {name} | {label} | {rate:.0} | {:.3}x | {:.0} | {:.0} |",
            rate / base,
            mean(runs, |r| r.server_cpu_us),
            mean(runs, |r| r.broker_cpu_us)
        )
    };
    vec![row("logging off", &off), row("logging on (Kafka)", &on)]
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).map(|a| a.parse().expect("seconds: a number")).unwrap_or(5.0);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/normal");
    let mut files: Vec<_> = std::fs::read_dir(samples).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let image = std::fs::read(&files[0]).unwrap();
    vigil_inference::runtime::environment(None).expect("ONNX Runtime library (run ./dev setup)");
    let broker = Broker::start(4).await;
    let broker_pid = broker.pid().expect("broker running");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = layout("shared", &broker, seconds, &image).await;
    if cores >= 2 {
        let last = cores - 1;
        pin(broker_pid, &last.to_string());
        pin(std::process::id(), &format!("0-{}", last - 1));
        rows.extend(layout("broker apart", &broker, seconds, &image).await);
    }
    println!(
        "\n| layout | Inspect, {CLIENTS} clients | requests/s | vs logging off | CPU µs/request, server process | CPU µs/request, broker |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}
