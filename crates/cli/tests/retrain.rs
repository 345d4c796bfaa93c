//! `vigil retrain` as a person runs it against a SQLite registry (no monitor: jobs stay queued):
//! a job is queued once per model, listed, shown, cancelled and retried; a dataset that is not
//! one or is another model's, and a job id that does not exist, say what to do.

use std::process::{Command, Output};

fn vigil(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("retrain")
        .args(args)
        .args(["--database-url", url, "--by", "anna"])
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn jobs_are_queued_once_per_model_listed_shown_cancelled_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let queued = ok(&vigil(&url, &["--model", "screening", "--rollout"]));
    let job = queued.split_whitespace().nth(3).unwrap().to_string();
    assert!(queued.starts_with(&format!("queued retraining job {job} of screening")), "{queued}");
    // One active job per model.
    let again = refused(&vigil(&url, &["--model", "screening"]));
    assert!(again.contains(&format!("already has a retraining job queued ({job})")), "{again}");
    assert!(again.contains(&format!("vigil retrain cancel {job}")), "{again}");

    let listed = ok(&vigil(&url, &["list"]));
    assert!(listed.starts_with(&format!("{job} screening queued 0%, manual by anna")), "{listed}");
    let shown = ok(&vigil(&url, &["show", &job]));
    assert!(shown.contains("trigger       manual") && shown.contains("requested by  anna"), "{shown}");

    let cancelled = ok(&vigil(&url, &["cancel", &job]));
    assert!(cancelled.starts_with(&format!("{job} screening cancelled")), "{cancelled}");
    let twice = refused(&vigil(&url, &["cancel", &job]));
    assert!(twice.contains("has already cancelled"), "{twice}");
    let retried = ok(&vigil(&url, &["retry", &job]));
    assert!(retried.contains(&format!("(a retry of {job})")), "{retried}");
    let listed = ok(&vigil(&url, &["list", "screening"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.lines().next().unwrap().contains(&format!("queued 0%, retry of {job} by anna")), "{listed}");
}

#[test]
fn a_missing_dataset_a_missing_job_or_no_model_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let no_dataset = refused(&vigil(&url, &["--model", "screening", "--dataset", "/nonexistent"]));
    assert!(no_dataset.contains("cannot read /nonexistent/manifest.json (is it a dataset?)"), "{no_dataset}");
    // Another model's dataset is refused: the job would train `screening` on its rows.
    let other = dir.path().join("ocr-0123456789abcdef");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("manifest.json"), br#"{"dataset_id": "0123456789abcdef", "model": "ocr"}"#).unwrap();
    let wrong_model = refused(&vigil(&url, &["--model", "screening", "--dataset", other.to_str().unwrap()]));
    assert!(wrong_model.contains("holds a dataset of model 'ocr', not of 'screening'"), "{wrong_model}");
    let no_job = refused(&vigil(&url, &["show", "0193"]));
    assert!(no_job.contains("no retraining job 0193 (see `vigil retrain list`)"), "{no_job}");
    let no_model = refused(&vigil(&url, &[]));
    assert!(no_model.contains("give --model MODEL, or a subcommand"), "{no_model}");
    assert_eq!(ok(&vigil(&url, &["list"])), "no retraining jobs\n");
}
