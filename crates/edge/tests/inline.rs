//! Inline runs of lone requests, counted by the process-wide `vigil_inline_runs_total`: in a
//! test binary of their own, so that no other test's requests take the process's one inline
//! run meanwhile and change the counts.

mod common;

use common::*;

/// The shipped model with a session of its own for inline runs (a thread per core)
/// beside a one-thread batching session, and every lone request quick enough to run inline.
fn inline_session_repository() -> tempfile::TempDir {
    inline_session_repository_with("")
}

/// As [`inline_session_repository`], with `extra` top-level keys in its `model.toml`.
fn inline_session_repository_with(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    let dst = dir.path().join(MODEL).join(src.file_name().unwrap());
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.onnx"), dst.join("model.onnx")).unwrap();
    let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
    let kept: Vec<&str> = toml
        .lines()
        .filter(|l| {
            !["intra_op_threads", "inline_intra_op_threads", "inline_run_limit_us"].iter().any(|k| l.starts_with(k))
        })
        .collect();
    // Top-level keys first; `[dynamic_batching]` is the file's last table.
    assert!(kept.iter().rev().find(|l| l.starts_with('[')) == Some(&"[dynamic_batching]"));
    let toml = format!(
        "intra_op_threads = 1\ninline_intra_op_threads = 0\n{extra}\n{}\ninline_run_limit_us = 1000000\n",
        kept.join("\n")
    );
    std::fs::write(dst.join("model.toml"), toml).unwrap();
    dir
}

/// Serves `repository` under a repository-wide one-thread override, sends `tensors` one after
/// another, and returns `vigil_inline_runs_total` for `labels`.
async fn inline_runs_with_one_thread_override(
    repository: &std::path::Path,
    tensors: &[vigil_inference::tensor::Tensor],
    labels: &[(&str, &str)],
) -> Option<f64> {
    let mut overridden = vigil_edge::EdgeConfig { model_repository: repository.to_path_buf(), ..common::config() };
    overridden.models.intra_op_threads = Some(1);
    let server = start(overridden).await;
    let (_, mut oip) = clients(&server).await;
    for t in tensors {
        oip.model_infer(image_request(t)).await.unwrap();
    }
    let metrics = server.metrics_addr.unwrap();
    let (_, text) = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    server.shutdown().await.unwrap();
    sample(&text, "vigil_inline_runs_total", labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_requests_run_inline_on_their_own_session_with_the_models_answers() {
    let repository = inline_session_repository();
    let server = start(vigil_edge::EdgeConfig { model_repository: repository.path().to_path_buf(), ..config() }).await;
    let (_, mut oip) = clients(&server).await;
    let config = model_config();
    let tensors = prepared_samples("normal", 10);
    let mut answers = Vec::new();
    for t in &tensors {
        let r = oip.model_infer(image_request(t)).await.unwrap().into_inner();
        answers.push(f32s(&r.raw_output_contents[0])[0]);
    }
    // One after another, each found the model idle. The inline session takes lone requests once
    // the model's last runs each served one request: the batching session's warm-up run counts
    // as the first of those, so all but the first few of the ten ran inline.
    let inline = tensors.len() + 1 - vigil_inference::batcher::INLINE_SESSION_AFTER_SOLO_RUNS;
    let metrics = server.metrics_addr.unwrap();
    let (_, text) = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let version = config.version.to_string();
    let labels = [("model", MODEL), ("version", version.as_str())];
    assert_eq!(sample(&text, "vigil_inline_runs_total", &labels), Some(inline as f64), "{text}");
    server.shutdown().await.unwrap();
    // A repository-wide thread count leaves the model no session of its own for inline runs:
    // lone requests borrow the idle batching session at once, with no run of one to wait for.
    assert_eq!(inline_runs_with_one_thread_override(repository.path(), &tensors[..3], &labels).await, Some(3.0));
    // Under the same override, an inline session whose threads spin where the batching
    // session's do not is set up differently: loaded, it waits for its run of lone requests.
    let spinning = inline_session_repository_with("intra_op_spinning = false\ninline_intra_op_spinning = true");
    let own = 6 + 1 - vigil_inference::batcher::INLINE_SESSION_AFTER_SOLO_RUNS;
    assert_eq!(inline_runs_with_one_thread_override(spinning.path(), &tensors[..6], &labels).await, Some(own as f64));
    // The same inputs through a session of our own: the same scores.
    vigil_inference::runtime::environment(None).unwrap();
    let mut reference =
        vigil_inference::session::ModelSession::load(&model_dir().join("model.onnx"), &config, 1).unwrap();
    for (t, answer) in tensors.iter().zip(&answers) {
        let expected = reference.run(std::slice::from_ref(t)).unwrap()[0].to_f32().unwrap()[0];
        assert!((answer - expected).abs() < 1e-5, "served {answer}, expected {expected}");
    }
}
