//! `vigil label` end to end: labels travel through a real broker and the logger into Postgres.

#[path = "../../logger/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_from_the_command_line_and_csv_reach_postgres() {
    let broker = Broker::start(1).await;
    let db = Database::create();
    let logger = RunningLogger::quick(broker.brokers(), db.url());

    let one = Uuid::now_v7();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["label", &one.to_string(), "defect", "--source", "inspector-7", "--brokers", &broker.brokers()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 label(s) sent"));

    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let csv = dir.path().join("labels.csv");
    std::fs::write(
        &csv,
        format!("prediction_id,label,source\n{},ok,anna\n{},defect,\n{},ok,ben\n", ids[0], ids[1], ids[2]),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["label", "--csv", csv.to_str().unwrap(), "--brokers", &broker.brokers()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A bad file sends nothing and names the row.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("prediction_id,label\n{},ok\nnope,defect\n", Uuid::now_v7())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["label", "--csv", bad.to_str().unwrap(), "--brokers", &broker.brokers()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3: prediction id 'nope' is not a UUID"), "{stderr}");

    let store = vigil_store::PgStore::connect_lazy(&db.url(), 1).unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM labels").fetch_one(store.pool()).await.unwrap_or(0)
    };
    eventually(Duration::from_secs(60), "four labels", || async { count().await >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count().await, 4);
    let rows: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT prediction_id, label, source FROM labels ORDER BY prediction_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let mut expected = vec![
        (one, "defect".to_string(), "inspector-7".to_string()),
        (ids[0], "ok".into(), "anna".into()),
        (ids[1], "defect".into(), "cli".into()),
        (ids[2], "ok".into(), "ben".into()),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    logger.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_init_creates_the_missing_topics_once() {
    let broker = Broker::start_bare(vigil_testkit::kafka::Profile::Test).await;
    let init = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["kafka", "init", "--brokers", &broker.brokers()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&["--partitions", "5", "--replication-factor", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for topic in vigil_logbus::topics::ALL {
        assert!(stdout.contains(&format!("created {topic} (5 partitions)")), "{stdout}");
        assert_eq!(broker.partitions(topic), 5);
    }
    // Again: everything exists, nothing changes.
    let out = init(&["--partitions", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("exists  vigil.").count(), 4, "{stdout}");
    assert_eq!(broker.partitions(vigil_logbus::topics::PREDICTIONS), 5);
    // A bad value is a one-line usage error.
    let out = init(&["--partitions", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--partitions = 0: must be at least 1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_travel_over_tls_with_scram() {
    let ca = vigil_testkit::tls::TestCa::new("kafka");
    let listener = vigil_testkit::kafka::SecuredListener::new(&ca, &[("labeller", "pa55word")], false);
    let broker = Broker::start_secured(1, listener).await;
    let secured = broker.secured_kafka("labeller", "pa55word");
    let password = ca.dir().join("labeller.password");
    std::fs::write(&password, "pa55word\n").unwrap();
    let label = |password_file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["label", &Uuid::now_v7().to_string(), "defect", "--brokers", &secured.brokers])
            .arg("--kafka-ca-cert")
            .arg(&ca.ca_pem)
            .args(["--kafka-username", "labeller", "--kafka-password-file"])
            .arg(password_file)
            .output()
            .unwrap()
    };
    let out = label(&password);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Counted through the broker's plaintext listener.
    assert_eq!(broker.message_count(vigil_logbus::topics::LABELS), 1);

    let out = label(&ca.dir().join("missing.password"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.password"), "{stderr}");
    assert_eq!(broker.message_count(vigil_logbus::topics::LABELS), 1);
}
