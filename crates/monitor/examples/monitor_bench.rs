//! Monitoring at scale: N logged predictions over one day in a fresh Postgres database, a tenth
//! of them labelled and a twentieth with feedback, then (1) rollup upkeep from scratch, against
//! only reading the same rows (two rounds, in opposite orders), (2) a day's drift query and
//! dashboard load from rollups, against one aggregate over the raw rows (interleaved runs), and
//! (3) a day's labels and feedback counted by window in the database, against reading them row
//! by row (interleaved runs).
//!
//! `cargo run --release -p vigil-monitor --example monitor_bench -- [N=10000000]`

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use vigil_monitor::MonitorConfig;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{GetDriftRequest, Scope};
use vigil_store::PredictionStore as _;
use vigil_store::RollupStore as _;
use vigil_store::{PgStore, testing::TestDatabase};

const CHUNK: i64 = 50_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: i64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10_000_000);
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4)?;
    store.migrate().await?;
    let start = Utc::now() - chrono::Duration::days(1);
    let step_us = 86_400_000_000 / n;
    eprintln!("generating {n} predictions over the last 24 h in {} ...", db.name);
    let t = Instant::now();
    for k in 0..(n + CHUNK - 1) / CHUNK {
        let (lo, hi) = (k * CHUNK, ((k + 1) * CHUNK).min(n) - 1);
        sqlx::query(
            "INSERT INTO predictions (prediction_id, time, request_time, model_name, model_version, variant, features, \
               output, score, verdict, decision, queue_time_us, compute_time_us, status, output_null) \
             SELECT gen_random_uuid(), t, t - make_interval(secs => 0.002 + random() * 0.01), 'scratch-detector', '1', 1, \
               jsonb_build_object('brightness', 40 + random() * 90, 'contrast', random() * 30, \
                                  'sharpness', CASE WHEN random() < 0.01 THEN NULL ELSE 10 + random() * 150 END), \
               jsonb_build_object('label', CASE WHEN s >= 0.37 THEN 'defect' ELSE 'ok' END, 'scores', jsonb_build_array(s)), \
               s, CASE WHEN s >= 0.37 THEN 2 ELSE 1 END, CASE WHEN s >= 0.37 THEN 2 ELSE 1 END, 100, 3000, \
               CASE WHEN random() < 0.001 THEN 3 ELSE 1 END, false \
             FROM (SELECT $1::timestamptz + make_interval(secs => g * $2::float8 / 1e6) AS t, random() AS s \
                   FROM generate_series($3::bigint, $4::bigint) g) x",
        )
        .bind(start)
        .bind(step_us as f64)
        .bind(lo)
        .bind(hi)
        .execute(store.pool())
        .await?;
        if k % 20 == 19 {
            eprintln!("  {} rows, {:.0} s", hi + 1, t.elapsed().as_secs_f64());
        }
    }
    // Labels an hour after a tenth of the predictions (one in ten disagrees with the model),
    // and a click or a redo on a twentieth, a minute after.
    sqlx::query(
        "INSERT INTO labels (label_id, prediction_id, label, time, source) \
         SELECT gen_random_uuid(), prediction_id, \
           CASE WHEN random() < 0.9 THEN output->>'label' WHEN verdict = 2 THEN 'ok' ELSE 'defect' END, \
           time + interval '1 hour', 'bench' FROM predictions WHERE random() < 0.1",
    )
    .execute(store.pool())
    .await?;
    sqlx::query(
        "INSERT INTO feedback (event_id, prediction_id, kind, time) \
         SELECT gen_random_uuid(), prediction_id, CASE WHEN random() < 0.7 THEN 'click' ELSE 'redo' END, \
           time + interval '1 minute' FROM predictions WHERE random() < 0.05",
    )
    .execute(store.pool())
    .await?;
    sqlx::query("VACUUM ANALYZE predictions").execute(store.pool()).await?;
    sqlx::query("VACUUM ANALYZE labels").execute(store.pool()).await?;
    sqlx::query("VACUUM ANALYZE feedback").execute(store.pool()).await?;
    eprintln!("generated in {:.0} s", t.elapsed().as_secs_f64());

    // (1) Rollup upkeep from scratch vs only reading the same rows the same way (no summaries,
    // no writes): what summarising and storing costs on top of the read. Two rounds in the order
    // read, upkeep | upkeep, read (rollups emptied between), so neither side always runs on the
    // cache the other warmed.
    let mut passes = Vec::new();
    for round in 0..2 {
        if round > 0 {
            sqlx::query("TRUNCATE rollups, rollup_cursor").execute(store.pool()).await?;
        }
        let order: [bool; 2] = if round == 0 { [false, true] } else { [true, false] };
        for upkeep in order {
            let (elapsed, rows) = if upkeep { upkeep_pass(&store).await? } else { read_pass(&store).await? };
            assert_eq!(rows as i64, n, "every row read or rolled up once");
            eprintln!("  round {}: {} {rows} rows in {:.1} s", round + 1, pass_name(upkeep), elapsed.as_secs_f64());
            passes.push((round + 1, upkeep, rows, elapsed));
        }
    }

    // (2) A day's drift and dashboard from rollups vs one aggregate over the day's raw rows,
    // interleaved run by run.
    let day_aggregate = "SELECT count(*), avg((features->>'brightness')::float8), \
        avg((features->>'sharpness')::float8), count(*) FILTER (WHERE status <> 1) FROM predictions \
        WHERE model_name = 'scratch-detector' AND time >= now() - interval '1 day'";
    let config = MonitorConfig {
        models: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
        ..Default::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(vigil_monitor::run(
        vigil_store::PgStore::connect_lazy(&db.url(), 2)?,
        config,
        grpc,
        http,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = MonitoringClient::connect(format!("http://{grpc_addr}")).await?;
    let http_client = reqwest::Client::new();
    let (mut raw, mut drift, mut dashboard) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        sqlx::query(day_aggregate).fetch_one(store.pool()).await?;
        raw.push(t.elapsed());
        let now = Utc::now();
        let t = Instant::now();
        let r = client
            .get_drift(GetDriftRequest {
                scope: Some(Scope { model_name: "scratch-detector".into(), ..Default::default() }),
                since: Some(prost_types::Timestamp {
                    seconds: (now - chrono::Duration::days(1)).timestamp(),
                    nanos: 0,
                }),
                until: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
                ..Default::default()
            })
            .await?
            .into_inner();
        drift.push(t.elapsed());
        assert_eq!(r.total_features, 3);
        let t = Instant::now();
        let body = http_client
            .get(format!("http://{http_addr}/api/dashboard?model=scratch-detector&range=86400"))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        dashboard.push(t.elapsed());
        assert!(body.len() > 1000);
    }
    let _ = stop.send(());
    monitor.await??;

    // (3) A day's labels and feedback as the dashboard reads them (counted by 5-minute window
    // in the database) against reading every labelled prediction and feedback event row by
    // row, as it did before, interleaved run by run.
    let now = Utc::now();
    let day = vigil_store::monitoring::OutcomeQuery {
        model_name: "scratch-detector".into(),
        model_version: None,
        variant: None,
        since: now - chrono::Duration::days(1),
        until: now,
        resolution_s: 300,
        events_before: None,
    };
    let (mut rows_read, mut counted) = (Vec::new(), Vec::new());
    let (mut labelled_rows, mut counted_rows) = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let labelled = sqlx::query(ROW_BY_ROW_LABELS).bind(day.since).bind(day.until).fetch_all(store.pool()).await?;
        let feedback = sqlx::query(ROW_BY_ROW_FEEDBACK).bind(day.since).bind(day.until).fetch_all(store.pool()).await?;
        rows_read.push(t.elapsed());
        labelled_rows = labelled.len() + feedback.len();
        let t = Instant::now();
        let labels = vigil_store::OutcomeStore::labeled_counts(&store, &day).await?;
        let feedback = vigil_store::OutcomeStore::feedback_counts(&store, &day).await?;
        counted.push(t.elapsed());
        counted_rows = labels.len() + feedback.len();
        let in_counts: i64 =
            labels.iter().map(|g| g.count).sum::<i64>() + feedback.iter().map(|g| g.count).sum::<i64>();
        assert_eq!(in_counts as usize, labelled_rows, "the counts cover every row");
    }

    println!("\n{}", vigil_telemetry::benchmark_header());
    println!("{n} predictions over 24 h (Postgres, {} MB)\n", table_mb(&db.url()));
    println!("| round | pass | rows | seconds | rows/s |");
    println!("|---:|---|---:|---:|---:|");
    for (round, upkeep, rows, elapsed) in &passes {
        let seconds = elapsed.as_secs_f64();
        println!("| {round} | {} | {rows} | {seconds:.1} | {:.0} |", pass_name(*upkeep), *rows as f64 / seconds);
    }
    let ratios: Vec<f64> = (1..=2)
        .map(|round| {
            let time = |upkeep: bool| {
                passes.iter().find(|p| p.0 == round && p.1 == upkeep).map_or(f64::NAN, |p| p.3.as_secs_f64())
            };
            time(false) / time(true)
        })
        .collect();
    println!("\nupkeep speed vs reading only: {:.2}x and {:.2}x (rounds 1 and 2)", ratios[0], ratios[1]);

    println!("\n| a day, {RUNS} interleaved runs | median ms | min-max ms | median vs raw aggregate |");
    println!("|---|---:|---:|---:|");
    let raw_median = median(raw.clone());
    for (name, runs) in [
        ("one aggregate over the raw rows", raw),
        ("GetDrift from rollups", drift),
        ("dashboard JSON from rollups", dashboard),
    ] {
        let (lo, hi) = (runs.iter().min().copied().unwrap_or_default(), runs.iter().max().copied().unwrap_or_default());
        let mid = median(runs);
        println!("| {name} | {:.1} | {:.1}-{:.1} | {:.3}x |", ms(mid), ms(lo), ms(hi), ms(mid) / ms(raw_median));
    }

    println!(
        "\n| a day's labels and feedback, {RUNS} interleaved runs | rows returned | median ms | min-max ms | median vs row by row |"
    );
    println!("|---|---:|---:|---:|---:|");
    let row_median = median(rows_read.clone());
    for (name, rows, runs) in [
        ("every labelled prediction and event, row by row", labelled_rows, rows_read),
        ("counted by 5-minute window in the database", counted_rows, counted),
    ] {
        let (lo, hi) = (runs.iter().min().copied().unwrap_or_default(), runs.iter().max().copied().unwrap_or_default());
        let mid = median(runs);
        println!(
            "| {name} | {rows} | {:.1} | {:.1}-{:.1} | {:.3}x |",
            ms(mid),
            ms(lo),
            ms(hi),
            ms(mid) / ms(row_median)
        );
    }
    Ok(())
}

/// What the dashboard read before outcomes were counted in the database: each labelled
/// prediction of the day with its latest label.
const ROW_BY_ROW_LABELS: &str = "SELECT p.time, coalesce(nullif(p.output->>'label', ''), p.output->>'text', '') AS predicted, \
       l.label AS actual, l.time AS label_time, \
       (p.output ? 'text' OR (coalesce(p.output->>'label', '') = '' AND p.status = 1)) AS text_output \
     FROM (SELECT DISTINCT ON (prediction_id) prediction_id, label, time FROM labels \
           WHERE time >= $1 ORDER BY prediction_id, time DESC) l \
     JOIN predictions p ON p.prediction_id = l.prediction_id \
     WHERE p.model_name = 'scratch-detector' AND p.time >= $1 AND p.time < $2";

/// The same for feedback: each event with its prediction's time.
const ROW_BY_ROW_FEEDBACK: &str = "SELECT p.time, f.kind FROM feedback f JOIN predictions p ON p.prediction_id = f.prediction_id \
     WHERE f.time >= $1 AND p.model_name = 'scratch-detector' AND p.time >= $1 AND p.time < $2";

/// Interleaved runs of each query.
const RUNS: usize = 10;

fn pass_name(upkeep: bool) -> &'static str {
    if upkeep { "upkeep at 1 min, 5 min, 1 h" } else { "reading the rows only" }
}

/// Reads every row the way upkeep does, summarising and writing nothing.
async fn read_pass(store: &PgStore) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let (mut cursor, mut scanned) = (0, 0);
    loop {
        let batch = store.read_for_rollup(cursor, vigil_store::monitoring::DEFAULT_ROLLUP_CHUNK).await?;
        if batch.rows.is_empty() && batch.next_cursor == cursor {
            break;
        }
        scanned += batch.rows.len();
        cursor = batch.next_cursor;
    }
    Ok((t.elapsed(), scanned))
}

/// Rollup upkeep from the current cursor to the end of the log.
async fn upkeep_pass(store: &PgStore) -> anyhow::Result<(Duration, usize)> {
    let resolutions = vigil_monitor::rollup::DEFAULT_RESOLUTIONS;
    let t = Instant::now();
    let mut rolled = 0;
    loop {
        let k = vigil_monitor::rollup::step(store, &resolutions, vigil_store::monitoring::DEFAULT_ROLLUP_CHUNK).await?;
        if k == 0 {
            break;
        }
        rolled += k;
        if rolled % 1_000_000 < k {
            eprintln!("  rolled up {rolled} rows, {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    Ok((t.elapsed(), rolled))
}

fn table_mb(url: &str) -> String {
    Command::new("psql")
        .args([url, "-tAc", "SELECT pg_total_relation_size('predictions') / 1048576"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
