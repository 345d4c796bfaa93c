//! A logging policy end to end: vigil-edge logs hashed identifiers, chosen features and labels
//! without scores through a real broker and vigil-logger into Postgres; `vigil forget` finds a
//! station's hashed records with the same key.

#[path = "../../logger/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_serving::log_policy::{Identifiers, LogPolicyConfig, OutputDetail, PolicyRules, hashed_identifier};
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashed_identifiers_chosen_features_and_no_scores_reach_postgres_and_can_be_forgotten() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("identifier.key");
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    std::fs::write(&key_file, &key).unwrap();

    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root().join("models"),
        ..Default::default()
    };
    edge.logging.enabled = true;
    edge.logging.kafka = broker.kafka();
    edge.logging.policy = LogPolicyConfig {
        identifiers: Some(Identifiers::Hashed),
        identifier_key_file: Some(key_file.clone()),
        models: [(
            "scratch-detector".to_string(),
            PolicyRules {
                features: Some(vec!["brightness".into(), "contrast".into()]),
                outputs: Some(OutputDetail::Label),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let server = vigil_edge::start(edge, false).await.unwrap();
    let logger = RunningLogger::quick(broker.brokers(), db.url());

    let image = std::fs::read_dir(root().join("samples/normal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .map(|p| std::fs::read(p).unwrap())
        .unwrap();
    let mut client = InspectionClient::connect(format!("http://{}", server.addr)).await.unwrap();
    for (station, n) in [("line-1", 6), ("line-2", 4)] {
        for i in 0..n {
            let request = InspectRequest {
                image: image.clone(),
                station_id: station.into(),
                part_id: format!("{station}-part-{i}"),
                ..Default::default()
            };
            let answer = client.inspect(request).await.unwrap().into_inner();
            assert!(answer.features.is_some(), "the caller still gets every feature");
        }
    }
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(60), "10 records in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= 10
    })
    .await;
    logger.stop().await;
    server.shutdown().await.unwrap();

    let rows: Vec<(String, String, serde_json::Value, serde_json::Value)> =
        sqlx::query_as("SELECT station_id, part_id, features, output FROM predictions ORDER BY station_id, part_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 10);
    let line_1 = hashed_identifier(&key, "line-1");
    let line_2 = hashed_identifier(&key, "line-2");
    let stations: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(stations.iter().filter(|s| **s == line_1).count(), 6, "{stations:?}");
    assert_eq!(stations.iter().filter(|s| **s == line_2).count(), 4, "{stations:?}");
    for (_, part, features, output) in &rows {
        assert!(part.starts_with("h:") && !part.contains("part"), "{part}");
        let names: Vec<&String> = features.as_object().unwrap().keys().collect();
        assert_eq!(names, ["brightness", "contrast"], "only the chosen features");
        assert!(output["label"].is_string(), "{output}");
        let scores = output.get("scores").and_then(|s| s.as_array()).map_or(0, Vec::len);
        assert_eq!(scores, 0, "no scores under outputs = label: {output}");
    }
    let parts: std::collections::HashSet<&String> = rows.iter().map(|r| &r.1).collect();
    assert_eq!(parts.len(), 10, "distinct parts stay distinct");

    // Forgetting line-1 by its plain id and the key deletes exactly its six records.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["forget", "--database-url", &db.url(), "--station-id", "line-1", "--reason", "request 9"])
        .arg("--identifier-key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("station:{line_1}: deleted 6 predictions")), "{stdout}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT station_id FROM predictions").fetch_all(store.pool()).await.unwrap();
    assert_eq!(left, [line_2]);
    assert_eq!(store.count_predictions().await.unwrap(), 4);
}
