//! `vigil bench`: throughput and latency of Inspect and ModelInfer at several concurrencies,
//! beside raw in-process ONNX Runtime on the same model, reported as ratios measured in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use vigil_edge::EdgeConfig;
use vigil_inference::config::ModelConfig;
use vigil_inference::image::{ImageLimits, prepare};
use vigil_inference::session::ModelSession;
use vigil_inference::tensor::Tensor;
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model repository (for the embedded server and the raw ONNX Runtime baseline).
    #[arg(long, default_value = "models")]
    pub model_repository: PathBuf,
    /// Model to load.
    #[arg(long, default_value = "scratch-detector")]
    pub model: String,
    /// Folder of images to send.
    #[arg(long, default_value = "samples/normal")]
    pub samples: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub duration_s: f64,
    /// Concurrency levels (client requests in flight; raw ONNX Runtime uses them as batch sizes).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Row {
    mode: &'static str,
    level: usize,
    items_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn row(mode: &'static str, level: usize, items: u64, elapsed: Duration, h: &Histogram<u64>) -> Row {
    Row {
        mode,
        level,
        items_per_s: items as f64 / elapsed.as_secs_f64(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let duration = Duration::from_secs_f64(args.duration_s);
    let config_path = newest_version(&args.model_repository.join(&args.model))?;
    let config = ModelConfig::load(&config_path.join("model.toml")).map_err(|e| anyhow!("{e}"))?;
    let pre = config.preprocess.clone().context("the model has no [preprocess]; bench needs an image model")?;
    let (files, _) = crate::images::collect(std::slice::from_ref(&args.samples))?;
    if files.is_empty() {
        bail!("no images in {}", args.samples.display());
    }
    let pngs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let tensors: Vec<Tensor> = pngs
        .iter()
        .map(|b| prepare(b, &pre, &ImageLimits::default()).map(|p| p.tensor))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{e}"))?;
    vigil_inference::runtime::environment(None).map_err(|e| anyhow!("{e}"))?;
    eprintln!(
        "model {} v{}, {} images, {:.1} s per measurement",
        config.name,
        config.version,
        pngs.len(),
        args.duration_s
    );

    let mut rows = Vec::new();
    // Baseline: raw ONNX Runtime in this process, one session, batches of `level` items.
    let mut session = ModelSession::load(&config_path.join("model.onnx"), &config, config.intra_op_threads)
        .map_err(|e| anyhow!("{e}"))?;
    for &level in &args.concurrency {
        let batch = concat(&tensors, level);
        for _ in 0..3 {
            session.run(std::slice::from_ref(&batch)).map_err(|e| anyhow!("{e}"))?;
        }
        let mut h = histogram();
        let started = Instant::now();
        let mut items = 0;
        while started.elapsed() < duration {
            let t0 = Instant::now();
            session.run(std::slice::from_ref(&batch)).map_err(|e| anyhow!("{e}"))?;
            h.record(t0.elapsed().as_micros().max(1) as u64)?;
            items += level as u64;
        }
        rows.push(row("raw ORT (batch)", level, items, started.elapsed(), &h));
        eprintln!("  raw ORT batch {level}: done");
    }
    drop(session);

    let mut config_edge = EdgeConfig { model_repository: args.model_repository.clone(), ..EdgeConfig::default() };
    config_edge.listen = "127.0.0.1:0".parse()?;
    config_edge.metrics.listen = "127.0.0.1:0".parse()?;
    config_edge.default_model = args.model.clone();
    let server = vigil_edge::start(config_edge, false).await?;
    let url = format!("http://{}", server.addr);
    let channel = Channel::from_shared(url)?.connect().await?;
    let tensors = Arc::new(tensors);
    let pngs = Arc::new(pngs);
    for &level in &args.concurrency {
        let oip = GrpcInferenceServiceClient::new(channel.clone());
        let t = tensors.clone();
        let name = args.model.clone();
        let input = config.inputs[0].name.clone();
        let r = load(level, duration, move |i| {
            let mut client = oip.clone();
            let tensor = &t[i % t.len()];
            let request = ModelInferRequest {
                model_name: name.clone(),
                inputs: vec![InferInputTensor {
                    name: input.clone(),
                    datatype: tensor.datatype.as_str().into(),
                    shape: tensor.shape.clone(),
                    ..Default::default()
                }],
                raw_input_contents: vec![tensor.data.clone()],
                ..Default::default()
            };
            async move { client.model_infer(request).await.map(|_| ()) }
        })
        .await?;
        rows.push(row("ModelInfer", level, r.0, r.1, &r.2));
        let inspection = InspectionClient::new(channel.clone());
        let p = pngs.clone();
        let r = load(level, duration, move |i| {
            let mut client = inspection.clone();
            let request =
                InspectRequest { image: p[i % p.len()].clone(), station_id: "bench".into(), ..Default::default() };
            async move { client.inspect(request).await.map(|_| ()) }
        })
        .await?;
        rows.push(row("Inspect", level, r.0, r.1, &r.2));
        eprintln!("  server concurrency {level}: done");
    }
    server.shutdown().await?;
    print_table(&rows);
    Ok(())
}

/// Runs `level` closed-loop clients for `duration`; returns (requests, elapsed, latency µs).
async fn load<F, Fut>(level: usize, duration: Duration, call: F) -> Result<(u64, Duration, Histogram<u64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    for i in 0..3 {
        call(i).await.map_err(|s| anyhow!("warm-up request failed: {s}"))?;
    }
    let started = Instant::now();
    let workers: Vec<_> = (0..level)
        .map(|w| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                while started.elapsed() < duration {
                    let t0 = Instant::now();
                    call(w + n as usize).await.map_err(|s| anyhow!("request failed: {s}"))?;
                    h.record(t0.elapsed().as_micros().max(1) as u64)?;
                    n += 1;
                }
                anyhow::Ok((n, h))
            })
        })
        .collect();
    let mut total = 0;
    let mut all = histogram();
    for w in workers {
        let (n, h) = w.await??;
        total += n;
        all.add(&h)?;
    }
    Ok((total, started.elapsed(), all))
}

fn concat(tensors: &[Tensor], n: usize) -> Tensor {
    let mut shape = tensors[0].shape.clone();
    shape[0] = n as i64;
    let data = (0..n).flat_map(|i| tensors[i % tensors.len()].data.iter().copied()).collect();
    Tensor { datatype: tensors[0].datatype, shape, data }
}

fn newest_version(dir: &std::path::Path) -> Result<PathBuf> {
    let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|v| (v, e.path())))
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).with_context(|| format!("no versions in {}", dir.display()))
}

fn print_table(rows: &[Row]) {
    let raw = |level: usize| rows.iter().find(|r| r.mode.starts_with("raw") && r.level == level);
    println!("\n{}", vigil_telemetry::benchmark_header());
    println!(
        "| mode | concurrency / batch | items/s | p50 ms | p99 ms | throughput vs raw ORT | p99 overhead vs raw ORT |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (ratio, overhead) = match (r.mode.starts_with("raw"), raw(r.level)) {
            (false, Some(b)) => {
                (format!("{:.2}x", r.items_per_s / b.items_per_s), format!("{:+.2} ms", r.p99_ms - b.p99_ms))
            }
            _ => ("1.00x".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.mode, r.level, r.items_per_s, r.p50_ms, r.p99_ms, ratio, overhead
        );
    }
}
