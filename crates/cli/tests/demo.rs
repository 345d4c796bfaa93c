//! `vigil demo NAME` as a person runs it: the binary, SQLite in a temporary directory, the
//! models trained by the project's recipes; each example ends as it should and says so.

use std::process::{Command, Output};

/// One demo at a time: each runs its servers, load and monitor on this machine's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn demo(args: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Command::new(env!("CARGO_BIN_EXE_vigil")).arg("demo").args(args).output().unwrap()
}

fn stdout_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("as expected\n"), "{stdout}");
    stdout
}

#[test]
fn the_phone_line_example_promotes_the_next_version_from_shadow_and_rolls_back_the_bad_one() {
    let stdout = stdout_of(&demo(&["phone-line"]));
    assert!(stdout.contains("version 2: step 1 (shadow)") && stdout.contains("50% of the stations"), "{stdout}");
    assert!(
        stdout.contains("outcome: version 2 promoted (shadow, half the stations, all); version 3 rolled_back"),
        "{stdout}"
    );
}

#[test]
fn the_anti_spam_example_promotes_the_retrained_filter_and_rolls_back_the_bad_one() {
    let stdout = stdout_of(&demo(&["anti-spam"]));
    assert!(stdout.contains("version 2: step 1 (1% of users)"), "{stdout}");
    assert!(
        stdout.contains("outcome: version 2 promoted through 4 steps; version 3 rolled_back at 1% of users"),
        "{stdout}"
    );
    assert!(stdout.contains("failing checks: score_ks"), "{stdout}");
}

#[test]
fn the_screening_example_reports_automation_and_the_doctors_agreement() {
    let stdout = stdout_of(&demo(&["screening"]));
    assert!(stdout.contains("3 doctors decided"), "{stdout}");
    assert!(stdout.contains("outcome: automation rate") && stdout.contains("Fleiss' kappa"), "{stdout}");
    for doctor in ["dr-adams", "dr-baker", "dr-chen"] {
        assert!(stdout.contains(doctor), "{stdout}");
    }
}

#[test]
fn the_recommender_example_fires_an_alarm_on_each_stage_only_after_the_redesign() {
    let stdout = stdout_of(&demo(&["recommender"]));
    assert!(stdout.contains("before the redesign unknown-fraction quiet, click-through quiet"), "{stdout}");
    assert!(stdout.contains("unknown-fraction firing (") && stdout.contains("click-through firing ("), "{stdout}");
}

#[test]
fn the_loop_example_retrains_the_screening_model_by_itself_and_promotes_it() {
    let stdout = stdout_of(&demo(&["loop"]));
    assert!(stdout.contains("screening-accuracy fires after"), "{stdout}");
    assert!(stdout.contains("candidate registered") && stdout.contains("serving in shadow"), "{stdout}");
    assert!(stdout.contains("version 2 promoted") && stdout.contains("screening-accuracy resolved"), "{stdout}");
}

#[test]
fn the_line_loop_example_fine_tunes_the_scratch_detector_on_captured_images_and_promotes_it() {
    let stdout = stdout_of(&demo(&["line-loop"]));
    assert!(stdout.contains("line-brightness fires after") && stdout.contains("line-accuracy fires after"), "{stdout}");
    assert!(stdout.contains("candidate registered") && stdout.contains("serving in shadow"), "{stdout}");
    assert!(stdout.contains("version 2 promoted") && stdout.contains("line-accuracy resolved"), "{stdout}");
    assert!(stdout.contains("decided") && stdout.contains("phones in the review queue"), "{stdout}");
}

#[test]
fn an_unknown_example_or_a_missing_python_says_what_to_do() {
    let out = demo(&["phone-shop"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("anti-spam") && stderr.contains("recommender"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["demo", "screening"])
        .env("VIGIL_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/python"), "{stderr}");
}
