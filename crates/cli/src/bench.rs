//! `vigil bench`: throughput, latency and CPU per request of Inspect and ModelInfer at several
//! concurrencies, beside raw in-process ONNX Runtime on the same model, reported as ratios
//! measured in one run. With `--external` the server is the `vigil-edge` binary in its own
//! process, so its CPU per request is measured apart from the load generator's; with
//! `--python-peer` the same ModelInfer load then goes to a Python server (grpcio's asyncio
//! server and onnxruntime, `tests/peers/python_oip_server.py`), after checking it answers as
//! Vigil does. With `--h2load` the ModelInfer load is sent again by h2load, a C load generator
//! (see [`crate::bench_h2load`]).

use std::borrow::Cow;
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
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, ServerLiveRequest};
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;

use crate::bench_h2load::{H2load, grpc_frame};

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
    #[arg(long, default_value_t = 3.0, value_parser = crate::bench::seconds)]
    pub duration_s: f64,
    /// Concurrency levels (client requests in flight; raw ONNX Runtime uses them as batch sizes).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Intra-op thread counts of the raw ONNX Runtime baselines (0: one per CPU this process
    /// may use, at most one per physical core, as a model's `intra_op_threads = 0`).
    /// Every ratio is taken against the best raw figure at its level: the highest items/s, the
    /// lowest p50 and the lowest CPU per item, whichever thread count gave it.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub raw_threads: Vec<usize>,
    /// Serve from the `vigil-edge` binary in its own process (shipped configuration, this
    /// repository) instead of an embedded server, and measure its CPU apart from the client's.
    #[arg(long)]
    pub external: bool,
    /// The `vigil-edge` binary for `--external` (default: next to this `vigil`).
    #[arg(long)]
    pub edge_binary: Option<PathBuf>,
    /// Also send the ModelInfer load from h2load (nghttp2's C load generator, in its own
    /// process, one HTTP/2 connection) to the server and, with `--python-peer`, to the peer.
    #[arg(long)]
    pub h2load: bool,
    /// The h2load binary for `--h2load` (default: `h2load` on the PATH).
    #[arg(long)]
    pub h2load_binary: Option<PathBuf>,
    /// The server measured: the edge server (ModelInfer and Inspect) or the cloud server
    /// (ModelInfer; e.g. with `--model-repository .vigil/cloud-models`).
    #[arg(long, value_enum, default_value = "edge")]
    pub target: Target,
    /// The `vigil-cloud` binary for `--target cloud --external` (default: next to this `vigil`).
    #[arg(long)]
    pub cloud_binary: Option<PathBuf>,
    /// Also measure ModelInfer against a Python peer (grpcio + onnxruntime) in its own process.
    #[arg(long, requires = "external")]
    pub python_peer: bool,
    /// The Python with grpcio, onnxruntime and tritonclient for `--python-peer` (`./dev setup`
    /// makes one).
    #[arg(long, env = "VIGIL_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// The peer's script.
    #[arg(long, default_value = "tests/peers/python_oip_server.py")]
    pub python_peer_script: PathBuf,
}

/// Which server `vigil bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Edge,
    Cloud,
}

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub mode: Cow<'static, str>,
    pub level: usize,
    pub items_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU of the serving process (the raw ORT loop's own process) per item, µs.
    pub server_cpu_us: Option<f64>,
    /// CPU of the load generator per request, µs (external mode).
    pub client_cpu_us: Option<f64>,
}

/// CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat`.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc stat");
    Ok(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// CPU per item in µs between two readings of a process's CPU time.
fn cpu_per_item(before: Duration, after: Duration, items: u64) -> f64 {
    after.saturating_sub(before).as_secs_f64() * 1e6 / items.max(1) as f64
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn row(
    mode: impl Into<Cow<'static, str>>,
    level: usize,
    items: u64,
    elapsed: Duration,
    h: &Histogram<u64>,
) -> Row {
    Row {
        mode: mode.into(),
        level,
        items_per_s: items as f64 / elapsed.as_secs_f64(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
        server_cpu_us: None,
        client_cpu_us: None,
    }
}

/// The server under load: embedded in this process, or a server binary in its own process.
pub(crate) enum Server {
    Embedded(vigil_edge::RunningServer),
    EmbeddedCloud(vigil_cloud::RunningServer),
    External(std::process::Child),
}

impl Server {
    async fn start(args: &BenchArgs) -> Result<(Self, String)> {
        if args.target == Target::Cloud {
            return Self::start_cloud(args).await;
        }
        if !args.external {
            let mut config = EdgeConfig { model_repository: args.model_repository.clone(), ..EdgeConfig::default() };
            config.listen = "127.0.0.1:0".parse()?;
            config.metrics.listen = "127.0.0.1:0".parse()?;
            config.default_model = args.model.clone();
            let server = vigil_edge::start(config, false).await?;
            let url = format!("http://{}", server.addr);
            return Ok((Self::Embedded(server), url));
        }
        let binary = match &args.edge_binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("vigil-edge"),
        };
        if !binary.exists() {
            bail!(
                "{} not found: build it (cargo build --release -p vigil-edge) or give --edge-binary",
                binary.display()
            );
        }
        let mut command = std::process::Command::new(&binary);
        command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--model-repository"]);
        command.arg(&args.model_repository);
        Self::spawn(command, "vigil-edge listening on ").await
    }

    /// vigil-cloud with its shipped configuration, voice search off (its catalog is not needed).
    async fn start_cloud(args: &BenchArgs) -> Result<(Self, String)> {
        if !args.external {
            let mut config =
                vigil_cloud::CloudConfig { model_repository: args.model_repository.clone(), ..Default::default() };
            config.listen = "127.0.0.1:0".parse()?;
            config.metrics.listen = "127.0.0.1:0".parse()?;
            config.voice_search.enabled = false;
            let server = vigil_cloud::start(config, false, None).await?;
            let url = format!("http://{}", server.addr);
            return Ok((Self::EmbeddedCloud(server), url));
        }
        let binary = match &args.cloud_binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("vigil-cloud"),
        };
        if !binary.exists() {
            bail!(
                "{} not found: build it (cargo build --release -p vigil-cloud) or give --cloud-binary",
                binary.display()
            );
        }
        let mut command = std::process::Command::new(&binary);
        command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--model-repository"]);
        command.arg(&args.model_repository).env("VIGIL_VOICE_SEARCH__ENABLED", "false");
        Self::spawn(command, "vigil-cloud listening on ").await
    }

    /// The Python peer serving the model version in `version_dir`.
    async fn python_peer(args: &BenchArgs, version_dir: &std::path::Path) -> Result<(Self, String)> {
        if !args.python_peer_script.is_file() {
            bail!("{} not found: run from the repository root", args.python_peer_script.display());
        }
        let mut command = std::process::Command::new(&args.python);
        command.arg(&args.python_peer_script).arg(version_dir);
        Self::spawn(command, "python-peer listening on ").await
    }

    /// Starts `command` and reads its address from the first line it prints after `prefix`.
    pub(crate) async fn spawn(mut command: std::process::Command, prefix: &'static str) -> Result<(Self, String)> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let stdout = child.stdout.take().with_context(|| format!("no stdout from {program}"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        })
        .await??;
        let Some(addr) = line.strip_prefix(prefix).and_then(|l| l.split_whitespace().next()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not start: {line:?}");
        };
        Ok((Self::External(child), format!("http://{addr}")))
    }

    /// The serving process, when it is not this one.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Self::Embedded(_) | Self::EmbeddedCloud(_) => None,
            Self::External(child) => Some(child.id()),
        }
    }

    pub(crate) async fn stop(self) -> Result<()> {
        match self {
            Self::Embedded(server) => server.shutdown().await,
            Self::EmbeddedCloud(server) => server.shutdown().await,
            Self::External(mut child) => {
                child.kill()?;
                child.wait()?;
                Ok(())
            }
        }
    }
}

/// The longest timeout a command takes: a day, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// A command-line number of seconds: positive, finite, at most a day.
pub fn seconds(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        Ok(_) => Err(format!("{text} is not a number of seconds between 0 and 86400")),
        Err(e) => Err(format!("{text}: {e}")),
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let duration = Duration::from_secs_f64(args.duration_s);
    let h2load = args.h2load.then(|| crate::bench_h2load::binary(args.h2load_binary.as_ref()));
    if let Some(binary) = &h2load {
        H2load::check(binary)?;
    }
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
    // Baselines: raw ONNX Runtime in this process, one session, batches of `level` items.
    let me = std::process::id();
    // Raw ONNX Runtime: its threads spin between runs whatever the model's `intra_op_spinning`
    // says (its fastest setting on dedicated cores); 0 threads as the servers resolve it.
    let raw_config = ModelConfig { intra_op_spinning: true, ..config.clone() };
    for &threads in &args.raw_threads {
        let mode = raw_mode(threads);
        let mut session =
            ModelSession::load(&config_path.join("model.onnx"), &raw_config, threads).map_err(|e| anyhow!("{e}"))?;
        for &level in &args.concurrency {
            let batch = concat(&tensors, level);
            for _ in 0..3 {
                session.run(std::slice::from_ref(&batch)).map_err(|e| anyhow!("{e}"))?;
            }
            let mut h = histogram();
            let cpu_before = cpu_time(me)?;
            let started = Instant::now();
            let mut items = 0;
            while started.elapsed() < duration {
                let t0 = Instant::now();
                session.run(std::slice::from_ref(&batch)).map_err(|e| anyhow!("{e}"))?;
                h.record(t0.elapsed().as_micros().max(1) as u64)?;
                items += level as u64;
            }
            let mut r = row(mode.clone(), level, items, started.elapsed(), &h);
            r.server_cpu_us = Some(cpu_per_item(cpu_before, cpu_time(me)?, items));
            rows.push(r);
            eprintln!("  {mode} {level}: done");
        }
    }

    let (server, url) = Server::start(&args).await?;
    let server_pid = server.pid();
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let tensors = Arc::new(tensors);
    let pngs = Arc::new(pngs);
    let input = config.inputs[0].name.clone();
    let answer = infer_once(&channel, &args.model, &input, &tensors[0]).await?;
    let model_infer = match (args.target, args.external) {
        (Target::Edge, true) => "ModelInfer (vigil-edge process)",
        (Target::Cloud, true) => "ModelInfer (vigil-cloud process)",
        (Target::Cloud, false) => "ModelInfer (vigil-cloud)",
        (Target::Edge, false) => "ModelInfer",
    };
    if args.concurrency.contains(&1) {
        rows.extend(transport_floor(&channel, &input, &tensors[0], duration, server_pid).await?);
    }
    for &level in &args.concurrency {
        let r = model_infer_load(&channel, &args.model, &input, &tensors, level, duration, server_pid).await?;
        rows.push(r.into_row(model_infer, level));
        if args.target == Target::Cloud {
            // The cloud server has no inspection API.
            eprintln!("  server concurrency {level}: done");
            continue;
        }
        let inspection = InspectionClient::new(channel.clone());
        let p = pngs.clone();
        let r = load(level, duration, server_pid, move |i| {
            let mut client = inspection.clone();
            let request =
                InspectRequest { image: p[i % p.len()].clone(), station_id: "bench".into(), ..Default::default() };
            async move { client.inspect(request).await.map(|_| ()) }
        })
        .await?;
        rows.push(r.into_row(if args.external { "Inspect (vigil-edge process)" } else { "Inspect" }, level));
        eprintln!("  server concurrency {level}: done");
    }
    let h2load_mode = match args.target {
        Target::Edge => H2LOAD_EDGE,
        Target::Cloud => "ModelInfer via h2load (vigil-cloud)",
    };
    let body = grpc_frame(&infer_request(&args.model, &input, &tensors[0]));
    // The smallest DATA of a successful answer: its output tensor in one gRPC frame.
    let min_answer_bytes = 5 + 4 * answer.len();
    if let Some(binary) = &h2load {
        let client = H2load { binary, url: &url, body: &body, min_answer_bytes };
        // An embedded server's process does nothing else while h2load runs; waiting for h2load
        // hands this worker's tasks (an embedded server's among them) to the other workers.
        let pid = server_pid.unwrap_or(me);
        for &level in &args.concurrency {
            rows.push(tokio::task::block_in_place(|| client.run(h2load_mode, level, duration, pid))?);
            eprintln!("  h2load concurrency {level}: done");
        }
    }
    server.stop().await?;
    if args.python_peer {
        let (peer, peer_url) = Server::python_peer(&args, &config_path).await?;
        let peer_pid = peer.pid();
        let channel = Channel::from_shared(peer_url.clone())?.connect().await?;
        let peer_answer = infer_once(&channel, &args.model, &input, &tensors[0]).await?;
        let close = answer.len() == peer_answer.len()
            && answer.iter().zip(&peer_answer).all(|(a, b)| (a - b).abs() <= 1e-5 * a.abs().max(1.0));
        if !close {
            let _ = peer.stop().await;
            bail!("the Python peer answers {peer_answer:?} where vigil-edge answers {answer:?}");
        }
        for &level in &args.concurrency {
            let r = model_infer_load(&channel, &args.model, &input, &tensors, level, duration, peer_pid).await?;
            rows.push(r.into_row(PYTHON_PEER, level));
            eprintln!("  Python peer concurrency {level}: done");
        }
        if let (Some(binary), Some(pid)) = (&h2load, peer_pid) {
            let client = H2load { binary, url: &peer_url, body: &body, min_answer_bytes };
            for &level in &args.concurrency {
                rows.push(tokio::task::block_in_place(|| client.run(H2LOAD_PYTHON_PEER, level, duration, pid))?);
                eprintln!("  h2load on the Python peer, concurrency {level}: done");
            }
        }
        peer.stop().await?;
    }
    print_table(&rows, args.external);
    Ok(())
}

const PYTHON_PEER: &str = "ModelInfer (Python grpcio + onnxruntime process)";
const H2LOAD_EDGE: &str = "ModelInfer via h2load (vigil-edge)";
const H2LOAD_PYTHON_PEER: &str = "ModelInfer via h2load (Python grpcio + onnxruntime process)";

fn infer_request(model: &str, input: &str, tensor: &Tensor) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: tensor.datatype.as_str().into(),
            shape: tensor.shape.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![tensor.data.clone()],
        ..Default::default()
    }
}

/// The first output of one ModelInfer call, as FP32 values.
async fn infer_once(channel: &Channel, model: &str, input: &str, tensor: &Tensor) -> Result<Vec<f32>> {
    let response = GrpcInferenceServiceClient::new(channel.clone())
        .model_infer(infer_request(model, input, tensor))
        .await
        .map_err(|s| anyhow!("ModelInfer failed: {s}"))?
        .into_inner();
    let raw = response.raw_output_contents.first().context("no raw output in the answer")?;
    Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Closed-loop ModelInfer calls with raw FP32 contents, `level` at a time.
async fn model_infer_load(
    channel: &Channel,
    model: &str,
    input: &str,
    tensors: &Arc<Vec<Tensor>>,
    level: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<Measured> {
    let oip = GrpcInferenceServiceClient::new(channel.clone());
    let (t, model, input) = (tensors.clone(), model.to_string(), input.to_string());
    load(level, duration, server_pid, move |i| {
        let mut client = oip.clone();
        let request = infer_request(&model, &input, &t[i % t.len()]);
        async move { client.model_infer(request).await.map(|_| ()) }
    })
    .await
}

/// Rows measuring what one call costs without a model run, at one stream: `ServerLive` (an
/// empty gRPC round trip) and a full-size ModelInfer refused for naming no loaded model (the
/// same request bytes received and decoded, nothing run).
async fn transport_floor(
    channel: &Channel,
    input: &str,
    tensor: &Tensor,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<Vec<Row>> {
    let oip = GrpcInferenceServiceClient::new(channel.clone());
    let live = load(1, duration, server_pid, {
        let oip = oip.clone();
        move |_| {
            let mut client = oip.clone();
            async move { client.server_live(ServerLiveRequest {}).await.map(|_| ()) }
        }
    })
    .await?;
    let request = infer_request("no-such-model", input, tensor);
    let refused = load(1, duration, server_pid, move |_| {
        let mut client = oip.clone();
        let request = request.clone();
        async move {
            match client.model_infer(request).await {
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(s),
                Ok(_) => Err(tonic::Status::internal("a model named no-such-model answered")),
            }
        }
    })
    .await?;
    Ok(vec![live.into_row(FLOOR_LIVE, 1), refused.into_row(FLOOR_REFUSED, 1)])
}

const FLOOR_LIVE: &str = "floor: ServerLive round trip";
const FLOOR_REFUSED: &str = "floor: ModelInfer, same bytes, refused (no model run)";

/// One closed-loop measurement: requests, elapsed time, latencies (µs), and the CPU the
/// serving and the loading process used.
struct Measured {
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    server_cpu: Option<Duration>,
    client_cpu: Duration,
}

impl Measured {
    fn into_row(self, mode: &'static str, level: usize) -> Row {
        let mut r = row(mode, level, self.requests, self.elapsed, &self.latency);
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64;
        // Embedded, the one process serves and loads: its CPU is the server's figure.
        match self.server_cpu {
            Some(server) => {
                r.server_cpu_us = Some(per_request(server));
                r.client_cpu_us = Some(per_request(self.client_cpu));
            }
            None => r.server_cpu_us = Some(per_request(self.client_cpu)),
        }
        r
    }
}

/// Runs `level` closed-loop clients for `duration` against the server process `server_pid`
/// (None: this process).
async fn load<F, Fut>(level: usize, duration: Duration, server_pid: Option<u32>, call: F) -> Result<Measured>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    for i in 0..3 {
        call(i).await.map_err(|s| anyhow!("warm-up request failed: {s}"))?;
    }
    let me = std::process::id();
    let server_before = server_pid.map(cpu_time).transpose()?;
    let client_before = cpu_time(me)?;
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
    let elapsed = started.elapsed();
    let server_cpu = match (server_pid, server_before) {
        (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let client_cpu = cpu_time(me)?.saturating_sub(client_before);
    Ok(Measured { requests: total, elapsed, latency: all, server_cpu, client_cpu })
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

/// The name of a raw ONNX Runtime baseline row with `threads` intra-op threads.
fn raw_mode(threads: usize) -> Cow<'static, str> {
    match threads {
        0 => "raw ORT (batch), default threads".into(),
        1 => "raw ORT (batch), 1 thread".into(),
        n => format!("raw ORT (batch), {n} threads").into(),
    }
}

/// The best raw ONNX Runtime figures at one level, each from whichever baseline gave it.
struct BestRaw {
    items_per_s: f64,
    p50_ms: f64,
    server_cpu_us: Option<f64>,
}

fn best_raw(rows: &[Row], level: usize) -> Option<BestRaw> {
    let raw: Vec<&Row> = rows.iter().filter(|r| r.mode.starts_with("raw") && r.level == level).collect();
    (!raw.is_empty()).then(|| BestRaw {
        items_per_s: raw.iter().map(|r| r.items_per_s).fold(0.0, f64::max),
        p50_ms: raw.iter().map(|r| r.p50_ms).fold(f64::INFINITY, f64::min),
        server_cpu_us: raw.iter().filter_map(|r| r.server_cpu_us).reduce(f64::min),
    })
}

fn print_table(rows: &[Row], external: bool) {
    println!("\n{}", vigil_telemetry::benchmark_header());
    let cpu = if external { "server CPU µs/item" } else { "process CPU µs/item (server + client)" };
    println!(
        "| mode | concurrency / batch | items/s | p50 ms | p99 ms | throughput vs best raw ORT | p50 overhead vs best raw ORT | {cpu} | CPU vs best raw ORT | client CPU µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    for r in rows {
        let baseline = best_raw(rows, r.level).filter(|_| !r.mode.starts_with("floor"));
        let (ratio, overhead, cpu_ratio) = match baseline {
            None => ("-".into(), "-".into(), "-".into()),
            Some(b) => (
                format!("{:.2}x", r.items_per_s / b.items_per_s),
                format!("{:+.2} ms", r.p50_ms - b.p50_ms),
                match (r.server_cpu_us, b.server_cpu_us) {
                    (Some(s), Some(b)) if b > 0.0 => format!("{:.2}x", s / b),
                    _ => "-".into(),
                },
            ),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            r.mode,
            r.level,
            r.items_per_s,
            r.p50_ms,
            r.p99_ms,
            ratio,
            overhead,
            us(r.server_cpu_us),
            cpu_ratio,
            us(r.client_cpu_us)
        );
    }
    // Each Python peer row against the vigil-edge row with the same load generator and level.
    let counterpart = |peer: &Row| {
        let vigil = if peer.mode == PYTHON_PEER { "ModelInfer (vigil" } else { H2LOAD_EDGE };
        rows.iter().find(|r| r.mode.starts_with(vigil) && r.level == peer.level)
    };
    let peers: Vec<&Row> = rows.iter().filter(|r| r.mode == PYTHON_PEER || r.mode == H2LOAD_PYTHON_PEER).collect();
    if !peers.is_empty() {
        println!(
            "\n| load generator | concurrency | vigil-edge ModelInfer vs Python peer: items/s | p50 | server CPU µs/item |"
        );
        println!("|---|---:|---:|---:|---:|");
    }
    for peer in peers {
        let Some(v) = counterpart(peer) else { continue };
        let cpu = match (v.server_cpu_us, peer.server_cpu_us) {
            (Some(v), Some(p)) if p > 0.0 => format!("{:.2}x", v / p),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {:.2}x | {:.2}x | {cpu} |",
            if peer.mode == PYTHON_PEER { "vigil bench (tonic)" } else { "h2load" },
            peer.level,
            v.items_per_s / peer.items_per_s,
            v.p50_ms / peer.p50_ms
        );
    }
    print_inspect_against_model_infer(rows);
    print_cores_left(rows);
}

/// Inspect's CPU per request against ModelInfer's from the same client at the same level: what
/// decoding and preparing the image, the features and the decision add to a model run.
fn print_inspect_against_model_infer(rows: &[Row]) {
    let pairs: Vec<(&Row, &Row)> = rows
        .iter()
        .filter(|r| r.mode.starts_with("Inspect"))
        .filter_map(|inspect| {
            let model_infer = inspect.mode.replacen("Inspect", "ModelInfer", 1);
            let m = rows.iter().find(|r| r.mode == model_infer && r.level == inspect.level)?;
            Some((inspect, m))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!("\n| concurrency | Inspect vs ModelInfer: items/s | CPU µs/req |");
    println!("|---:|---:|---:|");
    for (inspect, m) in pairs {
        let cpu = match (inspect.server_cpu_us, m.server_cpu_us) {
            (Some(i), Some(m)) if m > 0.0 => format!("{:.2}x", i / m),
            _ => "-".into(),
        };
        println!("| {} | {:.2}x | {cpu} |", inspect.level, inspect.items_per_s / m.items_per_s);
    }
}

/// Loaded throughput with the load generator's CPU given back: a server sharing the machine
/// with its client had the cores less the client's share; its throughput scaled linearly to all
/// of them, against the best raw ONNX Runtime figure (which had every core).
fn print_cores_left(rows: &[Row]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let loaded: Vec<&Row> = rows.iter().filter(|r| r.level > 1 && r.client_cpu_us.is_some()).collect();
    if loaded.is_empty() {
        return;
    }
    println!(
        "\n| mode | concurrency | load generator cores | throughput vs best raw ORT | the same on the cores the load generator left ({cores:.0} in all) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in loaded {
        let (Some(best), Some(client_us)) = (best_raw(rows, r.level), r.client_cpu_us) else { continue };
        let used = client_us * r.items_per_s / 1e6;
        let left = (cores - used).max(0.05);
        println!(
            "| {} | {} | {used:.2} | {:.2}x | {:.2}x |",
            r.mode,
            r.level,
            r.items_per_s / best.items_per_s,
            r.items_per_s * cores / left / best.items_per_s
        );
    }
}
