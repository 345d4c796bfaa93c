//! Retention on Postgres while a logger keeps inserting: one pass deletes exactly the
//! predictions older than the limit, in statements of at most `batch_rows`, keeps every row the
//! logger inserts meanwhile, and drops only the rollups of the resolution given a limit. The
//! logger's insert times before and during the pass are printed (a measurement, not a check).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use vigil_monitor::retention::{RetentionConfig, expire_once, pinned_baselines};
use vigil_store::testing::{TestDatabase, prediction};
use vigil_store::{PgStore, PredictionStore, ReviewStore};

/// The shipped model, whose predictions `prediction` makes.
const MODEL: &str = "scratch-detector";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_deletes_exactly_the_old_rows_in_batches_while_the_logger_inserts() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let old: Vec<_> = (0..20_000)
        .map(|i| {
            prediction(now - chrono::Duration::days(40) + chrono::Duration::seconds(i), 0.3, serde_json::json!({}))
        })
        .collect();
    for chunk in old.chunks(2_000) {
        store.insert_batch(chunk, &[]).await.unwrap();
    }
    let recent: Vec<_> =
        (0..2_000).map(|i| prediction(now - chrono::Duration::seconds(i), 0.3, serde_json::json!({}))).collect();
    store.insert_batch(&recent, &[]).await.unwrap();
    // Rollups of two resolutions, some older than a week; two of them (12 days old) inside the
    // fixed baseline window of a drift rule on the first model.
    let rollups = [(MODEL, 60, 10), (MODEL, 60, 1), (MODEL, 3600, 10), (MODEL, 60, 12), ("other", 60, 12)];
    for (model, resolution, days_ago) in rollups {
        sqlx::query(
            "INSERT INTO rollups (model_name, model_version, variant, resolution_s, window_start, body) \
             VALUES ($1, '1', 1, $2, $3, '\\x')",
        )
        .bind(model)
        .bind(resolution)
        .bind(now - chrono::Duration::days(days_ago))
        .execute(store.pool())
        .await
        .unwrap();
    }

    // The logger: batches of 200 fresh predictions, one after another, until told to stop.
    let (stop, inserted, slowest_before, slowest_during, during) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let logger = {
        let (store, stop, inserted) = (store.clone(), stop.clone(), inserted.clone());
        let (slowest_before, slowest_during, during) = (slowest_before.clone(), slowest_during.clone(), during.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..200).map(|_| prediction(Utc::now(), 0.3, serde_json::json!({}))).collect();
                let started = Instant::now();
                let (n, _) = store.insert_batch(&batch, &[]).await.unwrap();
                let took = started.elapsed().as_micros() as u64;
                let slowest = if during.load(Ordering::Relaxed) { &slowest_during } else { &slowest_before };
                slowest.fetch_max(took, Ordering::Relaxed);
                inserted.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let config = RetentionConfig {
        predictions_days: Some(30),
        rollups_days: [("60".to_string(), 7)].into_iter().collect(),
        batch_rows: 1_000,
        ..Default::default()
    };
    let pinned = pinned_baselines(&fixed_baseline_rule(now - chrono::Duration::days(12), Some(MODEL)));
    during.store(true, Ordering::Relaxed);
    let report = expire_once(&store, &config, &[60, 300, 3600], &pinned, now).await.unwrap();
    during.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    logger.await.unwrap();

    assert_eq!(report.deleted.get("predictions"), Some(&20_000));
    assert_eq!(report.batches, 21, "20 full statements of 1,000 rows and one that found none");
    assert_eq!(report.deleted.get("rollups"), Some(&2));
    let count = |sql: &'static str| {
        let store = store.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await.unwrap() }
    };
    let cutoff_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM predictions WHERE time < $1")
        .bind(now - chrono::Duration::days(30))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(cutoff_rows, 0);
    let inserted = inserted.load(Ordering::Relaxed) as i64;
    assert!(inserted >= 400, "the logger kept inserting ({inserted})");
    assert_eq!(count("SELECT count(*) FROM predictions").await, 2_000 + inserted, "every newer row kept");
    let rollups: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT model_name, resolution_s, count(*) FROM rollups GROUP BY 1, 2 ORDER BY model_name, resolution_s",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rollups,
        vec![(MODEL.to_string(), 60, 2), (MODEL.to_string(), 3600, 1)],
        "the old 1-minute rollup and the other model's in the baseline window went; the one the rule's \
         baseline reads and the hourly one stay"
    );
    println!(
        "logger: slowest insert of 200 rows before the pass {} ms, during it {} ms ({} rows inserted)",
        slowest_before.load(Ordering::Relaxed) / 1000,
        slowest_during.load(Ordering::Relaxed) / 1000,
        inserted
    );
}

/// The rules of a monitor configured with one drift rule, on `model` (None: every model), whose
/// baseline is the fixed window from 30 seconds before `at` to 30 seconds after.
fn fixed_baseline_rule(at: chrono::DateTime<Utc>, model: Option<&str>) -> Vec<vigil_monitor::config::Rule> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.toml");
    let (since, until) = (at - chrono::Duration::seconds(30), at + chrono::Duration::seconds(30));
    let model = model.map(|m| format!("model = \"{m}\"\n")).unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "[[alerting.rules]]\nname = \"pinned\"\nmetric = \"drift.brightness.detected\"\ncomparator = \">=\"\n\
             threshold = 1\nwindow = \"1h\"\nbaseline_since = \"{}\"\nbaseline_until = \"{}\"\n{model}",
            since.to_rfc3339(),
            until.to_rfc3339()
        ),
    )
    .unwrap();
    vigil_monitor::MonitorConfig::load(&path).unwrap().rules().unwrap()
}

#[test]
fn limits_are_checked_against_the_rollup_resolutions() {
    let config = RetentionConfig { rollups_days: [("90".to_string(), 7)].into_iter().collect(), ..Default::default() };
    let error = config.validate(&[60, 300]).unwrap_err().to_string();
    assert!(error.contains("90 is not one of rollups.resolutions"), "{error}");
    let config = RetentionConfig { predictions_days: Some(0), ..Default::default() };
    assert!(config.validate(&[60]).unwrap_err().to_string().contains("predictions_days must be at least 1"));
}

#[tokio::test]
async fn captured_inputs_older_than_the_limit_leave_the_capture_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = vigil_store::SqliteStore::open(&dir.path().join("log.db")).await.unwrap();
    store.migrate().await.unwrap();
    let captures = dir.path().join("captures");
    // The layout the servers' capturer writes: bytes by content hash, metadata by prediction.
    let files = ["scratch-detector/aaaa", "scratch-detector/predictions/1.json", "scratch-detector/bbbb"];
    for file in files {
        let path = captures.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"captured").unwrap();
    }
    let forty_days_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
    for file in &files[..2] {
        let file = std::fs::File::options().write(true).open(captures.join(file)).unwrap();
        file.set_modified(forty_days_ago).unwrap();
    }
    // A dead letter and a review decision from 40 days ago, with the item's raw input.
    let long_ago = Utc::now() - chrono::Duration::days(40);
    let letter = vigil_store::DeadLetterRow {
        id: uuid::Uuid::now_v7(),
        time: long_ago,
        topic: "vigil.predictions.v1".into(),
        source: "0/7".into(),
        reason: "undecodable".into(),
        key: None,
        payload: Some(vec![1]),
    };
    store.insert_dead_letters(&[letter]).await.unwrap();
    let row = prediction(long_ago, 0.5, serde_json::json!({}));
    let item = vigil_store::ReviewItem { input: Some(vec![9; 16]), ..vigil_store::testing::review_item(&row, 1) };
    store.enqueue_reviews(&[item]).await.unwrap();
    store.claim_review("anna", None, chrono::Duration::minutes(5), long_ago).await.unwrap().unwrap();
    store.submit_review(row.prediction_id, "anna", "ok", long_ago).await.unwrap();

    let config = RetentionConfig {
        captures_days: Some(30),
        capture_store: Some(format!("file://{}", captures.display())),
        dead_letters_days: Some(30),
        review_inputs_days: Some(30),
        ..Default::default()
    };
    config.validate(&[60]).unwrap();
    let report = expire_once(&store, &config, &[60], &[], Utc::now()).await.unwrap();
    assert_eq!(report.deleted.get("captures"), Some(&2));
    assert_eq!((report.deleted.get("dead_letters"), report.deleted.get("review_inputs")), (Some(&1), Some(&1)));
    let item = store.review_item(row.prediction_id).await.unwrap().unwrap();
    assert_eq!((item.input, item.decision.as_deref()), (None, Some("ok")), "the input goes, the decision stays");
    assert!(!captures.join(files[0]).exists() && !captures.join(files[1]).exists());
    assert!(captures.join(files[2]).exists(), "the recent capture stays");

    let alone = RetentionConfig { captures_days: Some(30), ..Default::default() };
    assert!(alone.validate(&[60]).unwrap_err().to_string().contains("captures_days and retention.capture_store"));
}

/// On SQLite too: a rule on every model keeps every model's rollups in its baseline window, a
/// rule on one model that model's alone, and rollups newer than the limit stay whatever the
/// rules.
#[tokio::test]
async fn a_baseline_window_keeps_the_rollups_of_its_rules_models() {
    let dir = tempfile::tempdir().unwrap();
    let store = vigil_store::SqliteStore::open(&dir.path().join("log.db")).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let days = |n: i64| now - chrono::Duration::days(n);
    let config = RetentionConfig { rollups_days: [("60".to_string(), 7)].into_iter().collect(), ..Default::default() };
    let rollups = || async {
        let rows: Vec<(String, chrono::DateTime<Utc>)> =
            sqlx::query_as("SELECT model_name, window_start FROM rollups ORDER BY model_name, window_start")
                .fetch_all(store.pool())
                .await
                .unwrap();
        rows
    };
    let row = |model: &str, at| (model.to_string(), minute_of(at));
    let rules = |pins: &[(i64, Option<&str>)]| {
        pins.iter().flat_map(|&(age, model)| fixed_baseline_rule(days(age), model)).collect::<Vec<_>>()
    };
    let cases = [
        (rules(&[(12, None)]), vec![row("a", days(12)), row("a", days(1)), row("b", days(12)), row("b", days(1))]),
        (rules(&[(12, Some("a"))]), vec![row("a", days(12)), row("a", days(1)), row("b", days(1))]),
        // Both at once, in two windows: b's rollup in a's window goes, not in the window of all.
        (
            rules(&[(12, None), (20, Some("a"))]),
            vec![row("a", days(20)), row("a", days(12)), row("a", days(1)), row("b", days(12)), row("b", days(1))],
        ),
    ];
    for (rules, kept) in cases {
        sqlx::query("DELETE FROM rollups").execute(store.pool()).await.unwrap();
        for model in ["a", "b"] {
            for age in [20, 12, 10, 1] {
                sqlx::query(
                    "INSERT INTO rollups (model_name, model_version, variant, resolution_s, window_start, body) \
                     VALUES ($1, '1', 1, 60, $2, X'')",
                )
                .bind(model)
                .bind(minute_of(days(age)))
                .execute(store.pool())
                .await
                .unwrap();
            }
        }
        let pinned = pinned_baselines(&rules);
        expire_once(&store, &config, &[60], &pinned, now).await.unwrap();
        assert_eq!(rollups().await, kept, "with the baselines of {pinned:?}");
    }
}

/// The start of the minute holding `at`, as rollups' windows start.
fn minute_of(at: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(at.timestamp() / 60 * 60, 0).unwrap()
}
