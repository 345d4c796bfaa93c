//! The `vigil` binary end to end: the embedded default and clear one-line usage errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn vigil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.current_dir(root());
    c
}

#[test]
fn up_serves_the_shipped_model_to_the_sample_images_and_logs_every_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vigil.db");
    let out = vigil().args(["up", "--database", db.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("serving scratch-detector version"), "{stderr}");
    let normal = std::fs::read_dir(root().join("samples/normal")).unwrap().count();
    let drifted = std::fs::read_dir(root().join("samples/drifted")).unwrap().count();
    for (set, n) in [("normal", normal), ("drifted", drifted)] {
        assert!(stdout.contains(&format!("== samples/{set} ==")), "{stdout}");
        assert!(stdout.contains(&format!("{n} images in")), "{stdout}");
    }
    // The monitor's summary: every prediction seen, and the drift the drifted samples cause.
    let n = normal + drifted;
    assert!(
        stdout.contains(&format!("monitor: {n} predictions of scratch-detector in the last hour (0 errors)")),
        "{stdout}"
    );
    let drift_line = |feature: &str| stdout.lines().find(|l| l.trim_start().starts_with(feature)).unwrap_or_default();
    assert!(drift_line("brightness").contains("DRIFT"), "{stdout}");
    assert!(stdout.contains("dataset drift: yes"), "{stdout}");
    assert!(stdout.contains("dashboard: http://127.0.0.1:"), "{stdout}");
    let verdict_lines = stdout.lines().filter(|l| l.contains(" p=")).count();
    assert_eq!(verdict_lines, normal + drifted);
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // Every prediction landed in the embedded log, and can be queried.
    assert!(stdout.contains(&format!("{n} predictions logged to {} ({n} in all)", db.display())), "{stdout}");
    let url = format!("sqlite://{}", db.display());
    let out = vigil().args(["query", "--database-url", &url, "--format", "json", "--limit", "1000"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), n);
    assert_drift_matches_scipy(&stdout, &rows);
    let defects = rows.iter().filter(|r| r["verdict"] == 2).count();
    let printed = stdout.lines().filter(|l| l.contains(" p=") && l.contains(" DEFECT ")).count();
    assert_eq!(defects, printed, "one logged verdict per printed verdict");
    // A second run adds to the same log.
    let out = vigil().args(["up", "--database", db.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
        "{n} predictions logged to {} ({} in all)",
        db.display(),
        2 * n
    )));
}

/// The normalised Wasserstein distances `up` prints are within 2% (plus the printed rounding) of
/// scipy's `wasserstein_distance` between the training reference's raw sample and the logged
/// values, divided by the sample's std: every feature and the score.
fn assert_drift_matches_scipy(stdout: &str, rows: &[serde_json::Value]) {
    let python = std::env::var("VIGIL_PYTHON")
        .expect("VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with numpy and scipy)");
    let text = std::fs::read_to_string(root().join("models/scratch-detector/1/reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut pairs = serde_json::Map::new();
    for name in ["brightness", "contrast", "sharpness", "score"] {
        let sample =
            if name == "score" { &reference["score"]["sample"] } else { &reference["features"][name]["sample"] };
        let logged: Vec<f64> = rows
            .iter()
            .map(|r| if name == "score" { &r["score"] } else { &r["features"][name] })
            .map(|v| v.as_f64().unwrap())
            .collect();
        pairs.insert(name.into(), serde_json::json!([sample, logged]));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(file.as_file(), &pairs).unwrap();
    let script = "import json, sys\nimport numpy as np\nfrom scipy import stats\n\
        pairs = json.load(open(sys.argv[1]))\n\
        print(json.dumps({k: stats.wasserstein_distance(r, c) / np.std(r) for k, (r, c) in pairs.items()}))";
    let out = Command::new(python).args(["-c", script]).arg(file.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scipy: std::collections::BTreeMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
    for (name, want) in scipy {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&format!("{name} "))).unwrap_or_default();
        let printed: f64 = line
            .split("wasserstein ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no wasserstein figure for {name} in:\n{stdout}"));
        assert!((printed - want).abs() <= 0.02 * want + 0.0005, "{name}: printed {printed}, scipy {want}");
    }
}

#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    let out = vigil().args(["inspect", "no/such/file.png"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "vigil: no/such/file.png does not exist");

    let out = vigil().args(["inspect", "--server", "not a url", "samples/normal"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid server address"));

    let out = vigil().args(["up", "--samples", "no/such/folder"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample folder no/such/folder not found"));

    // Numbers out of range are refused by name, never a panic (exit code 101).
    for (args, expected) in [
        (&["bench", "--duration-s", "nan"][..], "nan is not a number of seconds between 0 and 86400"),
        (&["bench", "--duration-s=-1"][..], "-1 is not a number of seconds"),
        (&["bench-voice", "--duration-s", "inf"][..], "inf is not a number of seconds"),
        (
            &["inspect", "--timeout-ms", "999999999999999", "samples/normal"][..],
            "999999999999999 is not in 1..=86400000",
        ),
        (&["speak", "--timeout-ms", "0", "x.wav"][..], "0 is not in 1..=86400000"),
    ] {
        let out = vigil().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Runs `vigil <command> --database-url <url> ARGS...`: (exit code, stdout, stderr).
fn vigil_on(url: &str, command: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = vigil().args([command, "--database-url", url]).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A repository under `dir` with the shipped model as version 1 and, with one byte of its
/// artifact changed, version 2; and the URL of an empty registry database.
fn two_versions(dir: &Path) -> (PathBuf, String) {
    let url = format!("sqlite://{}", dir.join("registry.db").display());
    let repo = dir.join("models/scratch-detector");
    let shipped = root().join("models/scratch-detector/1");
    for v in ["1", "2"] {
        std::fs::create_dir_all(repo.join(v)).unwrap();
        for f in ["model.onnx", "metrics.json"] {
            std::fs::copy(shipped.join(f), repo.join(v).join(f)).unwrap();
        }
    }
    let mut onnx = std::fs::read(repo.join("2/model.onnx")).unwrap();
    *onnx.last_mut().unwrap() ^= 1;
    std::fs::write(repo.join("2/model.onnx"), onnx).unwrap();
    (repo, url)
}

#[test]
fn models_are_registered_listed_shown_and_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, url) = two_versions(dir.path());
    let shipped = root().join("models/scratch-detector/1");
    let run = |args: &[&str]| vigil_on(&url, "model", args);
    // The digest, computed independently.
    let sha256sum = |path: &Path| {
        let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    };
    let (digest1, digest2) = (sha256sum(&shipped.join("model.onnx")), sha256sum(&repo.join("2/model.onnx")));
    assert_ne!(digest1, digest2);

    let (code, out, err) = run(&["register", repo.join("1").to_str().unwrap(), "--by", "anna"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("registered scratch-detector version 1 as candidate (sha256 {digest1})")), "{out}");
    let (code, out, _) = run(&["register", repo.join("1").to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("already registered with this artifact"), "{out}");
    assert_eq!(run(&["register", repo.join("2").to_str().unwrap(), "--stage", "staging"]).0, Some(0));

    // Another artifact under a registered version is refused, in one line.
    std::fs::copy(repo.join("2/model.onnx"), repo.join("1/model.onnx")).unwrap();
    let (code, _, err) = run(&["register", repo.join("1").to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("already registered with another artifact (sha256 {digest1})")), "{err}");

    let (_, out, _) = run(&["show", "scratch-detector", "1"]);
    assert!(out.contains(&format!("sha256:         {digest1}")), "{out}");
    assert!(out.contains("registered:     by anna"), "{out}");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join("metrics.json")).unwrap()).unwrap();
    assert!(out.contains(&format!("training data:  training generator, seed {}", card["seeds"]["train"])), "{out}");
    assert!(out.contains("\"acceptance\""), "the model card's evaluation: {out}");

    let (_, out, _) = run(&["promote", "scratch-detector", "1"]);
    assert!(out.contains("scratch-detector version 1: candidate -> production"), "{out}");
    let (_, out, _) =
        run(&["promote", "scratch-detector", "2", "--to", "production", "--by", "ben", "--reason", "recall 0.99"]);
    assert!(out.contains("version 2: staging -> production; archived version 1"), "{out}");
    let audit = vigil().args(["audit", "--database-url", &url]).output().unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    let lines: Vec<&str> = audit.lines().skip(1).collect();
    assert_eq!(lines.len(), 5, "two registrations, one promotion, then an archive and a promotion: {audit}");
    assert!(
        lines[0].contains("ben") && lines[0].contains("promote") && lines[0].contains("scratch-detector/2"),
        "{audit}"
    );
    assert!(lines[0].contains("staging -> production") && lines[0].ends_with("recall 0.99"), "{audit}");
    assert!(lines[1].contains("archive") && lines[1].contains("production -> archived"), "{audit}");
    let (_, out, _) = run(&["list"]);
    let stage = |v: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(v))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
    };
    assert_eq!((stage("1"), stage("2")), ("archived", "production"), "{out}");
    let (code, _, err) = run(&["promote", "scratch-detector", "7"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("scratch-detector version 7 is not registered"), "{err}");
    let (code, _, err) = run(&["promote", "scratch-detector", "2", "--to", "live"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown stage 'live'"), "{err}");
}

#[test]
fn deployments_shadow_canary_switch_and_roll_back_with_an_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, url) = two_versions(dir.path());
    let deploy = |args: &[&str]| vigil_on(&url, "deploy", args);
    for v in ["1", "2"] {
        assert_eq!(vigil_on(&url, "model", &["register", repo.join(v).to_str().unwrap()]).0, Some(0));
    }
    let (code, _, err) = deploy(&["canary", "scratch-detector", "--candidate", "2", "--share", "5"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no deployment and no production version: pass --primary"), "{err}");
    vigil_on(&url, "model", &["promote", "scratch-detector", "1"]);
    let (code, out, err) = deploy(&["canary", "scratch-detector", "--candidate", "2", "--share", "5", "--by", "ben"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("scratch-detector: primary 1, canary 2 at 5%"), "{out}");
    let (_, out, _) = deploy(&["shadow", "scratch-detector", "--candidate", "2", "--share", "12.34"]);
    assert!(out.contains("primary 1, shadow 2 at 12.3%"), "shares in steps of 0.1%: {out}");
    let (_, out, _) = deploy(&["switch", "scratch-detector", "--to", "2", "--reason", "canary clean"]);
    assert!(out.contains("primary 2 (rollback to 1)"), "{out}");
    let (_, out, _) = deploy(&["status"]);
    assert!(out.lines().nth(1).is_some_and(|l| l.contains("primary 2 (rollback to 1)")), "{out}");
    let (_, out, _) = deploy(&["rollback", "scratch-detector"]);
    assert!(out.contains("primary 1 (rollback to 2)"), "{out}");
    // Refusals: one line, exit code 2, nothing changed.
    for (args, message) in [
        (
            vec!["canary", "scratch-detector", "--candidate", "9", "--share", "5"],
            "scratch-detector version 9 is not registered",
        ),
        (vec!["canary", "scratch-detector", "--candidate", "2", "--share", "150"], "between 0 and 100"),
        (vec!["canary", "scratch-detector", "--candidate", "1", "--share", "5"], "the candidate is the primary (1)"),
    ] {
        let (code, _, err) = deploy(&args);
        assert_eq!((code, err.lines().count()), (Some(2), 1), "{err}");
        assert!(err.contains(message), "{err}");
    }
    let (_, out, _) = deploy(&["status", "scratch-detector"]);
    assert!(out.contains("primary 1 (rollback to 2)"), "{out}");
    let (_, audit, _) = vigil_on(&url, "audit", &[]);
    let deploys: Vec<&str> = audit.lines().filter(|l| l.contains(" deploy ")).collect();
    assert_eq!(deploys.len(), 4, "{audit}");
    assert!(
        deploys[1]
            .contains("primary 1, shadow 2 at 12.3%; policy partial -> primary 2 (rollback to 1); policy partial"),
        "{audit}"
    );
    assert!(deploys[1].ends_with("canary clean"), "{audit}");
    assert!(deploys[3].contains("ben"), "{audit}");

    // Who decides: the policy changes alone, and a traffic change keeps it.
    let (code, out, err) =
        deploy(&["policy", "scratch-detector", "partial", "--accept-below", "0.3", "--reject-at", "0.6"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("primary 1 (rollback to 2); policy partial (review band [0.3, 0.6))"), "{out}");
    let (_, out, _) = deploy(&["switch", "scratch-detector", "--to", "2"]);
    assert!(out.contains("primary 2 (rollback to 1); policy partial (review band [0.3, 0.6))"), "{out}");
    let (_, out, _) = deploy(&["policy", "scratch-detector", "assist"]);
    assert!(out.contains("primary 2 (rollback to 1); policy assist"), "{out}");
    for (args, message) in [
        (vec!["policy", "scratch-detector", "autopilot"], "unknown policy 'autopilot'"),
        (
            vec!["policy", "scratch-detector", "partial", "--accept-below", "0.3", "--reject-at", "1.5"],
            "must lie in 0-1",
        ),
    ] {
        let (code, _, err) = deploy(&args);
        assert_eq!((code, err.lines().count()), (Some(2), 1), "{err}");
        assert!(err.contains(message), "{err}");
    }
    let (_, out, _) = deploy(&["status", "scratch-detector"]);
    assert!(out.contains("primary 2 (rollback to 1); policy assist"), "refusals change nothing: {out}");
}

#[test]
fn reviewers_claim_and_decide_items_from_the_command_line() {
    use vigil_store::{PredictionStore, ReviewItem, ReviewStore, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = chrono::Utc::now();
    let rows: Vec<_> = (0..2)
        .map(|i| vigil_store::testing::prediction(now - chrono::Duration::minutes(2 - i), 0.4, serde_json::json!({})))
        .collect();
    let image = std::fs::read(root().join("samples/normal/normal_000_ok.png")).unwrap();
    runtime.block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.insert_batch(&rows, &[]).await.unwrap();
        let items: Vec<ReviewItem> = rows
            .iter()
            .map(|r| ReviewItem {
                prediction_id: r.prediction_id,
                created_at: r.time,
                model_name: r.model_name.clone(),
                model_version: r.model_version.clone(),
                variant: r.variant,
                station_id: r.station_id.clone(),
                part_id: "p-1".into(),
                policy: "assist".into(),
                reason: "policy assist".into(),
                suggestion: Some("ok".into()),
                score: Some(0.4),
                content_type: "image/png".into(),
                input: Some(image.clone()),
                claimed_by: None,
                claimed_until: None,
                decided_by: None,
                decision: None,
                decided_at: None,
                reviews_required: 1,
            })
            .collect();
        store.enqueue_reviews(&items).await.unwrap();
    });
    let review = |args: &[&str]| vigil_on(&url, "review", args);
    let saved = dir.path().join("item.png");
    let (code, out, err) = review(&["next", "--reviewer", "anna", "--save-input", saved.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let first = rows[0].prediction_id.to_string();
    assert!(out.contains(&format!("item        {first}")), "the oldest first: {out}");
    assert!(out.contains("suggestion  ok (score 0.400)"), "{out}");
    assert!(out.contains("claimed by  anna"), "{out}");
    assert_eq!(std::fs::read(&saved).unwrap(), image, "the image as the line sent it");
    let (_, out, _) = review(&["next", "--reviewer", "ben"]);
    assert!(out.contains(&rows[1].prediction_id.to_string()), "Anna's item is not handed to Ben: {out}");
    let (code, _, err) = review(&["submit", &first, "defect", "--reviewer", "ben"]);
    assert_eq!((code, err.lines().count()), (Some(1), 1), "{err}");
    assert!(err.contains("is claimed by anna"), "{err}");
    let (code, out, _) = review(&["submit", &first, "defect", "--reviewer", "anna"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("defect by anna, stored as its label"), "{out}");
    let (code, _, err) = review(&["submit", &first, "ok", "--reviewer", "anna"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already decided by anna (defect)"), "{err}");
    let (_, out, _) = review(&["status"]);
    assert!(out.starts_with("open 1  claimed 1  decided 1"), "{out}");
    let (code, out, _) = review(&["next", "--reviewer", "carl"]);
    assert_eq!(code, Some(3), "nothing left for Carl: {out}");
    // A lease longer than the page allows (an hour) is refused here too.
    let (code, _, err) = review(&["next", "--reviewer", "dora", "--lease-s", "86400"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("86400 is not in 1..=3600"), "{err}");
}

#[test]
fn forget_deletes_a_device_and_its_captured_inputs() {
    use vigil_store::{PredictionStore, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let captures = dir.path().join("captures");
    let now = chrono::Utc::now();
    let mut rows: Vec<_> = (0..4)
        .map(|i| vigil_store::testing::prediction(now - chrono::Duration::minutes(i), 0.4, serde_json::json!({})))
        .collect();
    for row in &mut rows[..3] {
        row.device_id = "cam-7".into();
    }
    // One capture of the device (bytes and metadata, as the capturer stores them), one of another
    // device, and one of the device with the same bytes as the other's (stored by content).
    for (row, digest) in [(0, "aa11"), (3, "bb22"), (1, "bb22")] {
        rows[row].capture = format!("scratch-detector/{digest}");
        std::fs::create_dir_all(captures.join("scratch-detector/predictions")).unwrap();
        std::fs::write(captures.join(format!("scratch-detector/{digest}")), b"png").unwrap();
        let meta = captures.join(format!("scratch-detector/predictions/{}.json", rows[row].prediction_id));
        std::fs::write(meta, b"{}").unwrap();
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.insert_batch(&rows, &[]).await.unwrap();
    });
    let (code, _, stderr) = vigil_on(&url, "forget", &["--device-id", "cam-7"]);
    assert_eq!(code, Some(2), "a reason is required");
    assert!(stderr.contains("--reason"), "{stderr}");
    let store_url = format!("file://{}", captures.display());
    let (code, stdout, stderr) =
        vigil_on(&url, "forget", &["--device-id", "cam-7", "--reason", "request 17", "--capture-store", &store_url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("device:cam-7: deleted 3 predictions"), "{stdout}");
    assert!(stdout.contains("deleted 3 objects of 2 captured inputs"), "{stdout}");
    assert!(stdout.contains("kept the bytes of 1 of them"), "{stdout}");
    assert!(!captures.join("scratch-detector/aa11").exists());
    assert!(captures.join("scratch-detector/bb22").exists(), "bytes another device's record names stay");
    let meta = |row: usize| captures.join(format!("scratch-detector/predictions/{}.json", rows[row].prediction_id));
    assert!(!meta(0).exists() && !meta(1).exists(), "the device's capture metadata goes");
    assert!(meta(3).exists(), "another device's capture metadata stays");
    let remaining = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { SqliteStore::connect(&url).await.unwrap().prediction_ids().await.unwrap() });
    assert_eq!(remaining, vec![rows[3].prediction_id]);
    let (_, audit, _) = vigil_on(&url, "audit", &[]);
    assert!(audit.contains("forget") && audit.contains("device:cam-7"), "{audit}");
}
