//! `vigil rollout` as a person runs it, on a SQLite registry: start a rollout from the current
//! primary, see it, refuse a plan that does not rise to 100% and a promotion without a reason,
//! abort it and find the primary answering again.

use std::process::{Command, Output};

use chrono::Utc;
use vigil_store::{
    Change, DeploymentRow, DeploymentStore, ModelVersionRow, PredictionStore, RegistryStore, SqliteStore,
};

fn vigil(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("rollout")
        .args(args)
        .args(["--database-url", url, "--by", "anna"])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn a_rollout_is_started_shown_refused_when_wrong_and_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    for (version, stage) in [("1", "production"), ("2", "candidate")] {
        let row = ModelVersionRow {
            model_name: "scratch-detector".into(),
            version: version.into(),
            artifact_sha256: format!("{version:0>64}"),
            artifact_uri: "models/scratch-detector".into(),
            training_data: String::new(),
            metrics: serde_json::json!({}),
            stage: stage.into(),
            registered_by: "test".into(),
            registered_at: Utc::now(),
            stage_changed_at: Utc::now(),
        };
        store.register_version(&row, "").await.unwrap();
    }
    let single = DeploymentRow {
        model_name: "scratch-detector".into(),
        deployment_id: "d-1".into(),
        primary_version: "1".into(),
        candidate_version: None,
        mode: "single".into(),
        share: 0.0,
        updated_by: "test".into(),
        updated_at: Utc::now(),
        policy: "partial".into(),
        accept_below: None,
        reject_at: None,
    };
    store.set_deployment(&single, &Change { actor: "test", reason: "", at: Utc::now() }).await.unwrap();
    let url = format!("sqlite://{}", path.display());

    let out = vigil(&url, &["start", "scratch-detector", "--candidate", "2", "--steps", "10,50"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--steps: the last step must give the candidate every key"), "{}", text(&out));

    let out = vigil(
        &url,
        &["start", "scratch-detector", "--candidate", "2", "--steps", "10,50,100", "--step-duration", "5m"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("scratch-detector 1 -> 2: running, step 1 of 3 (10%)"), "{}", text(&out));
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.share, d.policy.as_str()), ("canary", 0.1, "partial"), "the policy is kept");

    // While it runs, the traffic is the controller's: a hand-made change is refused, saying how.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["deploy", "rollback", "scratch-detector", "--database-url", &url, "--by", "ben"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("has a rollout 1 -> 2 running: `vigil rollout abort scratch-detector`"),
        "{}",
        text(&out)
    );
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.share), ("canary", 0.1), "the rollout's step stands");

    let out = vigil(&url, &["promote", "scratch-detector"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--reason is required"), "{}", text(&out));

    let out = vigil(&url, &["abort", "scratch-detector", "--reason", "alarms on the line"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = vigil(&url, &["status"]);
    assert!(
        text(&out).contains("scratch-detector 1 -> 2: aborted") && text(&out).contains("last decision: abort"),
        "{}",
        text(&out)
    );
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.primary_version.as_str()), ("single", "1"));
    let audit = store.audit_events(20).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "rollout" && e.actor == "anna" && e.reason == "alarms on the line"));

    // Again, first in shadow for 30 minutes: every request mirrored, the primary answering.
    let out = vigil(&url, &["start", "scratch-detector", "--candidate", "2", "--shadow", "30m"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("running, step 1 of 6 (shadow 100%)"), "{}", text(&out));
    let d = store.deployments().await.unwrap().remove(0);
    assert_eq!((d.mode.as_str(), d.share, d.primary_version.as_str()), ("shadow", 1.0, "1"));
}
