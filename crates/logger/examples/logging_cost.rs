//! Serving throughput with prediction logging on versus off, same load, same run: an edge
//! server with the shipped model, 16 closed-loop Inspect clients, records to a real broker.
//!
//!     cargo run --release -p vigil-logger --example logging_cost -- [seconds per run, default 5]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::Broker;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;

const CLIENTS: usize = 16;

async fn measure(logging: Option<&Broker>, seconds: f64, image: &[u8]) -> f64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut config = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root.join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    if let Some(broker) = logging {
        config.logging.enabled = true;
        config.logging.kafka.brokers = broker.brokers();
    }
    let server = vigil_edge::start(config, false).await.unwrap();
    let client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let duration = Duration::from_secs_f64(seconds);
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
    let rate = total as f64 / started.elapsed().as_secs_f64();
    if let Some(records) = &server.records {
        let (emitted, delivered, failed, dropped) = records.emitter().stats().snapshot();
        eprintln!("  records: emitted {emitted}, delivered {delivered}, failed {failed}, dropped {dropped}");
    }
    server.shutdown().await.unwrap();
    rate
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
    // Alternate off/on twice; report the mean of each.
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..2 {
        eprintln!("round {round}: logging off ...");
        off.push(measure(None, seconds, &image).await);
        eprintln!("round {round}: logging on ...");
        on.push(measure(Some(&broker), seconds, &image).await);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (off, on) = (mean(&off), mean(&on));
    println!("\n| Inspect, {CLIENTS} clients | requests/s | vs logging off |");
    println!("|---|---:|---:|");
    println!("| logging off | {off:.0} | 1.00x |");
    println!("| logging on (Kafka) | {on:.0} | {:.3}x |", on / off);
}
