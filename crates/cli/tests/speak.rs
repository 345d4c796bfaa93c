//! `vigil speak` and `vigil batch` as a user runs them: recordings with silence around and
//! between spoken queries; VAD runs in the CLI's process and only the speech travels to
//! vigil-cloud.

use std::process::Command;

use vigil_cloud::CloudConfig;
use vigil_testkit::speech::{self as voices, ADULT};

/// vigil-cloud on the fetched models, without logging or metrics.
async fn cloud_server(models: &std::path::Path) -> vigil_cloud::RunningServer {
    let mut config = CloudConfig { model_repository: models.to_path_buf(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.watch_interval_ms = 0;
    config.logging.enabled = false;
    config.voice_search.catalog = voices::repo_root().join("deploy/catalog/products.csv");
    vigil_cloud::start(config, false, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_sends_only_the_speech_and_prints_transcripts_and_results() {
    let models = voices::cloud_models();
    let server = cloud_server(&models).await;

    let dir = tempfile::tempdir().unwrap();
    let mut recording = voices::silence(1500);
    recording.extend(voices::say("electric toothbrush", ADULT));
    recording.extend(voices::silence(1500));
    recording.extend(voices::say("with a timer", ADULT));
    recording.extend(voices::silence(2000));
    let wav = dir.path().join("query.wav");
    vigil_speech::audio::write_wav(&wav, &recording).unwrap();
    let stereo = dir.path().join("stereo.wav");
    std::fs::write(&stereo, b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x02\x00\x44\xac\x00\x00\x10\xb1\x02\x00\x04\x00\x10\x00data\x00\x00\x00\x00").unwrap();

    let run = |files: &[&std::path::Path]| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("speak")
            .args(files)
            .args(["--json", "--server", &format!("http://{}", server.addr)])
            .arg("--vad-model")
            .arg(models.join("silero-vad/1"))
            .output()
            .unwrap()
    };
    // The server runs on this test's runtime: the CLI's wait must not block it.
    let out = tokio::task::block_in_place(|| run(&[&wav, &stereo]));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    let spoken = &lines[0];
    assert!(spoken["error"].is_null(), "{spoken}");
    let segments = spoken["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "two phrases, two segments: {spoken}");
    let (recorded, sent) = (spoken["recorded_ms"].as_u64().unwrap(), spoken["sent_ms"].as_u64().unwrap());
    assert_eq!(recorded as usize, recording.len() / 16);
    // 5 s of the recording is silence; the VAD keeps 200 ms of it around each phrase.
    assert!(sent * 2 < recorded, "sent {sent} ms of {recorded} ms");
    assert!(segments.iter().all(|s| !s["text"].as_str().unwrap().is_empty()), "{spoken}");
    assert_eq!(spoken["results"][0]["product_id"], "P-1008", "{spoken}");
    assert!(spoken["wait_ms"].as_f64().unwrap() > 0.0);

    // A recording in the wrong format: one line saying what to do, and the exit status says so.
    let bad = &lines[1];
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains("need 16000 Hz mono 16-bit PCM") && error.contains("sox"), "{error}");
    assert_eq!(out.status.code(), Some(12));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_scores_a_folder_in_order_with_one_line_per_recording_and_a_summary() {
    let models = voices::cloud_models();
    let server = cloud_server(&models).await;

    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("recordings");
    std::fs::create_dir(&folder).unwrap();
    let phrases = [("a.wav", "yoga mat"), ("b.wav", "coffee grinder"), ("c.wav", "garden hose"), ("d.wav", "dog food")];
    for (name, text) in phrases {
        let mut recording = voices::silence(500);
        recording.extend(voices::say(text, ADULT));
        recording.extend(voices::silence(500));
        vigil_speech::audio::write_wav(&folder.join(name), &recording).unwrap();
    }
    // Not a recording: skipped by extension; and one broken file given by name.
    std::fs::write(folder.join("notes.txt"), "not audio").unwrap();
    let broken = dir.path().join("broken.wav");
    std::fs::write(&broken, b"RIFF").unwrap();
    let output = dir.path().join("results.jsonl");
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["batch", "--concurrency", "3", "--server", &format!("http://{}", server.addr)])
            .arg("--vad-model")
            .arg(models.join("silero-vad/1"))
            .arg("--output")
            .arg(&output)
            .arg(&folder)
            .arg(&broken)
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    // In input order whatever order they finished in.
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let expected: Vec<String> = phrases
        .iter()
        .map(|(name, _)| folder.join(name).display().to_string())
        .chain([broken.display().to_string()])
        .collect();
    assert_eq!(paths, expected);
    for line in &lines[..4] {
        assert!(line["error"].is_null() && !line["transcript"].as_str().unwrap().is_empty(), "{line}");
        assert!(!line["results"].as_array().unwrap().is_empty(), "{line}");
    }
    assert!(lines[4]["error"].as_str().unwrap().contains("broken.wav"), "{}", lines[4]);
    assert!(stderr.contains("5 recordings") && stderr.contains("1 failed"), "{stderr}");
    assert_eq!(out.status.code(), Some(12));
    server.shutdown().await.unwrap();
}
