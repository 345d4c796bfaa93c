//! The `vigil-edge` binary: start-up line, /metrics, configuration errors, SIGTERM drains and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn edge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil-edge"));
    c.current_dir(common::repo_root());
    c
}

/// Starts `command` on free ports (its stdout piped) and reads its first, machine-readable line.
fn start_listening(mut command: Command) -> (std::process::Child, String) {
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// The gRPC address and the `/metrics` address announced in the first line.
fn addresses(line: &str) -> (String, std::net::SocketAddr) {
    let grpc = line.strip_prefix("vigil-edge listening on ").and_then(|l| l.split_whitespace().next());
    let metrics = line.split_once("(metrics on http://").and_then(|(_, rest)| rest.split_once("/metrics)"));
    (grpc.expect(line).to_string(), metrics.and_then(|(a, _)| a.parse().ok()).expect(line))
}

#[test]
fn starts_reports_its_address_and_stops_on_sigterm() {
    let (mut child, line) = start_listening(edge());
    assert!(line.starts_with("vigil-edge listening on 127.0.0.1:"), "{line}");
    assert!(line.contains("serving scratch-detector@"), "{line}");
    let (_, metrics) = addresses(&line);
    let (_, text) = common::scrape(metrics);
    assert!(common::sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0, "{text}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn bad_configuration_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "[limits]\nmax_message_bytes = \"big\"\n").unwrap();
    let out = edge().args(["--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.max_message_bytes"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = edge().args(["--model-repository", "/no/such/dir"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model_repository /no/such/dir is not a directory"));

    let out = edge().args(["--onnxruntime-lib", "/no/lib.so"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `./dev setup`"));

    let out = edge().env("VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_concurrent_requests must be at least 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_requests_still_running_at_the_drain_timeout() {
    // Eight requests queue one by one behind the slow model (batches of 1, several seconds of
    // work in all), so requests are still in the server when the 300 ms drain timeout after
    // SIGTERM runs out: the server closes the connections and exits.
    let repo = common::slow_repository(1, 64);
    let mut edge = edge();
    edge.arg("--model-repository")
        .arg(repo.path())
        .env("VIGIL_LIMITS__DRAIN_TIMEOUT_MS", "300")
        .env("VIGIL_LIMITS__REQUEST_TIMEOUT_MS", "60000");
    let (mut child, line) = start_listening(edge);
    let (addr, metrics) = addresses(&line);
    let client =
        vigil_proto::vigil::v1::inspection_client::InspectionClient::connect(format!("http://{addr}")).await.unwrap();
    let image = common::samples("normal").remove(0).1;
    let pending: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let request = vigil_proto::vigil::v1::InspectRequest { image: image.clone(), ..Default::default() };
            tokio::spawn(async move { client.inspect(request).await })
        })
        .collect();
    // Every request is in the server: one running, seven waiting.
    common::until_metric(metrics, "vigil_pending_requests", &[], 7.0).await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code()).await.unwrap();
    assert_eq!(code, Some(0), "a drain that ran out is still a clean stop");
    let mut cut_off = 0;
    for p in pending {
        if let Err(status) = p.await.unwrap() {
            assert!(
                matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled),
                "{status:?}"
            );
            cut_off += 1;
        }
    }
    // A drain that waited for everything would have answered all eight.
    assert!(cut_off > 0, "the drain timeout cut requests off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_requests_beyond_the_memory_budget_is_shed_and_memory_stays_bounded() {
    const BUDGET: u64 = 24 << 20;
    let mut edge = edge();
    edge.env("VIGIL_LIMITS__MAX_REQUEST_BYTES_IN_FLIGHT", BUDGET.to_string())
        .env("VIGIL_LIMITS__MAX_MESSAGE_BYTES", (4 << 20).to_string())
        .env("VIGIL_LIMITS__MAX_CONCURRENT_REQUESTS", "1024");
    let (mut child, line) = start_listening(edge);
    let pid = child.id().to_string();
    let (addr, metrics) = addresses(&line);
    // Batches of 32 images: 2 MiB of FP32 per request.
    let request = || vigil_proto::inference::ModelInferRequest {
        model_name: common::MODEL.into(),
        inputs: vec![vigil_proto::inference::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![32, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 32 * 128 * 128 * 4].into()],
        ..Default::default()
    };
    let mut channels = Vec::new();
    for _ in 0..4 {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        channels.push(
            vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel)
                .max_encoding_message_size(8 << 20),
        );
    }
    // The baseline: the server after serving requests of this size one at a time.
    for _ in 0..3 {
        channels[0].clone().model_infer(request()).await.expect("a lone large request is served");
    }
    let baseline = common::proc_status_kib(&pid, "VmRSS");
    let burst: Vec<_> = (0..120)
        .map(|i| {
            let mut client = channels[i % channels.len()].clone();
            let request = request();
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for call in burst {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("memory budget of 25165824 bytes"), "{}", status.message());
                shed += 1;
            }
        }
    }
    let peak = common::proc_status_kib(&pid, "VmHWM");
    // Every charge was given back once the calls ended.
    let text = tokio::task::spawn_blocking(move || common::scrape(metrics).1).await.unwrap();
    assert_eq!(common::sample(&text, "vigil_request_bytes_in_flight", &[]), Some(0.0), "{text}");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    eprintln!("served {served}, shed {shed}; RSS baseline {baseline} KiB, peak {peak} KiB");
    assert!(served > 0 && shed > 0, "served {served}, shed {shed}");
    // Each admitted request is charged 3x its 2 MiB, so at most four run at once within the
    // 24 MiB budget; without it, 120 requests of 2 MiB held 3 copies each would need 720 MiB.
    let grown = peak.saturating_sub(baseline);
    assert!(grown <= BUDGET / 1024 + 8 * 1024, "peak RSS grew {grown} KiB over the baseline, beyond the budget");
}
