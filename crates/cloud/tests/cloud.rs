//! vigil-cloud over real gRPC on loopback with the models `./dev setup` fetched (Silero VAD,
//! the text-orientation classifier) beside the scratch detector: each answers as the
//! onnxruntime Python package does on the same inputs; a model dropped into the repository
//! serves within seconds without a restart; CUDA asked for where there is none stops the start
//! with a clear message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;
use vigil_cloud::CloudConfig;
use vigil_inference::session::ExecutionProvider;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, RepositoryIndexRequest};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The fetched cloud models (`./dev setup`).
fn cloud_models() -> PathBuf {
    let dir = std::env::var("VIGIL_CLOUD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".vigil/cloud-models"));
    assert!(
        dir.join("silero-vad/1/model.onnx").is_file(),
        "{} has no fetched models: run ./dev setup (it fetches them from PyPI)",
        dir.display()
    );
    dir
}

/// A private repository with `models` copied from the fetched ones.
fn repository(models: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in models {
        copy_model(&cloud_models().join(model), &dir.path().join(model));
    }
    dir
}

fn copy_model(from: &Path, to: &Path) {
    let version = from.join("1");
    let staging = to.with_extension("incoming");
    std::fs::create_dir_all(staging.join("1")).unwrap();
    for file in ["model.onnx", "model.toml"] {
        std::fs::copy(version.join(file), staging.join("1").join(file)).unwrap();
    }
    // Appears at once, whole, as a watched repository expects.
    std::fs::rename(&staging, to).unwrap();
}

fn config(repository: &Path) -> CloudConfig {
    let mut config = CloudConfig { model_repository: repository.to_path_buf(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.models.watch_interval_ms = 100;
    config.voice_search.catalog = repo_root().join("deploy/catalog/products.csv");
    config
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn tensor(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape, ..Default::default() }
}

/// A deterministic test signal: `n` samples of a 220 Hz tone whose loudness rises, with noise.
fn audio(n: usize) -> Vec<f32> {
    let mut seed = 42u64;
    (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
            let t = i as f32 / 16_000.0;
            (i as f32 / n as f32) * 0.5 * (2.0 * std::f32::consts::PI * 220.0 * t).sin() + noise
        })
        .collect()
}

/// Runs `script` with the project's Python (onnxruntime, numpy), `inputs` on stdin as raw
/// little-endian f32, and returns what it prints as f32 values, one per line.
fn python(script: &str, inputs: &[f32]) -> Vec<f32> {
    use std::io::Write;
    let python = std::env::var("VIGIL_PYTHON")
        .expect("VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with onnxruntime and numpy)");
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&f32_bytes(inputs)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python reference failed");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{what}: {got:?} vs onnxruntime's {want:?}");
    }
}

async fn client(server: &vigil_cloud::RunningServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_answers_as_onnxruntime_and_a_model_dropped_in_serves_without_a_restart() {
    let repository = repository(&["silero-vad", "scratch-detector"]);
    let server = vigil_cloud::start(config(repository.path()), false, None).await.unwrap();
    let mut oip = client(&server).await;

    // Silero VAD, three chunks of one stream: the state of each call feeds the next.
    let samples = audio(64 + 3 * 512);
    let mut state = vec![0f32; 2 * 128];
    let mut probabilities = Vec::new();
    for chunk in 0..3 {
        let window = &samples[chunk * 512..chunk * 512 + 576];
        let request = ModelInferRequest {
            model_name: "silero-vad".into(),
            inputs: vec![
                tensor("input", "FP32", vec![1, 576]),
                tensor("state", "FP32", vec![2, 1, 128]),
                tensor("sr", "INT64", vec![]),
            ],
            raw_input_contents: vec![
                f32_bytes(window).into(),
                f32_bytes(&state).into(),
                16_000i64.to_le_bytes().to_vec().into(),
            ],
            ..Default::default()
        };
        let answer = oip.model_infer(request).await.unwrap().into_inner();
        let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
        let output = names.iter().position(|n| *n == "output").unwrap();
        let next = names.iter().position(|n| *n == "stateN").unwrap();
        probabilities.extend(f32s(&answer.raw_output_contents[output]));
        state = f32s(&answer.raw_output_contents[next]);
        assert_eq!(state.len(), 256);
    }
    let reference = format!(
        r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession("{}", providers=["CPUExecutionProvider"])
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32)
state = np.zeros((2, 1, 128), dtype=np.float32)
for c in range(3):
    out, state = s.run(None, {{"input": x[c*512:c*512+576][None, :], "state": state, "sr": np.array(16000, dtype=np.int64)}})
    print(float(out[0, 0]))
"#,
        repository.path().join("silero-vad/1/model.onnx").display()
    );
    assert_close(&probabilities, &python(&reference, &samples), "speech probabilities");
    assert!(probabilities.iter().any(|p| (p - probabilities[0]).abs() > 1e-6), "the state changes the answers");

    // Three streams in one call, as the model's caller batches them (max_batch_size = 0: the
    // first dimension is the model's own, not a batch for the server to split or limit).
    let windows: Vec<f32> = (0..3).flat_map(|c| samples[c * 512..c * 512 + 576].to_vec()).collect();
    let request = ModelInferRequest {
        model_name: "silero-vad".into(),
        inputs: vec![
            tensor("input", "FP32", vec![3, 576]),
            tensor("state", "FP32", vec![2, 3, 128]),
            tensor("sr", "INT64", vec![]),
        ],
        raw_input_contents: vec![
            f32_bytes(&windows).into(),
            f32_bytes(&[0f32; 2 * 3 * 128]).into(),
            16_000i64.to_le_bytes().to_vec().into(),
        ],
        ..Default::default()
    };
    let answer = oip.model_infer(request).await.expect("three streams in one call").into_inner();
    let output = answer.outputs.iter().position(|o| o.name == "output").unwrap();
    assert_eq!(answer.outputs[output].shape, [3, 1]);
    let streams = r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession("MODEL", providers=["CPUExecutionProvider"])
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32).reshape(3, 576)
out, _ = s.run(None, {"input": x, "state": np.zeros((2, 3, 128), dtype=np.float32), "sr": np.array(16000, dtype=np.int64)})
for p in out[:, 0]:
    print(float(p))
"#
    .replace("MODEL", &repository.path().join("silero-vad/1/model.onnx").display().to_string());
    assert_close(&f32s(&answer.raw_output_contents[output]), &python(&streams, &windows), "three streams at once");

    // The text-orientation classifier, dropped in while serving: it loads by itself.
    copy_model(&cloud_models().join("text-orientation"), &repository.path().join("text-orientation"));
    let mut ready = false;
    for _ in 0..100 {
        let index = oip.repository_index(RepositoryIndexRequest { ready: true, ..Default::default() }).await.unwrap();
        if index.into_inner().models.iter().any(|m| m.name == "text-orientation") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "text-orientation never became ready");
    let lines: Vec<f32> = audio(2 * 3 * 48 * 192).iter().map(|v| v * 2.0).collect();
    let request = ModelInferRequest {
        model_name: "text-orientation".into(),
        inputs: vec![tensor("x", "FP32", vec![2, 3, 48, 192])],
        raw_input_contents: vec![f32_bytes(&lines).into()],
        ..Default::default()
    };
    let answer = oip.model_infer(request).await.unwrap().into_inner();
    assert_eq!(answer.outputs[0].shape, [2, 2]);
    let reference = format!(
        r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession("{}", providers=["CPUExecutionProvider"])
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32).reshape(2, 3, 48, 192)
for v in s.run(None, {{"x": x}})[0].ravel():
    print(float(v))
"#,
        repository.path().join("text-orientation/1/model.onnx").display()
    );
    assert_close(&f32s(&answer.raw_output_contents[0]), &python(&reference, &lines), "orientation scores");

    // The scratch detector serves beside them.
    let image = vec![0f32; 128 * 128];
    let request = ModelInferRequest {
        model_name: "scratch-detector".into(),
        inputs: vec![tensor("image", "FP32", vec![1, 1, 128, 128])],
        raw_input_contents: vec![f32_bytes(&image).into()],
        ..Default::default()
    };
    assert_eq!(oip.model_infer(request).await.unwrap().into_inner().outputs[0].shape, [1, 1]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cuda_asked_for_where_there_is_none_stops_the_start_saying_what_to_do() {
    let repository = repository(&["silero-vad"]);
    let mut config = config(repository.path());
    config.models.execution_provider = ExecutionProvider::Cuda;
    let Err(e) = vigil_cloud::start(config, false, None).await else {
        panic!("started with CUDA on a machine without it");
    };
    let message = format!("{e:#}");
    assert!(message.contains("execution_provider = \"cuda\" but CUDA is not available here"), "{message}");
    assert!(message.contains("execution_provider = \"cpu\""), "{message}");
}
