//! `vigil dataset export` on a real SQLite prediction log: a sound dataset is written with its
//! manifest (its id the rows' sha256, computed here independently), and datasets with one
//! class, contradicting duplicates or reviewers who disagree are refused with their reasons.

use std::process::{Command, Output};

use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use vigil_store::{LabelRow, PredictionStore, ReviewStore, SqliteStore};

/// The captured image of item `i`, and its key in the capture store.
fn image(i: usize) -> Vec<u8> {
    format!("image of phone {i}").into_bytes()
}

fn capture_key(i: usize) -> String {
    let sha: String = Sha256::digest(image(i)).iter().map(|b| format!("{b:02x}")).collect();
    format!("scratch-detector/{sha}")
}

/// A log of `n` predictions with features `age` and `temperature` (every fifth temperature
/// missing), labelled by `label(i)`; items listed in `panels` also get three reviewers' answers.
fn log(url: &str, n: usize, label: impl Fn(usize) -> &'static str, panels: &[(usize, [&'static str; 3])]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        let rows: Vec<_> = (0..n)
            .map(|i| {
                let temperature =
                    if i % 5 == 4 { serde_json::Value::Null } else { serde_json::json!(36.5 + i as f64 / 10.0) };
                let features = serde_json::json!({ "age": 20 + i, "temperature": temperature });
                let mut row = vigil_store::testing::prediction(
                    now - Duration::minutes(30) + Duration::seconds(i as i64),
                    0.5,
                    features,
                );
                // Every fourth item's image was captured.
                if i % 4 == 0 {
                    row.capture = capture_key(i);
                }
                row
            })
            .collect();
        let labels = labels_of(&rows, now - Duration::minutes(1), label);
        store.insert_batch(&rows, &labels).await.unwrap();
        for (i, answers) in panels {
            let r = &rows[*i];
            let item = vigil_store::testing::review_item(r, 3);
            store.enqueue_reviews(&[item]).await.unwrap();
            for (reviewer, answer) in ["anna", "ben", "carl"].into_iter().zip(answers) {
                store.submit_review(r.prediction_id, reviewer, answer, now - Duration::minutes(2)).await.unwrap();
            }
        }
    });
}

/// An inspector's label for each of `rows`, given at `time`: `label(i)` for the i-th.
fn labels_of(
    rows: &[vigil_store::PredictionRow],
    time: chrono::DateTime<Utc>,
    label: impl Fn(usize) -> &'static str,
) -> Vec<LabelRow> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| LabelRow {
            label_id: uuid::Uuid::now_v7(),
            prediction_id: r.prediction_id,
            label: label(i).into(),
            time,
            source: "inspector".into(),
        })
        .collect()
}

fn export(url: &str, out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["dataset", "export", "--database-url", url, "--model", "scratch-detector", "--since", "1h"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// A log of 40 predictions (every third labelled a defect) in `dir`, and a capture store
/// beside it holding the images of the ten captured items (every fourth), except those in
/// `missing`, with other bytes for those in `altered`; the log's URL and the store's.
fn captured_log(dir: &std::path::Path, missing: &[usize], altered: &[usize]) -> (String, String) {
    let url = format!("sqlite://{}", dir.join("vigil.db").display());
    log(&url, 40, |i| if i % 3 == 0 { "defect" } else { "ok" }, &[]);
    let store = dir.join("captures");
    std::fs::create_dir_all(store.join("scratch-detector")).unwrap();
    for i in (0..40).step_by(4).filter(|i| !missing.contains(i)) {
        let bytes = if altered.contains(&i) { b"something else".to_vec() } else { image(i) };
        std::fs::write(store.join(capture_key(i)), bytes).unwrap();
    }
    (url, format!("file://{}", store.display()))
}

/// `vigil dataset export` of the last two hours with no agreement floor, and `args`.
fn export_with(url: &str, out: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["dataset", "export", "--database-url", url, "--model", "scratch-detector", "--since", "2h"])
        .args(["--min-kappa", "0"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The file path of a `file://` capture store's object `key`.
fn stored(store: &str, key: &str) -> std::path::PathBuf {
    std::path::Path::new(store.strip_prefix("file://").unwrap()).join(key)
}

#[test]
fn a_sound_dataset_is_written_with_a_manifest_naming_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let agreeing = [(0, ["ok", "ok", "ok"]), (1, ["defect", "defect", "defect"]), (2, ["ok", "ok", "defect"])];
    log(&url, 40, |i| if i % 3 == 0 { "defect" } else { "ok" }, &agreeing);
    // Neither a refused request (no inputs) nor a shadow's copy of an item is another item.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        let at = Utc::now() - Duration::minutes(10);
        let failed = vigil_store::PredictionRow {
            status: 3,
            ..vigil_store::testing::prediction(at, 0.5, serde_json::json!({ "inputs": null }))
        };
        let shadow = vigil_store::PredictionRow {
            variant: 3,
            ..vigil_store::testing::prediction(at, 0.5, serde_json::json!({ "age": 20, "temperature": 36.5 }))
        };
        store.insert_batch(&[failed, shadow], &[]).await.unwrap();
    });
    let out = export(&url, &dir.path().join("datasets"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("label_consistency  ok"), "{stdout}");

    let written: Vec<_> = std::fs::read_dir(dir.path().join("datasets")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(written.len(), 1);
    let rows = std::fs::read(written[0].join("rows.csv")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(written[0].join("manifest.json")).unwrap()).unwrap();
    let sha256: String = Sha256::digest(&rows).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(manifest["files"]["rows.csv"]["sha256"], sha256);
    assert!(written[0].ends_with(format!("scratch-detector-{}", &sha256[..16])));
    assert_eq!((manifest["rows"].as_u64(), manifest["labelled"].as_u64()), (Some(40), Some(40)));
    // Each item's latest label: the inspectors' (given after the panels decided).
    assert_eq!(manifest["classes"], serde_json::json!({ "defect": 14, "ok": 26 }), "{manifest}");
    assert_eq!(manifest["columns"], serde_json::json!(["age", "temperature"]));
    let text = String::from_utf8(rows).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("prediction_id,time,model_version,age,temperature,label,capture"));
    let fifth: Vec<&str> = lines.nth(4).unwrap().split(',').collect();
    assert_eq!((fifth[3], fifth[4], fifth[5]), ("24", "", "ok"), "a missing temperature stays empty");
    assert_eq!(fifth[6], capture_key(4), "the captured image's key");
    assert_eq!(manifest["captured"], 10);
}

#[test]
fn datasets_that_would_mislead_training_are_refused_with_their_reasons() {
    type Labeller = Box<dyn Fn(usize) -> &'static str>;
    type Panels = Vec<(usize, [&'static str; 3])>;
    let cases: [(&str, Labeller, Panels); 2] = [
        ("class_balance", Box::new(|_| "ok"), Vec::new()),
        (
            "label_consistency",
            Box::new(|i| if i % 2 == 0 { "defect" } else { "ok" }),
            (0..8).map(|i| (i, if i % 2 == 0 { ["ok", "defect", "ok"] } else { ["defect", "ok", "defect"] })).collect(),
        ),
    ];
    for (failing, label, panels) in cases {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
        log(&url, 30, label, &panels);
        let out = export(&url, &dir.path().join("datasets"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{failing}: {stderr}");
        assert!(stderr.contains(&format!("dataset refused ({failing})")), "{stderr}");
        assert!(!dir.path().join("datasets").exists(), "nothing written");
    }
}

#[test]
fn captured_inputs_are_copied_into_the_dataset_and_a_missing_or_altered_one_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    // Item 36's image never reached the store; item 8's was altered there.
    let (url, store) = captured_log(dir.path(), &[36], &[8]);
    let out = dir.path().join("datasets");
    let export = |out: &std::path::Path| export_with(&url, out, &["--captures", &store]);
    let refused = export(&out);
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("captures") && stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains(&format!("missing from the store: {}", capture_key(36))), "{stdout}");
    assert!(stdout.contains(&format!("content not matching its hash: {}", capture_key(8))), "{stdout}");
    assert!(std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_none()), "nothing written");

    std::fs::write(stored(&store, &capture_key(36)), image(36)).unwrap();
    std::fs::write(stored(&store, &capture_key(8)), image(8)).unwrap();
    // The same rows exported first without their inputs, then with them: one dataset, completed.
    let without = export_with(&url, &out, &[]);
    assert!(without.status.success(), "{}", String::from_utf8_lossy(&without.stderr));
    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let read_manifest = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap()
    };
    assert!(read_manifest()["inputs"].is_null() && !dataset.join("inputs").exists());
    let written = export(&out);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stdout));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "the same rows are the same dataset");
    let manifest = read_manifest();
    assert_eq!(manifest["inputs"]["files"], 10, "{manifest}");
    let checks = manifest["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "captures" && c["passed"] == true), "{manifest}");
    for i in (0..40).step_by(4) {
        let sha = capture_key(i).rsplit('/').next().unwrap().to_string();
        assert_eq!(std::fs::read(dataset.join("inputs").join(&sha)).unwrap(), image(i));
    }
    // The manifest replaced is readable by others, as the one written first (a recipe may run
    // under another user).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dataset.join("manifest.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o644, 0o644, "{mode:o}");
}

#[test]
fn an_export_that_fails_part_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = captured_log(dir.path(), &[], &[]);
    // One captured input cannot be read (a link to itself): the copy fails part-way, after the
    // inputs before it were written.
    let unreadable = stored(&store, &capture_key(20));
    std::fs::remove_file(&unreadable).unwrap();
    std::os::unix::fs::symlink(&unreadable, &unreadable).unwrap();
    let out = dir.path().join("datasets");
    let failed = export_with(&url, &out, &["--captures", &store]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains(&capture_key(20)), "the error names the input: {stderr}");
    // The folder made for the export, removed again as it holds nothing.
    assert!(!out.exists(), "a half-written dataset was left: {:?}", std::fs::read_dir(&out).map(|d| d.count()));
}

#[test]
fn lost_inputs_within_the_limit_leave_their_rows_without_an_input() {
    let dir = tempfile::tempdir().unwrap();
    // Of the ten captured images, item 36's never reached the store and item 8's was altered.
    let (url, store) = captured_log(dir.path(), &[36], &[8]);
    let out = dir.path().join("datasets");
    let export = |share: &str| export_with(&url, &out, &["--captures", &store, "--max-lost-capture-share", share]);
    // Two lost of ten: over a limit of 0.19, within one of 0.2.
    let refused = export("0.19");
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("2 lost (0.200, limit 0.19)"), "{stdout}");
    let written = export("0.2");
    let stdout = String::from_utf8_lossy(&written.stdout);
    assert!(written.status.success(), "{stdout}{}", String::from_utf8_lossy(&written.stderr));
    assert!(stdout.contains("2 lost (0.200, limit 0.2), their rows kept without their input"), "{stdout}");

    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 40, "every row kept: {manifest}");
    assert_eq!(manifest["captured"], 8, "{manifest}");
    assert_eq!(manifest["inputs"]["files"], 8, "{manifest}");
    assert_eq!(manifest["inputs"]["lost"], 2, "{manifest}");
    // The rows, read back: the lost inputs' rows name no capture, the others theirs, each on disk.
    let rows = std::fs::read(dataset.join("rows.csv")).unwrap();
    let sha256: String = Sha256::digest(&rows).iter().map(|b| format!("{b:02x}")).collect();
    assert!(dataset.ends_with(format!("scratch-detector-{}", &sha256[..16])), "the id names the rows written");
    let text = String::from_utf8(rows).unwrap();
    for (i, line) in text.lines().skip(1).enumerate() {
        let capture = line.rsplit(',').next().unwrap();
        let expected = if i % 4 == 0 && i != 8 && i != 36 { capture_key(i) } else { String::new() };
        assert_eq!(capture, expected, "row {i}");
        if !capture.is_empty() {
            let sha = capture.rsplit('/').next().unwrap();
            assert_eq!(std::fs::read(dataset.join("inputs").join(sha)).unwrap(), image(i));
        }
    }
    for lost in [8, 36] {
        let sha = capture_key(lost).rsplit('/').next().unwrap().to_string();
        assert!(!dataset.join("inputs").join(sha).exists(), "no file for the lost input of item {lost}");
    }
}

#[test]
fn a_torn_dataset_of_the_same_rows_is_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = captured_log(dir.path(), &[], &[]);
    let out = dir.path().join("datasets");
    let export = || export_with(&url, &out, &["--captures", &store]);
    let first = export();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let whole_rows = std::fs::read(dataset.join("rows.csv")).unwrap();
    let one_input = dataset.join("inputs").join(capture_key(12).rsplit('/').next().unwrap());

    // What a power cut leaves of files renamed into place before their data reached the disk:
    // a rows.csv cut short, then (once that is mended) an input file that is empty.
    let tears: [(&std::path::Path, usize); 2] = [(&dataset.join("rows.csv"), 100), (&one_input, 0)];
    for (torn, keep) in tears {
        let bytes = std::fs::read(torn).unwrap();
        std::fs::write(torn, &bytes[..keep]).unwrap();
        let again = export();
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [dataset.file_name().unwrap()], "the same dataset, nothing set aside left behind");
        assert_eq!(std::fs::read(dataset.join("rows.csv")).unwrap(), whole_rows, "rows written again");
        assert_eq!(std::fs::read(&one_input).unwrap(), image(12), "inputs written again");
    }

    // Torn again, exported now with no capture store: its inputs, each whole, are kept.
    std::fs::write(dataset.join("rows.csv"), &whole_rows[..100]).unwrap();
    let without = export_with(&url, &out, &[]);
    assert!(without.status.success(), "{}", String::from_utf8_lossy(&without.stderr));
    assert_eq!(std::fs::read(dataset.join("rows.csv")).unwrap(), whole_rows, "rows written again");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"]["files"], 10, "{manifest}");
    for i in (0..40).step_by(4) {
        let sha = capture_key(i).rsplit('/').next().unwrap().to_string();
        assert_eq!(std::fs::read(dataset.join("inputs").join(sha)).unwrap(), image(i), "item {i}'s input kept");
    }
    // Torn in an input too: it cannot be kept, so the dataset is written without inputs (an
    // export with the capture store adds them).
    std::fs::write(dataset.join("rows.csv"), &whole_rows[..100]).unwrap();
    std::fs::write(&one_input, b"").unwrap();
    let without = export_with(&url, &out, &[]);
    assert!(without.status.success(), "{}", String::from_utf8_lossy(&without.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["inputs"].is_null() && !dataset.join("inputs").exists(), "{manifest}");
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [dataset.file_name().unwrap()], "nothing set aside left behind");
}

/// The log is read a page at a time per variant and the pages merged: an export of more rows
/// than a page, with unmarked, primary and canary rows interleaved with shadows' copies and
/// refused requests, holds every row that served and succeeded, once, in id order.
#[test]
fn an_export_longer_than_a_page_holds_every_served_row_once_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let n = 2 * vigil_store::MAX_QUERY_ROWS as usize + 500;
    let expected: Vec<String> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        // Ids made in turn are in time order: variants alternate along them.
        let rows: Vec<_> = (0..n)
            .map(|i| {
                let features = serde_json::json!({ "x": i });
                let mut row = vigil_store::testing::prediction(
                    now - Duration::minutes(30) + Duration::milliseconds(i as i64),
                    0.5,
                    features,
                );
                (row.variant, row.status) = [(0, 1), (1, 1), (2, 1), (3, 1), (1, 2)][i % 5];
                row
            })
            .collect();
        let labels = labels_of(&rows, now, |i| if i % 2 == 0 { "defect" } else { "ok" });
        for (rows, labels) in rows.chunks(5_000).zip(labels.chunks(5_000)) {
            store.insert_batch(rows, labels).await.unwrap();
        }
        let mut served: Vec<_> =
            rows.iter().filter(|r| r.variant != 3 && r.status == 1).map(|r| r.prediction_id).collect();
        served.sort();
        served.iter().map(ToString::to_string).collect()
    });
    let out = dir.path().join("datasets");
    let written = export_with(&url, &out, &[]);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let rows = std::fs::read_to_string(dataset.join("rows.csv")).unwrap();
    let ids: Vec<&str> = rows.lines().skip(1).map(|line| line.split(',').next().unwrap()).collect();
    assert_eq!(ids.len(), n * 3 / 5);
    assert!(ids == expected, "the rows are the served ones, each once, in id order");
}

/// Every feature value in `rows.csv` reads as the log's own number: small numbers whose shortest
/// decimal form a second parse would move by a digit (the snapshot keeps each as written) come
/// out as the store reads them.
#[test]
fn feature_values_are_written_as_the_log_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    // Numbers from 1e-20 to 1e-6 with 17 significant digits, from a fixed generator.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mantissa = 1.0 + (state % 9_000_000_000_000_000) as f64 / 1e18;
        mantissa * 10f64.powi(-6 - (state % 15) as i32)
    };
    let expected: Vec<Vec<String>> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        let rows: Vec<_> = (0..300)
            .map(|i| {
                let features = serde_json::json!({ "a": next(), "b": next(), "c": next(), "i": i });
                vigil_store::testing::prediction(now - Duration::minutes(30) + Duration::seconds(i), 0.5, features)
            })
            .collect();
        let labels = labels_of(&rows, now, |i| if i % 2 == 0 { "defect" } else { "ok" });
        store.insert_batch(&rows, &labels).await.unwrap();
        // As the store reads them back, each number printed as Rust prints an f64.
        let filter = vigil_store::PredictionFilter { limit: 1000, ..Default::default() };
        let read = store.query_predictions(&filter).await.unwrap();
        read.iter()
            .map(|r| ["a", "b", "c"].iter().map(|c| r.features[*c].as_f64().unwrap().to_string()).collect())
            .collect()
    });
    let out = dir.path().join("datasets");
    let written = export_with(&url, &out, &[]);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let rows = std::fs::read_to_string(dataset.join("rows.csv")).unwrap();
    let mut lines = rows.lines();
    assert!(lines.next().unwrap().starts_with("prediction_id,time,model_version,a,b,c,i,"));
    let cells: Vec<Vec<String>> =
        lines.map(|line| line.split(',').skip(3).take(3).map(str::to_string).collect()).collect();
    assert_eq!(cells.len(), expected.len());
    let differing = cells.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "rows whose values moved: first {:?}", cells.iter().zip(&expected).find(|(a, b)| a != b));
}

/// An export tells its progress: the rows read after each page, then each captured input fetched.
#[test]
fn an_export_tells_how_far_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = captured_log(dir.path(), &[], &[]);
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spec = vigil_datasets::Spec {
        model: "scratch-detector".into(),
        version: None,
        since: Utc::now() - Duration::hours(2),
        until: Utc::now(),
        only_labelled: false,
        limits: vigil_datasets::Limits { min_kappa: 0.0, ..Default::default() },
        out: dir.path().join("datasets"),
        captures: Some(vigil_datasets::Captures::open(&store).unwrap()),
        progress: Some(vigil_datasets::OnProgress({
            let told = told.clone();
            std::sync::Arc::new(move |p| told.lock().unwrap().push(p))
        })),
    };
    let exported = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        vigil_datasets::export(&store, &spec).await.unwrap()
    });
    assert!(matches!(exported, vigil_datasets::Export::Written(_)), "{exported:?}");
    use vigil_datasets::Progress::{Inputs, Rows};
    let mut expected = vec![Rows(40)];
    expected.extend((1..=10).map(|fetched| Inputs { fetched, of: 10 }));
    assert_eq!(*told.lock().unwrap(), expected);
}

/// The same rows exported again with the capture store are the dataset written before with
/// every input: nothing is fetched (here the store has since lost them all, which would refuse
/// a fresh export), and the `captures` check says so.
#[test]
fn an_export_of_rows_exported_before_with_their_inputs_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = captured_log(dir.path(), &[], &[]);
    let out = dir.path().join("datasets");
    let first = export_with(&url, &out, &["--captures", &store]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let dataset = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let manifest_before = std::fs::read(dataset.join("manifest.json")).unwrap();
    std::fs::remove_dir_all(stored(&store, "scratch-detector")).unwrap();

    let again = export_with(&url, &out, &["--captures", &store]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", String::from_utf8_lossy(&again.stderr));
    assert!(stdout.contains("10 of 10 captured inputs copied") && stdout.contains("nothing fetched"), "{stdout}");
    assert!(stdout.contains(dataset.file_name().unwrap().to_str().unwrap()), "{stdout}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "the same dataset");
    assert_eq!(std::fs::read(dataset.join("manifest.json")).unwrap(), manifest_before, "left as it was");
}
