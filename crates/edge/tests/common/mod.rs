//! Shared helpers: start a real edge server on loopback, make images, copy the repository.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::Channel;
use vigil_edge::{EdgeConfig, MetricsConfig, RunningServer};
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;

pub const MODEL: &str = "scratch-detector";

/// A `ModelInferRequest` to the scratch detector with `id`: `n` black 128x128 images as raw FP32
/// contents (64 KiB each).
pub fn black_images_request(id: &str, n: usize) -> vigil_proto::inference::ModelInferRequest {
    use vigil_proto::inference::model_infer_request::InferInputTensor;
    vigil_proto::inference::ModelInferRequest {
        model_name: MODEL.into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![n as i64, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0; n * 128 * 128 * 4].into()],
        ..Default::default()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

pub fn config() -> EdgeConfig {
    EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        metrics: MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..EdgeConfig::default()
    }
}

/// `GET /metrics` over plain HTTP/1.1 (blocking): the content type and the body.
pub fn scrape(addr: SocketAddr) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// Polls `GET /metrics` at `addr` until the samples of `name` with `labels` add up to `value`;
/// fails after 30 s rather than hanging.
pub async fn until_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], value: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = tokio::task::spawn_blocking(move || scrape(addr).1).await.unwrap();
        let seen = sample(&text, name, labels);
        if seen == Some(value) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name}{labels:?} never reached {value} (last {seen:?})");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The sum of the samples of `name` whose labels include `labels`; None when there is none.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    vigil_telemetry::sample(text, name, labels)
}

pub async fn start(config: EdgeConfig) -> RunningServer {
    vigil_edge::start(config, false).await.expect("edge server starts")
}

pub async fn channel(server: &RunningServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.expect("connect")
}

pub async fn clients(server: &RunningServer) -> (InspectionClient<Channel>, GrpcInferenceServiceClient<Channel>) {
    let ch = channel(server).await;
    (
        InspectionClient::new(ch.clone()).max_encoding_message_size(256 << 20),
        GrpcInferenceServiceClient::new(ch).max_encoding_message_size(256 << 20),
    )
}

/// Sample images shipped with the repository: (file name, bytes).
pub fn samples(set: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("samples").join(set);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The newest version directory of the shipped model.
pub fn model_dir() -> PathBuf {
    let base = repo_root().join("models").join(MODEL);
    let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(&base)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok().map(|v| (v, e.path())))
        .collect();
    versions.sort();
    versions.pop().unwrap().1
}

/// The newest shipped version's `model.toml`.
pub fn model_config() -> vigil_inference::config::ModelConfig {
    vigil_inference::config::ModelConfig::load(&model_dir().join("model.toml")).unwrap()
}

/// Little-endian FP32 contents as values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A model repository holding the slow stand-in for the scratch detector
/// (`tests/fixtures/slow-model`: same inputs and outputs, several hundred milliseconds a run),
/// with the shipped `model.toml` but batches of at most `max_batch` and `depth` queued requests.
pub fn slow_repository(max_batch: usize, depth: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    let dst = dir.path().join(MODEL).join(src.file_name().unwrap());
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(repo_root().join("tests/fixtures/slow-model/model.onnx"), dst.join("model.onnx")).unwrap();
    let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
    let mut section = String::new();
    // Its runs take far longer than an inline run may: no inline session to load and warm.
    let patched: Vec<String> = toml
        .lines()
        .filter(|l| !l.starts_with("inline_intra_op_threads"))
        .map(|l| {
            let key = l.trim_start();
            if key.starts_with('[') {
                section = key.to_string();
            }
            match section.as_str() {
                "[dynamic_batching]" if key.starts_with("max_batch_size") => format!("max_batch_size = {max_batch}"),
                "[dynamic_batching]" if key.starts_with("max_queue_depth") => format!("max_queue_depth = {depth}"),
                _ => l.to_string(),
            }
        })
        .collect();
    std::fs::write(dst.join("model.toml"), patched.join("\n")).unwrap();
    dir
}

/// A valid PNG whose header claims `width` x `height` (the pixel data is not there).
pub fn png_with_claimed_size(width: u32, height: u32) -> Vec<u8> {
    let mut png = vigil_inference::image::encode_png(16, 16, |_, _| [0, 0, 0]);
    // Signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) ...; CRC after 13 bytes of data.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A complete, valid PNG of `width` x `height` black pixels, 1 bit per pixel: a few hundred
/// KiB on the wire for 20000x20000, and 400 MB of pixels written once decoded as 8-bit gray.
pub fn png_really_of_size(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().expect("PNG header");
    let row_bytes = width.div_ceil(8) as usize;
    writer.write_image_data(&vec![0u8; row_bytes * height as usize]).expect("PNG data");
    writer.finish().expect("PNG end");
    out
}

/// Resident memory of this process in KiB; fails the test when it cannot be read.
pub fn rss_kib() -> u64 {
    proc_status_kib("self", "VmRSS")
}

/// A memory figure (`VmRSS`, `VmHWM`: the peak) of a process from `/proc/<pid>/status`, in
/// KiB; fails the test when it cannot be read.
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in {path}"))
}

/// Writes `src` as version `version` under `model_dir`, all at once: built beside it, then
/// renamed into place, as a deployment tool would. `onnx` replaces the model file.
pub fn copy_version(src: &Path, model_dir: &Path, version: u64, onnx: Option<&[u8]>) {
    std::fs::create_dir_all(model_dir).unwrap();
    let staging = model_dir.join(format!(".incoming-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    match onnx {
        Some(bytes) => std::fs::write(staging.join("model.onnx"), bytes).unwrap(),
        None => {
            std::fs::copy(src.join("model.onnx"), staging.join("model.onnx")).unwrap();
        }
    }
    let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| if l.starts_with("version =") { format!("version = {version}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(staging.join("model.toml"), toml).unwrap();
    std::fs::rename(&staging, model_dir.join(version.to_string())).unwrap();
}

/// The first `n` sample images of `set`, prepared as the shipped model.toml says.
pub fn prepared_samples(set: &str, n: usize) -> Vec<vigil_inference::tensor::Tensor> {
    let pre = model_config().preprocess.unwrap();
    samples(set)
        .iter()
        .take(n)
        .map(|(_, b)| {
            vigil_inference::image::prepare(b, &pre, &vigil_inference::image::ImageLimits::default()).unwrap().tensor
        })
        .collect()
}

/// ModelInfer of one prepared image as raw contents.
pub fn image_request(t: &vigil_inference::tensor::Tensor) -> vigil_proto::inference::ModelInferRequest {
    vigil_proto::inference::ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![vigil_proto::inference::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: t.shape.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![t.data.clone()],
        ..Default::default()
    }
}
