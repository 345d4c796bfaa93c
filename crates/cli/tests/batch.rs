//! `vigil batch` over tables as a user runs it: a CSV and a Parquet file (written by Python's
//! csv module and pyarrow) scored by a tabular model on vigil-cloud, compared row by row with
//! onnxruntime in Python; every row logged with its columns as named features; mistakes in
//! the table or the flags refused with the place named; and a table listing recordings with
//! what was said, answered with the word error rate.

use std::path::Path;
use std::process::{Command, Output};

use tokio::sync::mpsc;
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_proto::vigil::v1::PredictionRecord;
use vigil_serving::records::RecordEmitter;
use vigil_testkit::speech::{self as voices, ADULT};

const MODEL_TOML: &str = r#"
name = "screening"
version = 1
description = "Logistic screening score over three vital signs"
max_batch_size = 16
labels = ["healthy", "sick"]

[[inputs]]
name = "x"
datatype = "FP32"
dims = [3]
features = ["age", "temperature", "heart_rate"]

[[outputs]]
name = "probabilities"
datatype = "FP32"
dims = [2]

[dynamic_batching]
max_batch_size = 16
max_queue_delay_us = 500
max_queue_depth = 256
"#;

/// The model repository, the tables and onnxruntime's expected answers, made by Python.
fn fixtures(dir: &Path) -> Vec<serde_json::Value> {
    let python = std::env::var("VIGIL_PYTHON").expect(
        "VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with onnx, onnxruntime, pyarrow)",
    );
    let script = voices::repo_root().join("tests/peers/tabular_model.py");
    let out = Command::new(python).arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "tabular_model.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let version = dir.join("repo/screening/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::rename(dir.join("screening.onnx"), version.join("model.onnx")).unwrap();
    std::fs::write(version.join("model.toml"), MODEL_TOML).unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

/// vigil-cloud on `models`, its records on an in-process bus the test reads.
async fn cloud(models: &Path) -> (vigil_cloud::RunningServer, mpsc::Receiver<vigil_logbus::Envelope>) {
    let mut config = CloudConfig { model_repository: models.to_path_buf(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = voices::repo_root().join("deploy/catalog/products.csv");
    let (sink, records) = vigil_logbus::in_process::channel(4096);
    let (emitter, _task) = Emitter::start(sink, 4096, 8);
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-batch"))).await.unwrap();
    (server, records)
}

/// Runs `vigil batch ARGS --server ...` off the test's runtime (the server runs on it).
fn batch(server: &vigil_cloud::RunningServer, args: &[&str]) -> Output {
    let server = format!("http://{}", server.addr);
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_vigil")).arg("batch").args(args).args(["--server", &server]).output().unwrap()
    })
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_and_a_parquet_table_are_scored_as_onnxruntime_scores_them_and_every_row_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let expected = fixtures(dir.path());
    let (server, mut records) = cloud(&dir.path().join("repo")).await;

    for table in ["patients.csv", "patients.parquet"] {
        let path = dir.path().join(table);
        // 7 rows per request (the last one 5), 3 requests at once: the answers still come in order.
        let out = batch(
            &server,
            &[path.to_str().unwrap(), "--model", "screening", "--rows-per-request", "7", "--concurrency", "3"],
        );
        let lines = json_lines(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("40 rows scored by screening") && stderr.contains("6 requests of at most 7"),
            "{stderr}"
        );
        assert!(
            stderr.contains("1 missing values sent as NaN") && stderr.contains("columns: age, temperature, heart_rate"),
            "{stderr}"
        );
        same_answers(table, &lines, &expected);

        // The server logged each row once, under the id the line carries, with its columns as
        // named features (the missing temperature flagged missing).
        let mut logged = std::collections::HashMap::new();
        while logged.len() < lines.len() {
            let envelope =
                tokio::time::timeout(std::time::Duration::from_secs(10), records.recv()).await.unwrap().unwrap();
            let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
            assert!(logged.insert(record.prediction_id.clone(), record).is_none(), "a row logged twice");
        }
        for line in &lines {
            let record = &logged[line["prediction_id"].as_str().unwrap()];
            let feature = |name: &str| {
                record.features.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name}: {record:?}"))
            };
            let row = line["row"].as_u64().unwrap();
            assert_eq!(feature("temperature").missing, row == 5, "row {row}: {record:?}");
            assert!(feature("age").value >= 18.0 && feature("heart_rate").value >= 55.0, "{record:?}");
            assert_eq!(record.api, "model_infer");
        }
    }
    server.shutdown().await.unwrap();
}

/// Every line is its row, in order, with onnxruntime's answer (1e-6), the label of the higher
/// score and a prediction id.
fn same_answers(table: &str, lines: &[serde_json::Value], expected: &[serde_json::Value]) {
    assert_eq!(lines.len(), expected.len(), "{table}");
    for (i, (line, want)) in lines.iter().zip(expected).enumerate() {
        assert_eq!(line["row"], i + 1, "{table}: {line}");
        assert_eq!(line["id"], want["id"], "{table}: {line}");
        let got = line["outputs"]["probabilities"].as_array().unwrap();
        let want = want["probabilities"].as_array().unwrap();
        for (g, w) in got.iter().zip(want) {
            match (g.as_f64(), w.as_f64()) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-6, "{table} row {}: {g} vs {w}", i + 1),
                // A missing temperature: NaN in, NaN out, on both sides.
                (g, w) => assert_eq!((g, w), (None, None), "{table} row {}", i + 1),
            }
        }
        if let (Some(healthy), Some(sick)) = (want[0].as_f64(), want[1].as_f64()) {
            assert_eq!(line["label"], if sick > healthy { "sick" } else { "healthy" }, "{table}: {line}");
        }
        assert!(line["prediction_id"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_the_batch_needs_no_server_and_every_row_reaches_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let expected = fixtures(dir.path());
    let broker = vigil_testkit::kafka::KafkaBroker::start(1).await;
    let config = dir.path().join("cloud.toml");
    let logging = format!("[logging]\nenabled = true\n\n[logging.kafka]\nbrokers = \"{}\"\n", broker.brokers());
    std::fs::write(&config, logging).unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("batch")
            .arg(dir.path().join("patients.parquet"))
            .args(["--model", "screening", "--in-process", "--config"])
            .arg(&config)
            .arg("--model-repository")
            .arg(dir.path().join("repo"))
            .output()
            .unwrap()
    });
    same_answers("in-process", &json_lines(&out), &expected);
    // The process handed every record to Kafka before it exited.
    assert_eq!(broker.message_count(vigil_logbus::topics::PREDICTIONS), expected.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_in_the_table_or_the_flags_are_refused_saying_where() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let (server, _records) = cloud(&dir.path().join("repo")).await;
    let csv = dir.path().join("patients.csv");
    let csv = csv.to_str().unwrap();
    let refused = |args: &[&str], says: &str| {
        let out = batch(&server, args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing is scored before the table is checked: {args:?}");
    };
    refused(
        &[csv, "--model", "screening", "--columns", "age,temperature"],
        "takes 3 values per row, but 2 columns were chosen",
    );
    refused(
        &[csv, "--model", "screening", "--columns", "age,note,temperature"],
        "row 1, column 'note': 'visit 0' is not a number",
    );
    refused(&[csv, "--model", "screening", "--columns", "age,weight,temperature"], "no column 'weight'");
    refused(&[csv, "--model", "nope"], "model 'nope': NotFound");
    refused(&[csv, "--model", "screening", "--id-column", "patient"], "no column 'patient'");
    refused(&[csv], "needs a `path` column");
    refused(&["a.wav", csv], "not a table together with other inputs");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "age,temperature\n40,37\n41\n").unwrap();
    refused(&[bad.to_str().unwrap(), "--model", "screening"], "line 3");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_recordings_with_what_was_said_gets_the_word_error_rate() {
    let models = voices::cloud_models();
    let (server, _records) = cloud(&models).await;
    let dir = tempfile::tempdir().unwrap();
    let said = ["coffee grinder", "yoga mat", "mechanical keyboard"];
    std::fs::create_dir_all(dir.path().join("clips")).unwrap();
    let mut list = String::from("id,path,text\n");
    for (i, text) in said.iter().enumerate() {
        let recording = [voices::silence(500), voices::say(text, ADULT), voices::silence(500)].concat();
        vigil_speech::audio::write_wav(&dir.path().join(format!("clips/{i}.wav")), &recording).unwrap();
        list += &format!("q{i},clips/{i}.wav,{text}\n");
    }
    std::fs::write(dir.path().join("queries.csv"), list).unwrap();
    let vad = models.join("silero-vad/1");
    let out = batch(&server, &[dir.path().join("queries.csv").to_str().unwrap(), "--vad-model", vad.to_str().unwrap()]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    let (mut errors, mut words) = (0.0, 0.0);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], format!("q{i}"));
        assert_eq!(line["said"], said[i]);
        let (reference, heard) = (
            vigil_speech::text::normalise(said[i]),
            vigil_speech::text::normalise(line["transcript"].as_str().unwrap()),
        );
        let reference: Vec<&str> = reference.split_whitespace().collect();
        let e = vigil_speech::text::word_errors(&reference, &heard.split_whitespace().collect::<Vec<_>>()) as f64;
        assert!((line["word_error_rate"].as_f64().unwrap() - e / reference.len() as f64).abs() < 1e-12, "{line}");
        (errors, words) = (errors + e, words + reference.len() as f64);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("word error rate {:.3} over {words} words", errors / words)), "{stderr}");
    server.shutdown().await.unwrap();
}
