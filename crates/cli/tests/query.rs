//! `vigil query` against a real Postgres: filters, labels, pagination, formats, errors.

#[path = "../../logger/tests/support/mod.rs"]
mod support;

use std::process::Command;

use chrono::{Duration, Utc};
use support::Database;
use uuid::Uuid;
use vigil_store::PredictionStore as _;
use vigil_store::testing::prediction;
use vigil_store::{LabelRow, PgStore, PredictionRow};

fn row(i: usize, minutes_ago: i64) -> PredictionRow {
    let features = serde_json::json!({ "brightness": 100.0 + i as f64, "sharpness": 50.0 });
    PredictionRow {
        request_time: None,
        station_id: format!("line-{}", i % 2),
        part_id: format!("part-{i}"),
        output: serde_json::json!({ "label": "ok", "scores": [i as f64 / 10.0] }),
        queue_time_us: 10,
        compute_time_us: 100,
        ..prediction(Utc::now() - Duration::minutes(minutes_ago), i as f32 / 10.0, features)
    }
}

fn query(db: &Database, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("query")
        .args(["--database-url", &db.url()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prediction_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_labels_and_pages() {
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 1).unwrap();
    store.migrate().await.unwrap();
    // Ten predictions, one a minute (the oldest first, so ids and times share their order).
    let rows: Vec<PredictionRow> = (0..10).map(|i| row(i, 10 - i as i64)).collect();
    store.insert_predictions(&rows).await.unwrap();
    let label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[7].prediction_id,
        label: "defect".into(),
        time: Utc::now(),
        source: "anna".into(),
    };
    store.insert_labels(&[label]).await.unwrap();

    let (code, out, err) = query(&db, &["--format", "json", "--verdict", "DEFECT", "--station", "line-1"]);
    assert_eq!(code, 0, "{err}");
    let expected: Vec<String> = [5, 7, 9].iter().map(|&i| rows[i].prediction_id.to_string()).collect();
    assert_eq!(json_ids(&out), expected);

    let (_, out, _) = query(&db, &["--format", "json", "--has-label", "true"]);
    let only: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(only["label"], "defect");
    assert_eq!(out.lines().count(), 1);

    let (_, out, _) = query(&db, &["--format", "json", "--min-score", "0.3", "--max-score", "0.6", "--since", "9m"]);
    assert_eq!(json_ids(&out), (3..=6).map(|i| rows[i].prediction_id.to_string()).collect::<Vec<_>>());

    // Pages of 4: the hint names the next page.
    let (_, page1, hint) = query(&db, &["--format", "json", "--limit", "4"]);
    let ids1 = json_ids(&page1);
    assert_eq!(ids1.len(), 4);
    assert!(hint.contains(&format!("--after {}", ids1[3])), "{hint}");
    let (_, page2, _) = query(&db, &["--format", "json", "--limit", "4", "--after", &ids1[3]]);
    assert_eq!(json_ids(&page2), (4..8).map(|i| rows[i].prediction_id.to_string()).collect::<Vec<_>>());

    let (_, csv, _) = query(&db, &["--format", "csv", "--limit", "2"]);
    assert_eq!(
        csv.lines().next().unwrap(),
        "prediction_id,time,station,model,score,verdict,decision,label,brightness,sharpness"
    );
    assert_eq!(csv.lines().count(), 3);
    let (_, table, _) = query(&db, &["--limit", "3"]);
    assert!(table.contains("scratch-detector@1") && table.contains("(3 rows)"), "{table}");

    let (code, _, err) = query(&db, &["--limit", "20000"]);
    assert_eq!(code, 2);
    assert!(err.contains("--limit must be between 1 and 10000"), "{err}");
    let (code, _, err) = query(&db, &["--decision", "MAYBE"]);
    assert_eq!(code, 2);
    assert!(err.contains("use one of ACCEPT, REJECT, HUMAN_REVIEW"), "{err}");
}

/// Runs SQL on the test database as its (superuser) owner.
async fn admin(db: &Database, sql: &str) {
    let store = PgStore::connect_lazy(&db.url(), 1).unwrap();
    sqlx::raw_sql(sql).execute(store.pool()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_as_the_read_only_analyst_role() {
    let db = Database::create();
    let store = PgStore::connect_lazy(&db.url(), 1).unwrap();
    store.migrate().await.unwrap();
    let rows: Vec<PredictionRow> = (0..3).map(|i| row(i, 3 - i as i64)).collect();
    store.insert_predictions(&rows).await.unwrap();
    // Two login users of the analysts' own: one granted the analyst role, one not.
    let suffix = Uuid::now_v7().simple().to_string();
    let (member, stranger) = (format!("ana_{suffix}"), format!("eve_{suffix}"));
    admin(
        &db,
        &format!(
            "CREATE ROLE {member} LOGIN PASSWORD 'pw'; CREATE ROLE {stranger} LOGIN PASSWORD 'pw';
             GRANT vigil_analyst TO {member};
             GRANT CONNECT ON DATABASE {db} TO {member}, {stranger};",
            db = db.name
        ),
    )
    .await;
    let url_of = |user: &str| {
        let base = db.url();
        let (scheme, rest) = base.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{user}:pw@{host}")
    };
    let run = |url: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["query", "--database-url", &url, "--format", "json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(url_of(&member));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json_ids(&out).len(), 3);
    let (code, _, err) = run(url_of(&stranger));
    assert_eq!(code, Some(2));
    assert!(err.contains("not a member of the role 'vigil_analyst': GRANT vigil_analyst TO"), "{err}");
    assert!(!err.contains(":pw@"), "the password is not printed: {err}");

    // What the analyst sessions can do: read, never write, even as the database's owner.
    for url in [url_of(&member), db.url()] {
        let analyst = PgStore::connect_read_only_as(&url, "vigil_analyst", 1).unwrap();
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM predictions").fetch_one(analyst.pool()).await.unwrap();
        assert_eq!(count, 3);
        let refused = sqlx::query("DELETE FROM predictions").execute(analyst.pool()).await.unwrap_err().to_string();
        assert!(refused.contains("read-only transaction"), "{refused}");
        let refused = sqlx::query("BEGIN READ WRITE; DELETE FROM predictions").execute(analyst.pool()).await;
        assert!(refused.is_err(), "read-write transactions are refused to the role too");
    }
    assert_eq!(store.count_predictions().await.unwrap(), 3, "nothing deleted");
    drop(store);
    admin(&db, &format!("DROP OWNED BY {member}; DROP OWNED BY {stranger}; DROP ROLE {member}; DROP ROLE {stranger};"))
        .await;
}
