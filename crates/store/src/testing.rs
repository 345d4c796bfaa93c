//! Test support (feature `testing`): throwaway Postgres databases and sample rows.

use std::process::Command;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::rows::PredictionRow;

/// The admin URL tests create databases with: `VIGIL_TEST_POSTGRES`, or the server and role
/// `./dev setup` starts and creates.
pub fn admin_url() -> String {
    std::env::var("VIGIL_TEST_POSTGRES").unwrap_or_else(|_| "postgres://vigil:vigil@127.0.0.1:5432/postgres".into())
}

fn psql(sql: &str) {
    let url = admin_url();
    let out = Command::new("psql")
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql must be installed to run the Postgres tests: run ./dev setup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("connection to server") || stderr.contains("authentication failed") {
        panic!(
            "no Postgres answers at {url}: run ./dev setup (it installs and starts one), or set VIGIL_TEST_POSTGRES to yours\n{stderr}"
        );
    }
    assert!(out.status.success(), "{sql}: {stderr}");
}

/// A fresh, empty Postgres database, dropped with the value.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// Creates `vigil_test_<uuid>` on the admin server.
    pub fn create() -> Self {
        let name = format!("vigil_test_{}", Uuid::now_v7().simple());
        psql(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    /// Its connection URL.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
        format!("{base}/{}", self.name)
    }

    /// The address of its server (for a relay in between, [`TestDatabase::url_via`]).
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let (host, port) = self.host_and_port();
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the test server's host {host}"))
    }

    /// Its connection URL, reaching the server through `addr` instead.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (host, port) = self.host_and_port();
        let (url, server) = (self.url(), format!("@{host}:{port}/"));
        assert!(url.contains(&server), "VIGIL_TEST_POSTGRES must name its server's host and port (user@host:port/db)");
        url.replacen(&server, &format!("@{addr}/"), 1)
    }

    fn host_and_port(&self) -> (String, u16) {
        let options: sqlx::postgres::PgConnectOptions = self.url().parse().expect("VIGIL_TEST_POSTGRES is a URL");
        (options.get_host().to_string(), options.get_port())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A logged prediction of the shipped scratch detector with the given time, score and features.
pub fn prediction(time: DateTime<Utc>, score: f32, features: serde_json::Value) -> PredictionRow {
    let defect = score >= 0.5;
    PredictionRow {
        prediction_id: Uuid::now_v7(),
        time,
        request_time: Some(time - chrono::Duration::milliseconds(4)),
        capture_time: None,
        trace_id: String::new(),
        server_id: "edge-1".into(),
        station_id: "line-1".into(),
        device_id: String::new(),
        part_id: String::new(),
        request_id: String::new(),
        api: "inspect".into(),
        model_name: "scratch-detector".into(),
        model_version: "1".into(),
        variant: 1,
        deployment_id: String::new(),
        stage: String::new(),
        features,
        output: serde_json::json!({ "label": if defect { "defect" } else { "ok" }, "scores": [score] }),
        score: Some(score),
        output_null: false,
        verdict: if defect { 2 } else { 1 },
        decision: if defect { 2 } else { 1 },
        queue_time_us: 100,
        compute_time_us: 3_000,
        status: 1,
        error: String::new(),
        capture: String::new(),
    }
}

/// A transcript `text` logged at `time` by recogniser `asr` `version` as `variant` (1 the
/// primary, 3 a shadow) for the request traced `trace`: a text model's answer, its label empty.
pub fn spoken(time: DateTime<Utc>, trace: &str, variant: i16, version: &str, text: &str) -> PredictionRow {
    PredictionRow {
        trace_id: trace.into(),
        variant,
        model_version: version.into(),
        model_name: "asr".into(),
        output: serde_json::json!({ "label": "", "scores": [], "text": text }),
        ..prediction(time, 0.5, serde_json::json!({}))
    }
}

/// `model` `version` registered as a candidate by `anna`, its artifact's digest `digest`.
pub fn candidate_version(model: &str, version: &str, digest: &str) -> crate::ModelVersionRow {
    let now = Utc::now();
    crate::ModelVersionRow {
        model_name: model.into(),
        version: version.into(),
        artifact_sha256: digest.into(),
        artifact_uri: String::new(),
        training_data: String::new(),
        metrics: serde_json::json!({}),
        stage: "candidate".into(),
        registered_by: "anna".into(),
        registered_at: now,
        stage_changed_at: now,
    }
}

/// A deployment of `model` with no candidate: `primary` answers everything, the model decides.
pub fn single_deployment(model: &str, id: &str, primary: &str) -> crate::DeploymentRow {
    crate::DeploymentRow {
        model_name: model.into(),
        deployment_id: id.into(),
        primary_version: primary.into(),
        candidate_version: None,
        mode: "single".into(),
        share: 0.0,
        updated_by: "anna".into(),
        updated_at: Utc::now(),
        policy: "full".into(),
        accept_below: None,
        reject_at: None,
    }
}

/// `row`'s prediction queued for `reviewers` people under `partial`, with no input or suggestion.
pub fn review_item(row: &PredictionRow, reviewers: i16) -> crate::ReviewItem {
    crate::ReviewItem {
        prediction_id: row.prediction_id,
        created_at: row.time,
        model_name: row.model_name.clone(),
        model_version: row.model_version.clone(),
        variant: row.variant,
        station_id: String::new(),
        part_id: String::new(),
        policy: "partial".into(),
        reason: "hard case".into(),
        suggestion: None,
        score: None,
        content_type: String::new(),
        input: None,
        claimed_by: None,
        claimed_until: None,
        decided_by: None,
        decision: None,
        decided_at: None,
        reviews_required: reviewers,
    }
}
