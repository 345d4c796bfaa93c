//! Serving throughput with prediction logging on versus off, same load, same run: an edge
//! server with the shipped model, 16 closed-loop Inspect clients, records to a real broker on
//! the same machine. Logging on is measured with the shipped producer settings and with others
//! (batching delay `linger_ms`, compression), each alternated with logging off twice.
//!
//! For each row it also prints the CPU time per request of this process (server, load generator,
//! Kafka client) and of the broker, read from `/proc`, so the cost can be split between them.
//!
//!     cargo run --release -p vigil-logger --example logging_cost -- [seconds per run, default 4]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
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

/// Producer settings for a row: None is logging off.
type Setting = Option<(u64, String)>;

async fn measure(broker: &Broker, setting: &Setting, seconds: f64, image: &[u8]) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut config = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root.join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    config.logging.kafka.brokers = broker.brokers();
    if let Some((linger_ms, compression)) = setting {
        config.logging.enabled = true;
        config.logging.kafka.linger_ms = *linger_ms;
        config.logging.kafka.compression = compression.clone();
    }
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
        let drained = records.emitter().drain(Duration::from_secs(30)).await;
        let (emitted, delivered, failed, dropped) = records.emitter().stats().snapshot();
        eprintln!("  records: emitted {emitted}, delivered {delivered}, failed {failed}, dropped {dropped}");
        // A record dropped or never delivered would make logging look cheaper than it is.
        assert!(drained, "the producer did not deliver every record within 30 s");
        assert_eq!(
            (emitted, delivered, failed, dropped),
            (total, total, 0, 0),
            "one record per request, every one delivered"
        );
    }
    let per_request = |before: f64, after: f64| (after - before) * 1e6 / total as f64;
    eprintln!(
        "  {total} requests in {elapsed:.1} s; CPU: this process {:.1} s, broker {:.1} s (until {:.1} s)",
        cpu_seconds(None) - server_cpu,
        cpu_seconds(broker.pid()) - broker_cpu,
        started.elapsed().as_secs_f64()
    );
    let run = Run {
        requests_per_second: total as f64 / elapsed,
        server_cpu_us: per_request(server_cpu, cpu_seconds(None)),
        broker_cpu_us: per_request(broker_cpu, cpu_seconds(broker.pid())),
    };
    server.shutdown().await.unwrap();
    run
}

fn mean(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(f).sum::<f64>() / runs.len() as f64
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).map(|a| a.parse().expect("seconds: a number")).unwrap_or(4.0);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/normal");
    let mut files: Vec<_> = std::fs::read_dir(samples).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let image = std::fs::read(&files[0]).unwrap();
    vigil_inference::runtime::environment(None).expect("ONNX Runtime library (run ./dev setup)");
    let broker = Broker::start_with(vigil_testkit::kafka::Profile::Throughput, 4).await;
    let shipped = vigil_logbus::kafka::KafkaConfig::default();
    let mut settings: Vec<Setting> = vec![None, Some((shipped.linger_ms, shipped.compression.clone()))];
    for (linger, compression) in [(5, "lz4"), (100, "lz4"), (500, "lz4"), (500, "none")] {
        let other = Some((linger, compression.to_string()));
        if !settings.contains(&other) {
            settings.push(other);
        }
    }
    let mut runs: Vec<Vec<Run>> = settings.iter().map(|_| Vec::new()).collect();
    for round in 0..2 {
        for (i, setting) in settings.iter().enumerate() {
            eprintln!("round {round}: {}", label(setting, &shipped));
            runs[i].push(measure(&broker, setting, seconds, &image).await);
        }
    }
    let base = mean(&runs[0], |r| r.requests_per_second);
    println!("\n{}", vigil_telemetry::benchmark_header());
    println!(
        "\n| Inspect, {CLIENTS} clients | requests/s | vs logging off | CPU µs/request, server process | CPU µs/request, broker |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (setting, runs) in settings.iter().zip(&runs) {
        let rate = mean(runs, |r| r.requests_per_second);
        println!(
            "| {} | {rate:.0} | {:.3}x | {:.0} | {:.0} |",
            label(setting, &shipped),
            rate / base,
            mean(runs, |r| r.server_cpu_us),
            mean(runs, |r| r.broker_cpu_us)
        );
    }
}

fn label(setting: &Setting, shipped: &vigil_logbus::kafka::KafkaConfig) -> String {
    match setting {
        None => "logging off".into(),
        Some((linger, compression)) => {
            let default =
                if *linger == shipped.linger_ms && *compression == shipped.compression { " (default)" } else { "" };
            format!("logging on, linger_ms = {linger}, {compression}{default}")
        }
    }
}
