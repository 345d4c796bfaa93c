//! Rollup upkeep against real Postgres and SQLite: every logged prediction is summarised exactly
//! once, rows of transactions still running wait, and the figures equal a direct computation.

use chrono::{DateTime, Duration, Utc};
use vigil_monitor::rollup;
use vigil_monitor::sketch;
use vigil_proto::vigil::v1::RollupWindow;
use vigil_store::PredictionStore as _;
use vigil_store::monitoring::RollupQuery;
use vigil_store::testing::{TestDatabase, prediction};
use vigil_store::{MonitorStore, PgStore, PredictionRow, SqliteStore};

const RESOLUTIONS: [u32; 2] = [60, 3600];

/// Deterministic rows over the last 40 minutes: varied latency, some errors (server failures and
/// refused inputs), nulls and missing.
fn rows(n: usize, offset: usize, now: DateTime<Utc>) -> Vec<PredictionRow> {
    (0..n)
        .map(|k| {
            let i = k + offset;
            let t = now - Duration::seconds(2400) + Duration::milliseconds((i as i64 * 7919) % 2_400_000);
            let brightness = (!i.is_multiple_of(13)).then_some(40.0 + ((i * 37) % 97) as f64);
            let mut r = prediction(
                t,
                ((i * 31) % 100) as f32 / 100.0,
                serde_json::json!({
                    "brightness": brightness, "sharpness": 10.0 + (i % 50) as f64 * 1.5,
                }),
            );
            r.request_time = Some(t - Duration::microseconds(500 + ((i * 7) % 40_000) as i64));
            if i.is_multiple_of(17) {
                r.status = 3;
            } else if i.is_multiple_of(19) {
                r.status = 2;
            }
            if i.is_multiple_of(23) {
                r.output_null = true;
            }
            r
        })
        .collect()
}

async fn catch_up<S: MonitorStore>(store: &S, chunk: usize) -> usize {
    let mut total = 0;
    loop {
        match rollup::step(store, &RESOLUTIONS, chunk).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

async fn merged<S: MonitorStore>(store: &S, res: u32, now: DateTime<Utc>) -> RollupWindow {
    let q = RollupQuery {
        model_name: "scratch-detector".into(),
        model_version: None,
        variant: None,
        resolution_s: res as i32,
        since: now - Duration::days(1),
        until: now + Duration::days(1),
    };
    let mut w = RollupWindow::default();
    for r in store.read_rollups(&q).await.unwrap() {
        rollup::merge_windows(&mut w, &prost::Message::decode(r.body.as_slice()).unwrap());
    }
    w
}

/// A logger's transaction that has inserted `row` and is still running.
async fn begin_with(store: &PgStore, row: &PredictionRow) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut open = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO predictions (prediction_id, time, request_time, model_name, model_version, features, score, verdict, decision, status, output) VALUES ($1, $2, $3, 'scratch-detector', '1', $4, $5, 1, 1, 1, '{}')")
        .bind(row.prediction_id)
        .bind(row.time)
        .bind(row.request_time)
        .bind(&row.features)
        .bind(row.score)
        .execute(&mut *open)
        .await
        .unwrap();
    open
}

/// Compares the rollup of every resolution with figures computed directly from `rows`.
async fn assert_rollups_equal_direct<S: MonitorStore>(store: &S, rows: &[PredictionRow], now: DateTime<Utc>) {
    for res in RESOLUTIONS {
        let w = merged(store, res, now).await;
        assert_eq!(w.count, rows.len() as u64, "count at {res}s");
        assert_eq!(w.errors, rows.iter().filter(|r| r.status != 1).count() as u64);
        assert_eq!(w.invalid_inputs, rows.iter().filter(|r| r.status == 2).count() as u64);
        assert_eq!(w.nulls, rows.iter().filter(|r| r.output_null && r.status == 1).count() as u64);
        let b = &w.features["brightness"];
        let values: Vec<f64> = rows.iter().filter_map(|r| r.features["brightness"].as_f64()).collect();
        assert_eq!(b.count, values.len() as u64);
        assert_eq!(b.missing, (rows.len() - values.len()) as u64);
        let sum: f64 = values.iter().sum();
        assert!((b.sum - sum).abs() < 1e-6 * sum, "{} vs {sum}", b.sum);
        assert_eq!(w.verdicts.values().sum::<u64>(), rows.len() as u64);
        assert_eq!(w.verdicts.get(&2).copied().unwrap_or(0), rows.iter().filter(|r| r.verdict == 2).count() as u64);
        // Latency quantiles from the sketch are within its relative accuracy of the exact ones.
        let mut latency: Vec<f64> = rows
            .iter()
            .map(|r| (r.time - r.request_time.unwrap()).num_microseconds().unwrap() as f64 / 1000.0)
            .collect();
        latency.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.99] {
            let exact = latency[(q * (latency.len() - 1) as f64).floor() as usize];
            let got = sketch::quantile(w.latency_ms.as_ref().unwrap(), q).unwrap();
            assert!((got - exact).abs() <= sketch::RELATIVE_ACCURACY * exact + 1e-9, "p{q}: {got} vs {exact}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollups_count_every_committed_row_once_in_commit_order() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let first = rows(1_500, 0, now);
    for chunk in first.chunks(400) {
        store.insert_predictions(chunk).await.unwrap();
    }
    // Small steps: batches end at transaction boundaries, so nothing is split or repeated.
    assert_eq!(catch_up(&store, 250).await, 1_500);
    assert_rollups_equal_direct(&store, &first, now).await;

    // A logger transaction still running holds back the rows committed after it began.
    let late = rows(1, 9_000, now);
    let open = begin_with(&store, &late[0]).await;
    let after = rows(300, 1_500, now);
    store.insert_predictions(&after).await.unwrap();
    assert_eq!(catch_up(&store, 250).await, 0, "rows behind a running transaction wait for it");
    open.commit().await.unwrap();
    assert_eq!(catch_up(&store, 250).await, 301);
    let mut all = first.clone();
    all.extend(after);
    all.extend(late);
    assert_rollups_equal_direct(&store, &all, now).await;
    assert_eq!(catch_up(&store, 250).await, 0, "nothing counted twice");

    // Two upkeep workers at once (two monitor replicas): still exactly once.
    let more = rows(2_000, 2_000, now);
    for chunk in more.chunks(100) {
        store.insert_predictions(chunk).await.unwrap();
    }
    // A worker that loses a race to the cursor gets 0 and polls again, as upkeep does.
    let (a, b) = tokio::join!(catch_up(&store, 300), catch_up(&store, 300));
    let rest = catch_up(&store, 300).await;
    assert_eq!(a + b + rest, 2_000);
    all.extend(more);
    assert_rollups_equal_direct(&store, &all, now).await;

    // Totals over unaligned ranges, read from hours, then minutes at the edges, equal the sum
    // of the minute windows and the direct count.
    let config = vigil_monitor::MonitorConfig {
        rollups: vigil_monitor::config::RollupConfig { resolutions: RESOLUTIONS.to_vec(), ..Default::default() },
        ..Default::default()
    };
    let views = vigil_monitor::Views::new(store.clone(), Default::default(), std::sync::Arc::new(config));
    let scope = vigil_monitor::views::Scope { model: "scratch-detector".into(), version: None, variant: None };
    for (from, to) in [(2_400, 0), (2_345, 61), (1_999, 1_100), (100, 30)] {
        let (since, until) = (now - Duration::seconds(from), now - Duration::seconds(to) + Duration::milliseconds(1));
        let total = views.total(&scope, since, until).await.unwrap();
        let by_minute: u64 = views.windows(&scope, since, until, 60).await.unwrap().iter().map(|(_, w)| w.count).sum();
        // Whole minutes: from the one holding `since` to the one holding `until`.
        let first = rollup::window_start(since, 60);
        let end = rollup::window_start(until, 60)
            + Duration::seconds(if rollup::window_start(until, 60) < until { 60 } else { 0 });
        let direct = all.iter().filter(|r| r.time >= first && r.time < end).count() as u64;
        assert_eq!((total.count, by_minute), (direct, direct), "range -{from}s .. -{to}s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollups_equal_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let all = rows(1_200, 0, now);
    for chunk in all.chunks(300) {
        store.insert_batch(chunk, &[]).await.unwrap();
        catch_up(&store, 170).await;
    }
    assert_eq!(catch_up(&store, 170).await, 0);
    assert_rollups_equal_direct(&store, &all, now).await;
}

/// A monitor under a database role of its own (without `pg_read_all_stats`: the loggers'
/// queries are hidden from it) still sees their running transactions' ids and waits for them:
/// the rows committed behind one are counted once it commits, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollups_under_another_role_wait_for_the_loggers_transactions() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let role = format!("monitor_{}", uuid::Uuid::now_v7().simple());
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'monitor'"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }
    let url = db.url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let monitor = PgStore::connect_lazy(&format!("{scheme}://{role}:monitor@{host}"), 2).unwrap();
    let now = Utc::now();
    let late = rows(1, 9_000, now);
    let open = begin_with(&store, &late[0]).await;
    let after = rows(300, 0, now);
    store.insert_predictions(&after).await.unwrap();
    let hidden: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = '<insufficient privilege>'",
    )
    .fetch_one(monitor.pool())
    .await
    .unwrap();
    assert!(hidden > 0, "the logger's sessions are hidden from the monitor's role");
    assert_eq!(catch_up(&monitor, 250).await, 0, "rows behind a running transaction wait for it");
    open.commit().await.unwrap();
    assert_eq!(catch_up(&monitor, 250).await, 301, "every row counted once it is final");
    let mut all = after;
    all.extend(late);
    assert_rollups_equal_direct(&monitor, &all, now).await;
    monitor.pool().close().await;
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }
}

/// SQLite hands out the rowids of deleted newest rows again; rows inserted after the newest were
/// forgotten (or expired) are still rolled up, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollups_count_the_rows_inserted_after_the_newest_were_deleted() {
    use vigil_store::{Change, RetentionStore, Subject};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let mut first = rows(20, 0, now);
    for row in &mut first[15..] {
        row.device_id = "cam-9".into();
    }
    store.insert_batch(&first, &[]).await.unwrap();
    assert_eq!(catch_up(&store, 250).await, 20);
    let change = Change { actor: "dpo", reason: "request 5", at: now };
    assert_eq!(store.forget(&Subject::Device("cam-9".into()), &change).await.unwrap().predictions, 5);
    let more = rows(8, 100, now);
    store.insert_batch(&more, &[]).await.unwrap();
    assert_eq!(catch_up(&store, 250).await, 8, "the rows after the deletion, every one");
    // The forgotten rows stay in the rollups they were counted in: every row, once.
    let all: Vec<PredictionRow> = first.into_iter().chain(more).collect();
    assert_rollups_equal_direct(&store, &all, now).await;
}

/// A shadow's copies of requests are not more requests: the model's figures (a scope naming no
/// variant) count what it answered, primary and canary; the shadow's own are there when asked
/// for. With every request mirrored, counting them would double the requests and halve the
/// labelled share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_figures_leave_its_shadow_copies_out() {
    use vigil_proto::vigil::v1::Variant;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let answered = rows(120, 0, now);
    let mut logged = answered.clone();
    for (i, row) in logged.iter_mut().enumerate() {
        row.variant = if i < 100 { Variant::Primary } else { Variant::Canary } as i16;
    }
    let shadows: Vec<PredictionRow> = logged[..100]
        .iter()
        .map(|r| PredictionRow {
            prediction_id: uuid::Uuid::now_v7(),
            variant: Variant::Shadow as i16,
            model_version: "2".into(),
            ..r.clone()
        })
        .collect();
    logged.extend(shadows);
    store.insert_batch(&logged, &[]).await.unwrap();
    catch_up(&store, 500).await;
    let config = vigil_monitor::MonitorConfig {
        rollups: vigil_monitor::config::RollupConfig { resolutions: RESOLUTIONS.to_vec(), ..Default::default() },
        ..Default::default()
    };
    let views = vigil_monitor::Views::new(store.clone(), Default::default(), std::sync::Arc::new(config));
    let scope = |version: Option<&str>, variant: Option<Variant>| vigil_monitor::views::Scope {
        model: "scratch-detector".into(),
        version: version.map(str::to_string),
        variant: variant.map(|v| v as i16),
    };
    let (since, until) = (now - Duration::hours(1), now + Duration::minutes(1));
    let count = async |version, variant| views.total(&scope(version, variant), since, until).await.unwrap().count;
    assert_eq!(count(None, None).await, 120, "primary and canary");
    assert_eq!(count(None, Some(Variant::Shadow)).await, 100);
    assert_eq!(count(None, Some(Variant::Primary)).await, 100);
    // A version named (the shadow's, on the dashboard) shows its figures.
    assert_eq!(count(Some("2"), None).await, 100);
    assert_eq!(count(Some("1"), None).await, 120);
    let by_minute: u64 =
        views.windows(&scope(None, None), since, until, 60).await.unwrap().iter().map(|(_, w)| w.count).sum();
    assert_eq!(by_minute, 120);
}
