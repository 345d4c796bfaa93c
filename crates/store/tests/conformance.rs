//! One conformance suite, run against both stores: Postgres (a fresh database on the local
//! server) and SQLite (a temporary file).

use chrono::{Duration, Utc};
use uuid::Uuid;
use vigil_store::LeaseStore as _;
use vigil_store::testing::prediction;
use vigil_store::{FeedbackRow, LabelRow, PgStore, PredictionFilter, PredictionRow, PredictionStore, SqliteStore};

fn row(i: usize, minutes_ago: i64) -> PredictionRow {
    let time = Utc::now() - Duration::minutes(minutes_ago);
    let features = serde_json::json!({ "brightness": 100.5 + i as f64, "missing": null });
    PredictionRow {
        request_time: Some(time),
        station_id: format!("line-{}", i % 2),
        part_id: format!("part-{i}"),
        model_name: if i < 8 { "scratch-detector".into() } else { "other".into() },
        output: serde_json::json!({ "label": "ok", "scores": [i as f64 / 10.0] }),
        queue_time_us: 10,
        compute_time_us: 100,
        ..prediction(time, i as f32 / 10.0, features)
    }
}

fn filter() -> PredictionFilter {
    PredictionFilter { limit: 100, ..Default::default() }
}

async fn conformance<S: PredictionStore>(store: S) {
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrating twice is a no-op");
    let rows: Vec<PredictionRow> = (0..10).map(|i| row(i, 10 - i as i64)).collect();
    let label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[6].prediction_id,
        label: "defect".into(),
        time: Utc::now(),
        source: "anna".into(),
    };

    // Idempotent on ids, within and across batches.
    assert_eq!(store.insert_batch(&rows[..6], &[]).await.unwrap(), (6, 0));
    assert_eq!(store.insert_batch(&rows, std::slice::from_ref(&label)).await.unwrap(), (4, 1));
    assert_eq!(store.insert_batch(&rows, std::slice::from_ref(&label)).await.unwrap(), (0, 0));
    assert_eq!(store.count_predictions().await.unwrap(), 10);
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.prediction_id).collect();
    ids.sort();
    assert_eq!(store.prediction_ids().await.unwrap(), ids);

    // Feedback, idempotent on the event id.
    let feedback = vigil_store::FeedbackRow {
        event_id: Uuid::now_v7(),
        prediction_id: rows[1].prediction_id,
        kind: "override".into(),
        value: "accepted by inspector".into(),
        session_id: "s-1".into(),
        time: Utc::now(),
    };
    assert_eq!(store.insert_feedback(std::slice::from_ref(&feedback)).await.unwrap(), 1);
    assert_eq!(store.insert_feedback(std::slice::from_ref(&feedback)).await.unwrap(), 0);
    assert_eq!(store.count_feedback().await.unwrap(), 1);

    // Dead letters keep the bytes and the reason, idempotent on their id, newest first.
    let dead = |i: u8, reason: &str| vigil_store::DeadLetterRow {
        id: Uuid::now_v7(),
        time: Utc::now() + Duration::milliseconds(i64::from(i)),
        topic: "vigil.predictions.v1".into(),
        source: format!("vigil.predictions.v1/0/{i}"),
        reason: reason.into(),
        key: Some(vec![b'k', i]),
        payload: Some(vec![0xff, 0x00, i]),
    };
    let (first, second) = (dead(1, "not a PredictionRecord"), dead(2, "schema version 9 is not supported"));
    assert_eq!(store.insert_dead_letters(&[first.clone(), second.clone()]).await.unwrap(), 2);
    assert_eq!(store.insert_dead_letters(std::slice::from_ref(&first)).await.unwrap(), 0);
    let kept = store.dead_letters(10).await.unwrap();
    assert_eq!(kept.len(), 2);
    let same = |a: &vigil_store::DeadLetterRow, b: &vigil_store::DeadLetterRow| {
        (a.id, &a.source, &a.reason, &a.key, &a.payload) == (b.id, &b.source, &b.reason, &b.key, &b.payload)
            && (a.time - b.time).num_microseconds().unwrap().abs() < 1
    };
    assert!(same(&kept[0], &second) && same(&kept[1], &first), "{kept:?}");
    assert_eq!(store.dead_letters(1).await.unwrap().len(), 1);

    // Rows come back intact, in id (time) order.
    let all = store.query_predictions(&filter()).await.unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all.iter().map(|r| r.prediction_id).collect::<Vec<_>>(), ids);
    let r3 = &all[3];
    assert_eq!((r3.station_id.as_str(), r3.model_name.as_str(), r3.score), ("line-1", "scratch-detector", Some(0.3)));
    assert_eq!(r3.features["brightness"], 103.5);
    assert!(r3.features["missing"].is_null());
    assert!((r3.time - rows[3].time).num_milliseconds().abs() < 1);
    assert_eq!(all[6].label.as_deref(), Some("defect"));

    // Every filter.
    let ids_of = |v: Vec<vigil_store::PredictionSummary>| v.into_iter().map(|r| r.prediction_id).collect::<Vec<_>>();
    let pick = |idx: &[usize]| idx.iter().map(|&i| rows[i].prediction_id).collect::<Vec<_>>();
    let q = async |f: PredictionFilter| store.query_predictions(&f).await;
    assert_eq!(
        ids_of(q(PredictionFilter { station_id: Some("line-0".into()), ..filter() }).await.unwrap()),
        pick(&[0, 2, 4, 6, 8])
    );
    assert_eq!(
        ids_of(
            q(PredictionFilter { verdict: Some(2), model_name: Some("scratch-detector".into()), ..filter() })
                .await
                .unwrap()
        ),
        pick(&[5, 6, 7])
    );
    assert_eq!(
        ids_of(q(PredictionFilter { min_score: Some(0.25), max_score: Some(0.45), ..filter() }).await.unwrap()),
        pick(&[3, 4])
    );
    assert_eq!(ids_of(q(PredictionFilter { has_label: Some(true), ..filter() }).await.unwrap()), pick(&[6]));
    assert_eq!(q(PredictionFilter { has_label: Some(false), ..filter() }).await.unwrap().len(), 9);
    let since = rows[7].time - Duration::seconds(1);
    assert_eq!(ids_of(q(PredictionFilter { since: Some(since), ..filter() }).await.unwrap()), pick(&[7, 8, 9]));
    assert_eq!(ids_of(q(PredictionFilter { until: Some(rows[2].time), ..filter() }).await.unwrap()), pick(&[0, 1]));
    assert_eq!(ids_of(q(PredictionFilter { model_version: Some("2".into()), ..filter() }).await.unwrap()), pick(&[]));
    // Keyset pages.
    let page1 = ids_of(q(PredictionFilter { limit: 4, ..filter() }).await.unwrap());
    let page2 = ids_of(q(PredictionFilter { limit: 4, after: page1.last().copied(), ..filter() }).await.unwrap());
    assert_eq!([page1, page2].concat(), pick(&[0, 1, 2, 3, 4, 5, 6, 7]));
    // The hard row limit: one row more than a page may hold.
    let bulk: Vec<PredictionRow> = (0..vigil_store::MAX_QUERY_ROWS as usize + 1)
        .map(|i| PredictionRow { model_name: "bulk".into(), ..row(i % 8, 5) })
        .collect();
    for chunk in bulk.chunks(2_000) {
        store.insert_batch(chunk, &[]).await.unwrap();
    }
    let only_bulk = || PredictionFilter { model_name: Some("bulk".into()), limit: u32::MAX, ..filter() };
    let first = q(only_bulk()).await.unwrap();
    assert_eq!(first.len(), vigil_store::MAX_QUERY_ROWS as usize, "a page holds at most MAX_QUERY_ROWS rows");
    let rest = q(PredictionFilter { after: first.last().map(|r| r.prediction_id), ..only_bulk() }).await.unwrap();
    assert_eq!(rest.len(), 1, "the row beyond the limit comes on the next page");
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_conforms() {
    let db = vigil_store::testing::TestDatabase::create();
    conformance(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

#[tokio::test]
async fn a_postgres_lease_has_one_holder_until_dropped() {
    let db = vigil_store::testing::TestDatabase::create();
    // Two pools: two monitors.
    let (a, b) = (PgStore::connect_lazy(&db.url(), 2).unwrap(), PgStore::connect_lazy(&db.url(), 2).unwrap());
    let mut held = a.try_lease("alerting").await.unwrap().expect("a free lease is taken");
    assert!(held.held().await);
    assert!(b.try_lease("alerting").await.unwrap().is_none(), "held by the other monitor");
    assert!(a.try_lease("alerting").await.unwrap().is_none(), "nor twice by one pool's other connections");
    assert!(b.try_lease("another-role").await.unwrap().is_some(), "roles are independent");
    drop(held);
    // The holder's connection closes; the server releases the lock as the session ends.
    let mut taken = None;
    for _ in 0..50 {
        taken = b.try_lease("alerting").await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(taken.is_some(), "released when its holder is dropped");
}

/// The outcome counts of `model` (one version and variant, when given) in [since, until), by
/// window of `resolution_s`.
fn outcomes(
    model: &str,
    version: Option<&str>,
    variant: Option<i16>,
    since: chrono::DateTime<Utc>,
    until: chrono::DateTime<Utc>,
    resolution_s: u32,
) -> vigil_store::monitoring::OutcomeQuery {
    vigil_store::monitoring::OutcomeQuery {
        model_name: model.into(),
        model_version: version.map(Into::into),
        variant,
        since,
        until,
        resolution_s,
        events_before: None,
    }
}

/// Each counted group repeated as often as it was counted.
fn expand(groups: &[vigil_store::monitoring::LabeledCount]) -> Vec<vigil_store::monitoring::LabeledCount> {
    groups.iter().flat_map(|g| std::iter::repeat_n(g.clone(), g.count as usize)).collect()
}

/// Labeled predictions are filtered by model, version, variant and time in the store, each
/// counted with its latest label, in the window holding its time.
async fn labeled_predictions_conform<S: PredictionStore + vigil_store::OutcomeStore>(store: S) {
    store.migrate().await.unwrap();
    let now = Utc::now();
    let mut rows: Vec<PredictionRow> = (0..6).map(|i| row(i, 30 - i as i64)).collect();
    // 0-1 primary of version 1, 2-3 canary of version 2, 4 shadow of version 2, 5 unlabeled.
    for (i, r) in rows.iter_mut().enumerate() {
        r.variant = match i {
            0 | 1 | 5 => 1,
            2 | 3 => 2,
            _ => 3,
        };
        r.model_version = if i < 2 { "1".into() } else { "2".into() };
    }
    let label = |i: usize, label: &str, minutes_ago: i64| LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[i].prediction_id,
        label: label.into(),
        time: now - Duration::minutes(minutes_ago),
        source: "anna".into(),
    };
    // Row 2 is labeled twice: the later label counts. Row 3 twice at the same time: once, with
    // the label given last.
    let mut labels = vec![
        label(0, "ok", 5),
        label(1, "ok", 5),
        label(2, "ok", 5),
        label(2, "defect", 1),
        label(3, "ok", 5),
        label(3, "defect", 5),
        label(4, "ok", 5),
    ];
    store.insert_batch(&rows, &labels).await.unwrap();
    let since = now - Duration::hours(1);
    let labeled = |version: Option<&'static str>, variant: Option<i16>| {
        let store = store.clone();
        async move {
            let q = outcomes("scratch-detector", version, variant, since, now, 60);
            let mut got: Vec<String> =
                expand(&store.labeled_counts(&q).await.unwrap()).into_iter().map(|g| g.actual).collect();
            got.sort();
            got
        }
    };
    assert_eq!(labeled(None, None).await.len(), 5, "every labeled prediction, once");
    assert_eq!(labeled(None, Some(2)).await, ["defect", "defect"], "the canary's two, each with its latest label");
    assert_eq!(labeled(None, Some(3)).await, ["ok"], "the shadow's one");
    assert_eq!(labeled(Some("1"), None).await.len(), 2);
    assert_eq!(labeled(Some("1"), Some(2)).await.len(), 0, "version 1 never ran as canary");
    let late = store
        .labeled_counts(&outcomes("scratch-detector", None, None, now - Duration::minutes(26), now, 60))
        .await
        .unwrap();
    assert_eq!(expand(&late).len(), 1, "only row 4 was predicted in the last 26 minutes");
    assert!(late.iter().all(|p| !p.text_output && p.predicted == "ok"), "a classifier's label, not text");
    // One more, 0.4 ms before a 7-minute window ends: counted in that window, not the next.
    let boundary = (now - Duration::minutes(20)).timestamp().div_euclid(420) * 420;
    let edge_time = chrono::DateTime::from_timestamp(boundary - 1, 999_600_000).unwrap();
    let edge = PredictionRow { time: edge_time, ..row(6, 20) };
    let edge_label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: edge.prediction_id,
        label: "defect".into(),
        time: now - Duration::minutes(2),
        source: "anna".into(),
    };
    store.insert_batch(std::slice::from_ref(&edge), std::slice::from_ref(&edge_label)).await.unwrap();
    rows.push(edge);
    labels.push(edge_label);
    // Windows of 7 minutes, as computed here from the rows: each prediction counted in the
    // window holding its time, with its label's delay.
    let latest = |i: usize| labels.iter().filter(|l| l.prediction_id == rows[i].prediction_id).map(|l| l.time).max();
    let mut want: std::collections::BTreeMap<(i64, String), (i64, f64)> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let Some(label_time) = latest(i) else { continue };
        // Of labels given at the same time, the last given.
        let actual = labels
            .iter()
            .filter(|l| l.prediction_id == r.prediction_id && l.time == label_time)
            .max_by_key(|l| l.label_id)
            .unwrap();
        let entry = want.entry((r.time.timestamp().div_euclid(420) * 420, actual.label.clone())).or_default();
        entry.0 += 1;
        entry.1 += (label_time - r.time).num_microseconds().unwrap() as f64 / 1e6;
    }
    let got = store.labeled_counts(&outcomes("scratch-detector", None, None, since, now, 420)).await.unwrap();
    let mut seen: std::collections::BTreeMap<(i64, String), (i64, f64)> = Default::default();
    for g in &got {
        let entry = seen.entry((g.window_s, g.actual.clone())).or_default();
        entry.0 += g.count;
        entry.1 += g.lag_s;
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{got:?}");
    for (key, (n, lag)) in &want {
        assert_eq!(seen[key].0, *n, "{key:?}");
        assert!((seen[key].1 - lag).abs() < 0.01, "{key:?}: lag {} against {lag}", seen[key].1);
    }
    assert!(got.len() < rows.len(), "predictions alike in a window come as one row: {got:?}");

    // A recogniser's transcripts: one with text, one that heard nothing, one that failed.
    let mut asr: Vec<PredictionRow> = (0..3).map(|i| row(i, 3)).collect();
    for (i, r) in asr.iter_mut().enumerate() {
        r.model_name = "recogniser".into();
        r.output = match i {
            0 => serde_json::json!({ "label": "", "scores": [], "text": "red running shoes" }),
            _ => serde_json::json!({ "label": "", "scores": [] }),
        };
        r.status = if i == 2 { 3 } else { 1 };
    }
    let said = |i: usize| LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: asr[i].prediction_id,
        label: "red running shoes".into(),
        time: now,
        source: "transcriber".into(),
    };
    store.insert_batch(&asr, &[said(0), said(1), said(2)]).await.unwrap();
    let q = outcomes("recogniser", None, None, since, now + Duration::seconds(1), 60);
    let mut got: Vec<(String, bool)> =
        expand(&store.labeled_counts(&q).await.unwrap()).into_iter().map(|p| (p.predicted, p.text_output)).collect();
    got.sort();
    assert_eq!(
        got,
        [("".to_string(), false), ("".to_string(), true), ("red running shoes".to_string(), true)],
        "the transcript as the prediction; an empty answer is text, a failure is not"
    );
}

/// Labels and feedback timed before the start of the range (a labeller's clock behind the
/// server's) count within the allowance, the same in both stores, and not beyond it.
async fn skewed_label_clocks_conform<S: PredictionStore + vigil_store::OutcomeStore>(store: S) {
    use vigil_store::monitoring::LATE_CLOCK_ALLOWANCE_S;
    store.migrate().await.unwrap();
    let now = Utc::now();
    let since = now - Duration::hours(1);
    let rows: Vec<PredictionRow> = (0..3).map(|i| row(i, 30)).collect();
    let allowance = Duration::seconds(LATE_CLOCK_ALLOWANCE_S);
    // Timed now; an hour before the range (behind by 90 minutes); beyond the allowance.
    let times = [now, since - Duration::hours(1), since - allowance - Duration::hours(1)];
    let labels: Vec<LabelRow> = rows
        .iter()
        .zip(times)
        .map(|(r, time)| LabelRow {
            label_id: Uuid::now_v7(),
            prediction_id: r.prediction_id,
            label: "defect".into(),
            time,
            source: "anna".into(),
        })
        .collect();
    let feedback: Vec<FeedbackRow> = rows
        .iter()
        .zip(times)
        .map(|(r, time)| FeedbackRow {
            event_id: Uuid::now_v7(),
            prediction_id: r.prediction_id,
            kind: "click".into(),
            value: String::new(),
            session_id: String::new(),
            time,
        })
        .collect();
    store.insert_batch(&rows, &labels).await.unwrap();
    store.insert_feedback(&feedback).await.unwrap();
    let q = outcomes("scratch-detector", None, None, since, now, 3600);
    let labeled: i64 = store.labeled_counts(&q).await.unwrap().iter().map(|g| g.count).sum();
    assert_eq!(labeled, 2, "the label timed within the allowance counts, the one beyond it not");
    let clicks: i64 = store.feedback_counts(&q).await.unwrap().iter().map(|g| g.count).sum();
    assert_eq!(clicks, 2, "the same for feedback");
    // Bounded by the events' time: the label and the click timed now are left out.
    let q = vigil_store::monitoring::OutcomeQuery { events_before: Some(now - Duration::minutes(1)), ..q };
    let labeled: i64 = store.labeled_counts(&q).await.unwrap().iter().map(|g| g.count).sum();
    let clicks: i64 = store.feedback_counts(&q).await.unwrap().iter().map(|g| g.count).sum();
    assert_eq!((labeled, clicks), (1, 1), "only outcomes timed before the bound");
    // A newer label past the bound does not hide the one before it: the latest label before
    // the bound is the one counted.
    let relabel = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[1].prediction_id,
        label: "ok".into(),
        time: now,
        source: "bob".into(),
    };
    store.insert_batch(&[], std::slice::from_ref(&relabel)).await.unwrap();
    let actual = |groups: Vec<vigil_store::monitoring::LabeledCount>| {
        groups.into_iter().map(|g| (g.actual, g.count)).collect::<Vec<_>>()
    };
    assert_eq!(actual(store.labeled_counts(&q).await.unwrap()), [("defect".to_string(), 1)]);
    let unbounded = vigil_store::monitoring::OutcomeQuery { events_before: None, ..q };
    let mut latest = actual(store.labeled_counts(&unbounded).await.unwrap());
    latest.sort();
    assert_eq!(latest, [("defect".to_string(), 1), ("ok".to_string(), 1)], "without the bound, the newest");
}

#[tokio::test]
async fn sqlite_skewed_label_clocks_conform() {
    let dir = tempfile::tempdir().unwrap();
    skewed_label_clocks_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_skewed_label_clocks_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    skewed_label_clocks_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

#[tokio::test]
async fn sqlite_labeled_predictions_conform() {
    let dir = tempfile::tempdir().unwrap();
    labeled_predictions_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_labeled_predictions_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    labeled_predictions_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Shadows paired with their primaries by trace id and item rank, the same on both stores.
async fn shadow_counts_conform<S: PredictionStore + vigil_store::OutcomeStore>(store: S) {
    store.migrate().await.unwrap();
    let now = Utc::now();
    // (trace, variant, version, label, status, minutes ago, model); ids are made in this order,
    // so within a trace and variant the items rank in the order listed.
    let spec: [(&str, i16, &str, &str, i16, i64, &str); 14] = [
        ("a", 1, "1", "ok", 1, 5, "scratch-detector"),
        ("a", 3, "2", "ok", 1, 5, "scratch-detector"),
        // A request of two items: the shadow agrees on the first only.
        ("b", 1, "1", "ok", 1, 4, "scratch-detector"),
        ("b", 1, "1", "defect", 1, 4, "scratch-detector"),
        ("b", 3, "2", "ok", 1, 4, "scratch-detector"),
        ("b", 3, "2", "ok", 1, 4, "scratch-detector"),
        // The shadow failed: compared, not agreed.
        ("c", 1, "1", "ok", 1, 3, "scratch-detector"),
        ("c", 3, "2", "", 3, 3, "scratch-detector"),
        // The primary failed: nothing to compare with.
        ("d", 1, "1", "", 3, 3, "scratch-detector"),
        ("d", 3, "2", "ok", 1, 3, "scratch-detector"),
        // Two shadow versions on one request, each paired with the primary.
        ("f", 2, "1", "defect", 1, 2, "scratch-detector"),
        ("f", 3, "2", "defect", 1, 2, "scratch-detector"),
        ("f", 3, "3", "ok", 1, 2, "scratch-detector"),
        // Another model's shadow.
        ("g", 3, "2", "ok", 1, 2, "other"),
    ];
    let mut rows: Vec<PredictionRow> = spec
        .iter()
        .map(|(trace, variant, version, label, status, minutes_ago, model)| PredictionRow {
            trace_id: trace.to_string(),
            variant: *variant,
            model_version: version.to_string(),
            model_name: model.to_string(),
            output: serde_json::json!({ "label": label }),
            status: *status,
            ..prediction(now - Duration::minutes(*minutes_ago), 0.5, serde_json::json!({}))
        })
        .collect();
    // An old shadow of trace "a", outside the window read below.
    rows.push(PredictionRow {
        trace_id: "a".into(),
        variant: 3,
        model_version: "9".into(),
        ..prediction(now - Duration::hours(3), 0.5, serde_json::json!({}))
    });
    // Stored in reverse: the rank comes from the ids, not from the order of insertion.
    rows.reverse();
    store.insert_batch(&rows, &[]).await.unwrap();
    let counts = store
        .shadow_counts(&outcomes("scratch-detector", None, None, now - Duration::hours(1), now, 3600 * 24))
        .await
        .unwrap();
    // (version, compared, agreed, shadow failed); windows of a day, so one or two per version.
    let mut got: std::collections::BTreeMap<String, (i64, i64, i64)> = Default::default();
    for c in &counts {
        let v = got.entry(c.shadow_version.clone()).or_default();
        *v = (v.0 + c.compared, v.1 + c.agreed, v.2 + c.shadow_failed);
        assert_eq!((c.labeled, c.shadow_correct), (0, 0), "nothing labelled");
    }
    let want: std::collections::BTreeMap<String, (i64, i64, i64)> = [
        // a, b (two items, the second not agreed), c (the shadow failed), f
        ("2".to_string(), (5, 3, 1)),
        // f
        ("3".to_string(), (1, 0, 0)),
    ]
    .into();
    assert_eq!(got, want, "{counts:?}");
    // Labels on the primary's predictions judge the shadows of the same items.
    let primary = |trace: &str, item: usize| {
        rows.iter()
            .rev()
            .filter(|r| r.trace_id == trace && r.variant != 3 && r.model_name == "scratch-detector")
            .nth(item)
    };
    let label = |trace: &str, item: usize, label: &str| LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: primary(trace, item).unwrap().prediction_id,
        label: label.into(),
        time: now,
        source: "inspector".into(),
    };
    // b's second item is a defect (the shadow said ok), f's item is ok (version 3 said ok).
    store.insert_batch(&[], &[label("b", 1, "defect"), label("f", 0, "ok")]).await.unwrap();
    let counts = store
        .shadow_counts(&outcomes("scratch-detector", None, None, now - Duration::hours(1), now, 3600 * 24))
        .await
        .unwrap();
    let judged = |version: &str| {
        counts
            .iter()
            .filter(|c| c.shadow_version == version)
            .fold((0, 0), |(l, c), w| (l + w.labeled, c + w.shadow_correct))
    };
    assert_eq!(judged("2"), (2, 0), "version 2 answered ok to b's defect and defect to f's ok");
    assert_eq!(judged("3"), (1, 1), "version 3 answered f's ok");
    // A version in the query selects that shadow version alone.
    let only_3 = store
        .shadow_counts(&outcomes("scratch-detector", Some("3"), None, now - Duration::hours(1), now, 3600 * 24))
        .await
        .unwrap();
    let versions: Vec<&str> = only_3.iter().map(|c| c.shadow_version.as_str()).collect();
    assert!(!versions.is_empty() && versions.iter().all(|v| *v == "3"), "{only_3:?}");
    assert_eq!(
        only_3.iter().map(|c| (c.compared, c.shadow_correct)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        (1, 1)
    );
    // Windows of a minute: each pair in the window of the shadow's time.
    let minute = store
        .shadow_counts(&outcomes("scratch-detector", None, None, now - Duration::hours(1), now, 60))
        .await
        .unwrap();
    let mut want_windows: Vec<(i64, String)> = rows
        .iter()
        .filter(|r| r.variant == 3 && r.model_name == "scratch-detector" && r.time > now - Duration::hours(1))
        .filter(|r| r.trace_id != "d")
        .map(|r| (r.time.timestamp().div_euclid(60) * 60, r.model_version.clone()))
        .collect();
    want_windows.sort();
    want_windows.dedup();
    let got_windows: Vec<(i64, String)> = minute.iter().map(|c| (c.window_s, c.shadow_version.clone())).collect();
    assert_eq!(got_windows, want_windows);
}

/// A text model answers in `text` with an empty label: its shadow is compared on the transcripts
/// (two empty labels would always agree) and judged against the transcript people gave.
async fn shadow_counts_compare_transcripts<S: PredictionStore + vigil_store::OutcomeStore>(store: S) {
    store.migrate().await.unwrap();
    let now = Utc::now();
    let spoken = |trace: &str, variant: i16, version: &str, text: &str| {
        vigil_store::testing::spoken(now - Duration::minutes(1), trace, variant, version, text)
    };
    let rows = [
        spoken("t1", 1, "1", "weather in oslo"),
        spoken("t1", 3, "2", "weather in oslo"),
        spoken("t2", 1, "1", "call anna"),
        spoken("t2", 3, "2", "call hannah"),
    ];
    let label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[2].prediction_id,
        label: "call hannah".into(),
        time: now,
        source: "transcriber".into(),
    };
    store.insert_batch(&rows, &[label]).await.unwrap();
    let counts =
        store.shadow_counts(&outcomes("asr", None, None, now - Duration::hours(1), now, 3600 * 24)).await.unwrap();
    let total = counts
        .iter()
        .fold((0, 0, 0, 0), |t, c| (t.0 + c.compared, t.1 + c.agreed, t.2 + c.labeled, t.3 + c.shadow_correct));
    assert_eq!(total, (2, 1, 1, 1), "(compared, agreed, labelled, shadow correct): {counts:?}");
    // The pairs that differ come apart by their transcripts, for the caller to compare as text;
    // those equal byte for byte (to the primary, and no label) are counted as one.
    let mut texts: Vec<_> =
        counts.iter().map(|c| (c.shadow_text.clone(), c.primary_text.clone(), c.actual_text.clone())).collect();
    texts.sort();
    let some = |t: &str| Some(t.to_string());
    assert_eq!(texts, [(None, None, None), (some("call hannah"), some("call anna"), some("call hannah"))]);
}

#[tokio::test]
async fn sqlite_shadow_counts_compare_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    shadow_counts_compare_transcripts(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_shadow_counts_compare_transcripts() {
    let db = vigil_store::testing::TestDatabase::create();
    shadow_counts_compare_transcripts(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

#[tokio::test]
async fn sqlite_shadow_counts_conform() {
    let dir = tempfile::tempdir().unwrap();
    shadow_counts_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_shadow_counts_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    shadow_counts_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Alarm states, transitions and their delivery, the same on both stores.
async fn alerts_conform<S: PredictionStore + vigil_store::AlertStore>(store: S) {
    use vigil_store::monitoring::{AlertRow, Delivery};
    store.migrate().await.unwrap();
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let alert = |state: &str, value: Option<f64>| AlertRow {
        alert_key: "error-rate/scratch-detector".into(),
        rule: "error-rate".into(),
        model_name: "scratch-detector".into(),
        metric: "error_rate".into(),
        severity: "critical".into(),
        state: state.into(),
        value,
        threshold: 0.2,
        since: now,
        message: format!("error rate {value:?}"),
    };
    assert!(store.load_alerts().await.unwrap().is_empty());
    store.save_alert(&alert("pending", Some(0.3)), false).await.unwrap();
    store.save_alert(&alert("firing", Some(0.5)), true).await.unwrap();
    assert_eq!(store.load_alerts().await.unwrap(), [alert("firing", Some(0.5))], "one row per alarm: the latest state");
    let history = store.alert_history(10).await.unwrap();
    let states: Vec<&str> = history.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["firing", "pending"], "every transition, newest first");
    let unsent = store.unsent_alert_events(10).await.unwrap();
    assert_eq!(unsent.len(), 1, "only the transition to notify");
    assert_eq!((unsent[0].state.as_str(), unsent[0].value, unsent[0].attempts), ("firing", Some(0.5), 0));
    store.mark_alert_event(unsent[0].event_id, Delivery::Failed("503".into())).await.unwrap();
    let retry = store.unsent_alert_events(10).await.unwrap();
    assert_eq!((retry.len(), retry[0].attempts), (1, 1), "a failed attempt is counted and stays unsent");
    store.save_alert(&alert("resolved", None), true).await.unwrap();
    let unsent = store.unsent_alert_events(10).await.unwrap();
    let states: Vec<&str> = unsent.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["firing", "resolved"], "oldest first");
    store.mark_alert_event(unsent[0].event_id, Delivery::Delivered).await.unwrap();
    store.mark_alert_event(unsent[1].event_id, Delivery::Abandoned("410".into())).await.unwrap();
    assert!(store.unsent_alert_events(10).await.unwrap().is_empty(), "delivered and abandoned are both settled");
    assert_eq!(store.alert_history(2).await.unwrap().len(), 2, "the history honours its limit");
}

#[tokio::test]
async fn sqlite_alerts_conform() {
    let dir = tempfile::tempdir().unwrap();
    alerts_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_alerts_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    alerts_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Rollup upkeep: the cursor, the predictions it reads once each, merged windows, and a move
/// refused when another monitor moved the cursor first.
async fn rollups_conform<S: PredictionStore + vigil_store::RollupStore>(store: S) {
    use vigil_store::monitoring::{RollupKey, RollupQuery, StoredRollup};
    store.migrate().await.unwrap();
    assert_eq!(store.rollup_cursor().await.unwrap(), 0);
    let rows: Vec<PredictionRow> = (0..5).map(|i| row(i, 5 - i as i64)).collect();
    store.insert_batch(&rows, &[]).await.unwrap();
    let batch = store.read_for_rollup(0, 100).await.unwrap();
    assert_eq!(batch.rows.len(), 5, "every committed prediction");
    assert!(batch.next_cursor > 0);
    let window_start = chrono::DateTime::from_timestamp(Utc::now().timestamp() / 60 * 60, 0).unwrap();
    let key = |version: &str| RollupKey {
        model_name: "scratch-detector".into(),
        resolution_s: 60,
        window_start,
        model_version: version.into(),
        variant: 1,
    };
    // Bodies are opaque here: the merge concatenates them.
    let merge = |stored: &mut Vec<u8>, delta: &[u8]| stored.extend_from_slice(delta);
    let delta = |version: &str, body: &[u8]| StoredRollup { key: key(version), body: body.to_vec() };
    assert!(store.apply_rollups(0, batch.next_cursor, vec![delta("1", b"a"), delta("2", b"x")], &merge).await.unwrap());
    assert!(
        !store.apply_rollups(0, batch.next_cursor + 1, vec![delta("1", b"b")], &merge).await.unwrap(),
        "the cursor had moved: nothing changes"
    );
    assert_eq!(store.rollup_cursor().await.unwrap(), batch.next_cursor);
    let next = store.read_for_rollup(batch.next_cursor, 100).await.unwrap();
    assert!(next.rows.is_empty(), "nothing read twice");
    store.insert_batch(&[row(7, 0)], &[]).await.unwrap();
    let next = store.read_for_rollup(batch.next_cursor, 100).await.unwrap();
    assert_eq!(next.rows.len(), 1, "only the new prediction");
    assert!(store.apply_rollups(batch.next_cursor, next.next_cursor, vec![delta("1", b"b")], &merge).await.unwrap());
    let query = |version: Option<&str>| RollupQuery {
        model_name: "scratch-detector".into(),
        model_version: version.map(Into::into),
        variant: Some(1),
        resolution_s: 60,
        since: window_start - Duration::hours(1),
        until: window_start + Duration::hours(1),
    };
    let read = store.read_rollups(&query(Some("1"))).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].key.clone(), read[0].body.as_slice()), (key("1"), &b"ab"[..]), "merged in order");
    assert_eq!(store.read_rollups(&query(None)).await.unwrap().len(), 2, "both versions");
    let mut other_variant = query(None);
    other_variant.variant = Some(2);
    assert!(store.read_rollups(&other_variant).await.unwrap().is_empty());
    let models = store.rollup_models(60, window_start).await.unwrap();
    assert_eq!(models, [("scratch-detector".to_string(), "1".to_string()), ("scratch-detector".into(), "2".into())]);
    let later = window_start + Duration::minutes(1);
    assert!(store.rollup_models(60, later).await.unwrap().is_empty(), "no windows since then");
    // One resolution at a time: a version with hourly windows only is not among the minutes.
    let hourly = RollupKey { resolution_s: 3600, window_start: later, ..key("3") };
    let cursor = store.rollup_cursor().await.unwrap();
    let hourly = vec![StoredRollup { key: hourly, body: b"c".to_vec() }];
    assert!(store.apply_rollups(cursor, cursor, hourly, &merge).await.unwrap());
    assert_eq!(
        store.rollup_models(3600, window_start).await.unwrap(),
        [("scratch-detector".to_string(), "3".to_string())]
    );
    assert_eq!(store.rollup_models(60, window_start).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_rollups_conform() {
    let dir = tempfile::tempdir().unwrap();
    rollups_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_rollups_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    rollups_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// An SQLite database's lease has one holder among every store opened on the file (each
/// process opens its own) until it is dropped; one in memory serves one process.
#[tokio::test]
async fn an_embedded_lease_has_one_holder_until_dropped() {
    use vigil_store::LeaseStore as _;
    use vigil_store::monitoring::Lease;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.db");
    let (a, b) = (SqliteStore::open(&path).await.unwrap(), SqliteStore::open(&path).await.unwrap());
    let mut held = a.try_lease("retraining").await.unwrap().expect("a free lease is taken");
    assert!(matches!(held, Lease::File(_)) && held.held().await);
    assert!(b.try_lease("retraining").await.unwrap().is_none(), "held by the other store");
    assert!(a.try_lease("retraining").await.unwrap().is_none(), "nor twice by one store");
    assert!(b.try_lease("alerting").await.unwrap().is_some(), "roles are independent");
    drop(held);
    assert!(b.try_lease("retraining").await.unwrap().is_some(), "free once dropped");
    let memory = SqliteStore::connect("sqlite::memory:").await.unwrap();
    assert!(matches!(memory.try_lease("retraining").await.unwrap(), Some(Lease::Local)));
}

/// The registry: registering is idempotent per artifact, another artifact under a version is
/// refused, and promoting to production archives the version before it in one step.
async fn registry_conforms<S: PredictionStore + vigil_store::RegistryStore>(store: S) {
    use vigil_store::registry::{Change, ModelVersionRow, Registered, RegistryError, Stage};
    store.migrate().await.unwrap();
    let at = |minutes: i64| chrono::DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap();
    let version = |v: &str, digest: &str, minutes: i64| ModelVersionRow {
        model_name: "scratch-detector".into(),
        version: v.into(),
        artifact_sha256: digest.into(),
        artifact_uri: format!("models/scratch-detector/{v}/model.onnx"),
        training_data: "generator seed 1".into(),
        metrics: serde_json::json!({ "recall": 0.98 }),
        stage: Stage::Candidate.as_str().into(),
        registered_by: "anna".into(),
        registered_at: at(minutes),
        stage_changed_at: at(minutes),
    };
    assert_eq!(store.register_version(&version("1", "aa", 0), "first").await.unwrap(), Registered::New);
    assert_eq!(store.register_version(&version("1", "aa", 5), "").await.unwrap(), Registered::Already);
    let conflict = store.register_version(&version("1", "bb", 5), "").await.unwrap_err();
    assert!(matches!(&conflict, RegistryError::Conflict { existing, .. } if existing == "aa"), "{conflict}");
    assert!(conflict.to_string().contains("register the new artifact as a new version"), "{conflict}");
    store.register_version(&version("2", "bb", 10), "").await.unwrap();
    let mut other = version("1", "cc", 1);
    other.model_name = "other".into();
    store.register_version(&other, "").await.unwrap();
    let listed = store.model_versions(Some("scratch-detector")).await.unwrap();
    assert_eq!(listed, [version("1", "aa", 0), version("2", "bb", 10)], "stored as given, oldest first");
    assert_eq!(store.model_versions(None).await.unwrap().len(), 3);

    let change = |minutes: i64| Change { actor: "ben", reason: "passed review", at: at(minutes) };
    assert!(store.set_stage("scratch-detector", "1", Stage::Production, &change(20)).await.unwrap().is_empty());
    let archived = store.set_stage("scratch-detector", "2", Stage::Production, &change(30)).await.unwrap();
    assert_eq!(archived, ["1"], "the production version before it is archived");
    let stage_of = |v: &'static str| {
        let store = store.clone();
        async move { store.model_version("scratch-detector", v).await.unwrap().map(|r| (r.stage, r.stage_changed_at)) }
    };
    assert_eq!(stage_of("1").await, Some(("archived".to_string(), at(30))));
    assert_eq!(stage_of("2").await, Some(("production".to_string(), at(30))));
    assert_eq!(store.model_version("other", "1").await.unwrap().unwrap().stage, "candidate", "other models untouched");
    let missing = store.set_stage("scratch-detector", "9", Stage::Staging, &change(40)).await.unwrap_err();
    assert!(matches!(missing, RegistryError::NotFound { .. }), "{missing}");
    // A refused move changes nothing, not even the archiving it would have done.
    let missing = store.set_stage("scratch-detector", "9", Stage::Production, &change(40)).await.unwrap_err();
    assert!(matches!(missing, RegistryError::NotFound { .. }), "{missing}");
    assert_eq!(stage_of("2").await, Some(("production".to_string(), at(30))));

    // Every change is an audit event, newest first; refused ones leave none.
    let events: Vec<(String, String, String, String, String, String)> = store
        .audit_events(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action, e.subject, e.from_state, e.to_state, e.reason))
        .collect();
    let event = |actor: &str, action: &str, subject: &str, from: &str, to: &str, reason: &str| {
        (actor.into(), action.into(), subject.into(), from.into(), to.into(), reason.into())
    };
    assert_eq!(
        events,
        [
            event("ben", "promote", "scratch-detector/2", "candidate", "production", "passed review"),
            event("ben", "archive", "scratch-detector/1", "production", "archived", "passed review"),
            event("ben", "promote", "scratch-detector/1", "candidate", "production", "passed review"),
            event("anna", "register", "other/1", "", "candidate", ""),
            event("anna", "register", "scratch-detector/2", "", "candidate", ""),
            event("anna", "register", "scratch-detector/1", "", "candidate", "first"),
        ]
    );
    assert_eq!(store.audit_events(2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_registry_conforms() {
    let dir = tempfile::tempdir().unwrap();
    registry_conforms(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_registry_conforms() {
    let db = vigil_store::testing::TestDatabase::create();
    registry_conforms(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Deployments name registered versions only, replace each other per model, and each change
/// is an audit event from the old description to the new.
async fn deployments_conform<
    S: PredictionStore + vigil_store::RegistryStore + vigil_store::DeploymentStore + vigil_store::RolloutStore,
>(
    store: S,
) {
    use vigil_store::DeploymentRow;
    use vigil_store::registry::{Change, ModelVersionRow, RegistryError};
    store.migrate().await.unwrap();
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    for v in ["1", "2"] {
        let row = ModelVersionRow {
            model_name: "scratch-detector".into(),
            version: v.into(),
            artifact_sha256: format!("digest-{v}"),
            artifact_uri: String::new(),
            training_data: String::new(),
            metrics: serde_json::json!({}),
            stage: "candidate".into(),
            registered_by: "anna".into(),
            registered_at: at,
            stage_changed_at: at,
        };
        store.register_version(&row, "").await.unwrap();
    }
    let deployment = |id: &str, primary: &str, candidate: Option<&str>, mode: &str, share: f64| DeploymentRow {
        model_name: "scratch-detector".into(),
        deployment_id: id.into(),
        primary_version: primary.into(),
        candidate_version: candidate.map(Into::into),
        mode: mode.into(),
        share,
        updated_by: "ben".into(),
        updated_at: at,
        policy: "partial".into(),
        accept_below: None,
        reject_at: None,
    };
    let change = Change { actor: "ben", reason: "weekly rollout", at };
    assert!(store.deployments().await.unwrap().is_empty());
    let unknown = store.set_deployment(&deployment("d1", "1", Some("9"), "canary", 0.05), &change).await.unwrap_err();
    assert!(matches!(unknown, RegistryError::NotFound { ref version, .. } if version == "9"), "{unknown}");
    assert!(store.deployments().await.unwrap().is_empty(), "a refused deployment changes nothing");
    store.set_deployment(&deployment("d1", "1", Some("2"), "canary", 0.05), &change).await.unwrap();
    store.set_deployment(&deployment("d2", "2", Some("1"), "single", 0.0), &change).await.unwrap();
    assert_eq!(store.deployments().await.unwrap(), [deployment("d2", "2", Some("1"), "single", 0.0)]);
    // Bad policies and bands are refused in words, nothing changed.
    for (policy, band, expected) in [
        ("autopilot", None, "unknown policy 'autopilot'"),
        ("partial", Some((0.3, 1.2)), "must lie in 0-1"),
        ("partial", Some((0.8, 0.2)), "accept_below <= reject_at"),
    ] {
        let bad = DeploymentRow {
            policy: policy.into(),
            accept_below: band.map(|b: (f64, f64)| b.0),
            reject_at: band.map(|b| b.1),
            ..deployment("d9", "2", Some("1"), "single", 0.0)
        };
        let e = store.set_deployment(&bad, &change).await.unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)) && e.to_string().contains(expected), "{e}");
    }
    let bad_share = store.set_deployment(&deployment("d9", "1", Some("2"), "canary", 1.5), &change).await.unwrap_err();
    assert!(bad_share.to_string().contains("outside 0-100%"), "{bad_share}");
    assert_eq!(store.deployments().await.unwrap(), [deployment("d2", "2", Some("1"), "single", 0.0)]);
    let assisted = DeploymentRow {
        policy: "partial".into(),
        accept_below: Some(0.1),
        reject_at: Some(0.9),
        ..deployment("d3", "2", Some("1"), "single", 0.0)
    };
    store.set_deployment(&assisted, &change).await.unwrap();
    assert_eq!(store.deployments().await.unwrap(), [assisted]);
    let deploys: Vec<(String, String, String)> = store
        .audit_events(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "deploy")
        .map(|e| (e.subject, e.from_state, e.to_state))
        .collect();
    assert_eq!(
        deploys,
        [
            (
                "scratch-detector (d3)".into(),
                "primary 2 (rollback to 1); policy partial".into(),
                "primary 2 (rollback to 1); policy partial (review band [0.1, 0.9))".into()
            ),
            (
                "scratch-detector (d2)".into(),
                "primary 1, canary 2 at 5%; policy partial".into(),
                "primary 2 (rollback to 1); policy partial".into()
            ),
            ("scratch-detector (d1)".into(), String::new(), "primary 1, canary 2 at 5%; policy partial".into()),
        ]
    );
    replacements_conform(&store, &deployment, &change).await;
}

/// Makes a deployment: id, primary, candidate, mode, share.
type MakeDeployment<'a> = dyn Fn(&str, &str, Option<&str>, &str, f64) -> vigil_store::DeploymentRow + 'a;

/// A change made from the deployment it read is written only while that one is still stored:
/// one made from a deployment since replaced (by a person's command or a rollout's step) is
/// refused with nothing changed, whichever writes first.
async fn replacements_conform<S: vigil_store::DeploymentStore + vigil_store::RolloutStore>(
    store: &S,
    deployment: &MakeDeployment<'_>,
    change: &vigil_store::registry::Change<'_>,
) {
    use vigil_store::registry::rollouts::{RolloutRow, RolloutStep};
    use vigil_store::{DeploymentRow, NextDeployment, RegistryError};
    let read = store.deployments().await.unwrap().remove(0);
    assert_eq!(read.deployment_id, "d3");
    // A policy change and a rollback, both made from d3: the first lands, the second is refused.
    let policy = DeploymentRow { deployment_id: "p1".into(), policy: "full".into(), ..read.clone() };
    store.replace_deployment(NextDeployment::from_read(&policy, Some(&read)), change).await.unwrap();
    let rollback = deployment("r1", "1", None, "single", 0.0);
    let refused =
        store.replace_deployment(NextDeployment::from_read(&rollback, Some(&read)), change).await.unwrap_err();
    assert!(matches!(refused, RegistryError::Changed { .. }), "{refused}");
    assert!(refused.to_string().contains("policy full"), "names what is stored now: {refused}");
    // Made as if the model had none: refused too.
    let first = store.replace_deployment(NextDeployment::from_read(&rollback, None), change).await.unwrap_err();
    assert!(matches!(first, RegistryError::Changed { .. }), "{first}");
    assert_eq!(store.deployments().await.unwrap(), std::slice::from_ref(&policy), "nothing changed by the refusals");
    // A rollout started from a deployment since replaced is refused, and writes no rollout.
    let steps = [
        RolloutStep { share: 0.1, min_duration_s: 60, min_requests: 10, ..Default::default() },
        RolloutStep { share: 1.0, min_duration_s: 60, min_requests: 10, ..Default::default() },
    ];
    let rollout = RolloutRow {
        rollout_id: "ro1".into(),
        model_name: "scratch-detector".into(),
        primary_version: "2".into(),
        candidate_version: "1".into(),
        plan: serde_json::to_string(&steps).unwrap(),
        step: 0,
        state: "running".into(),
        step_started_at: change.at,
        created_by: "ben".into(),
        updated_at: change.at,
        history: "[]".into(),
    };
    let canary = deployment("c1", "2", Some("1"), "canary", 0.1);
    let stale = store.start_rollout(&rollout, NextDeployment::from_read(&canary, Some(&read)), change).await;
    assert!(matches!(stale, Err(RegistryError::Changed { .. })), "{stale:?}");
    assert!(store.rollouts(None).await.unwrap().is_empty(), "no rollout written");
    store.start_rollout(&rollout, NextDeployment::from_read(&canary, Some(&policy)), change).await.unwrap();
    // A step made from the deployment before a person's change is not applied: the controller
    // judges it again from what is stored.
    let person = DeploymentRow { deployment_id: "p2".into(), policy: "assist".into(), ..canary.clone() };
    store.replace_deployment(NextDeployment::from_read(&person, Some(&canary)), change).await.unwrap();
    let next = RolloutRow { step: 1, history: "[{}]".into(), ..rollout.clone() };
    let step = deployment("s2", "2", Some("1"), "canary", 1.0);
    let applied =
        store.advance_rollout(&rollout, &next, Some(NextDeployment::from_read(&step, Some(&canary))), change).await;
    assert!(!applied.unwrap(), "made from a replaced deployment");
    assert_eq!(store.rollouts(None).await.unwrap(), std::slice::from_ref(&rollout), "the rollout did not move");
    assert_eq!(store.deployments().await.unwrap(), std::slice::from_ref(&person));
    let step = DeploymentRow { policy: person.policy.clone(), ..step };
    let applied =
        store.advance_rollout(&rollout, &next, Some(NextDeployment::from_read(&step, Some(&person))), change).await;
    assert!(applied.unwrap(), "made from the stored deployment");
    assert_eq!(store.rollouts(None).await.unwrap(), [next]);
    assert_eq!(store.deployments().await.unwrap(), [step]);
}

#[tokio::test]
async fn sqlite_deployments_conform() {
    let dir = tempfile::tempdir().unwrap();
    deployments_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_deployments_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    deployments_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Two first deployments of one model race on Postgres: the second to reach the table finds
/// none when it reads (the first is not committed yet, so there is no row to lock), then waits
/// on the first's row at its insert. Once the first commits it is refused, not written over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_first_deployments_do_not_overwrite_each_other() {
    use vigil_store::registry::{Change, RegistryError};
    use vigil_store::testing::{TestDatabase, candidate_version, single_deployment};
    use vigil_store::{DeploymentStore as _, NextDeployment, RegistryStore as _};
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    store.register_version(&candidate_version("scratch-detector", "1", "digest-1"), "").await.unwrap();
    let direct = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let mut first = direct.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO deployments (model_name, deployment_id, primary_version, mode, updated_by, updated_at) \
         VALUES ('scratch-detector', 'first', '1', 'single', 'anna', now())",
    )
    .execute(&mut *first)
    .await
    .unwrap();
    let racing = tokio::spawn({
        let store = store.clone();
        async move {
            let row = single_deployment("scratch-detector", "second", "1");
            let change = Change { actor: "ben", reason: "first deployment", at: Utc::now() };
            store.replace_deployment(NextDeployment::from_read(&row, None), &change).await
        }
    });
    // Wait until the second writer is blocked on the first's uncommitted row.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&direct)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(!racing.is_finished(), "the second writer finished without waiting: {:?}", racing.await);
        assert!(std::time::Instant::now() < deadline, "the second writer never waited on the first");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    first.commit().await.unwrap();
    let refused = racing.await.unwrap().unwrap_err();
    assert!(matches!(refused, RegistryError::Changed { .. }), "{refused}");
    let stored = store.deployments().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].deployment_id, "first", "the first deployment is kept");
    let deploys = store.audit_events(10).await.unwrap().into_iter().filter(|e| e.action == "deploy").count();
    assert_eq!(deploys, 0, "the refused writer left no audit event");
}

/// The database's clock, read for a person's change to a rollout, is the current UTC time on
/// both stores (Postgres's `now()` whatever the session's time zone).
async fn clock_conforms<S: PredictionStore + vigil_store::RolloutStore>(store: S) {
    store.migrate().await.unwrap();
    for _ in 0..2 {
        let before = Utc::now() - Duration::milliseconds(5);
        let clock = store.clock().await.unwrap();
        let after = Utc::now() + Duration::milliseconds(5);
        assert!(before <= clock && clock <= after, "{before} <= {clock} <= {after}");
    }
}

#[tokio::test]
async fn sqlite_clock_conforms() {
    let dir = tempfile::tempdir().unwrap();
    clock_conforms(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_clock_conforms() {
    let db = vigil_store::testing::TestDatabase::create();
    // A server set to another time zone still gives the time in UTC.
    let url = db.url();
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&admin).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Tokyo'")).execute(&admin).await.unwrap();
    admin.close().await;
    clock_conforms(PgStore::connect_lazy(&url, 2).unwrap()).await;
}

/// The review queue, the same on both stores: each item queued once, claimed by one reviewer
/// at a time, decided once, the decision stored as a label.
async fn reviews_conform<S: PredictionStore + vigil_store::ReviewStore + vigil_store::OutcomeStore>(store: S) {
    use vigil_store::{ReviewError, ReviewItem, ReviewStats};
    store.migrate().await.unwrap();
    let now = Utc::now();
    let rows: Vec<PredictionRow> = (0..3).map(|i| row(i, 10 - i as i64)).collect();
    store.insert_batch(&rows, &[]).await.unwrap();
    let item = |r: &PredictionRow, suggestion: Option<&str>| ReviewItem {
        prediction_id: r.prediction_id,
        created_at: r.time,
        model_name: r.model_name.clone(),
        model_version: r.model_version.clone(),
        variant: r.variant,
        station_id: r.station_id.clone(),
        part_id: r.part_id.clone(),
        policy: "partial".into(),
        reason: "score in the review band".into(),
        suggestion: suggestion.map(Into::into),
        score: suggestion.map(|_| 0.4),
        content_type: "image/png".into(),
        input: Some(vec![0x89, b'P', b'N', b'G', 0, 1, 2]),
        claimed_by: None,
        claimed_until: None,
        decided_by: None,
        decision: None,
        decided_at: None,
        reviews_required: 1,
    };
    let items = [item(&rows[0], Some("ok")), item(&rows[1], None), item(&rows[2], Some("ok"))];
    assert_eq!(store.enqueue_reviews(&items).await.unwrap(), 3);
    assert_eq!(store.enqueue_reviews(&items).await.unwrap(), 0, "queued once, whatever the redeliveries");
    let stored = store.review_item(rows[0].prediction_id).await.unwrap().unwrap();
    // Postgres keeps microseconds.
    assert_eq!(stored.created_at.timestamp_micros(), items[0].created_at.timestamp_micros());
    assert_eq!(ReviewItem { created_at: items[0].created_at, ..stored }, items[0], "stored as given");
    let lease = Duration::minutes(5);

    // Oldest first; a claimed item is not handed to another reviewer; one's own claim comes back.
    let anna = store.claim_review("anna", None, lease, now).await.unwrap().unwrap();
    assert_eq!(anna.prediction_id, rows[0].prediction_id);
    assert_eq!(anna.claimed_by.as_deref(), Some("anna"));
    let ben = store.claim_review("ben", None, lease, now).await.unwrap().unwrap();
    assert_eq!(ben.prediction_id, rows[1].prediction_id);
    assert_eq!(store.claim_review("anna", None, lease, now).await.unwrap().unwrap().prediction_id, anna.prediction_id);
    assert!(store.claim_review("carl", Some("other"), lease, now).await.unwrap().is_none(), "no item of that model");
    let stats = store.review_stats(Some("scratch-detector"), now).await.unwrap();
    assert_eq!((stats.open, stats.claimed, stats.decided), (3, 2, 0));
    assert_eq!(stats.oldest_open.map(|t| t.timestamp_micros()), Some(rows[0].time.timestamp_micros()));

    // Ben may not decide Anna's claimed item; Anna may; then nobody may decide it again.
    let refused = store.submit_review(anna.prediction_id, "ben", "defect", now).await.unwrap_err();
    assert!(matches!(refused, ReviewError::ClaimedByOther { ref by, .. } if by == "anna"), "{refused}");
    store.submit_review(anna.prediction_id, "anna", "defect", now).await.unwrap();
    let twice = store.submit_review(anna.prediction_id, "anna", "ok", now).await.unwrap_err();
    assert!(matches!(twice, ReviewError::AlreadyDecided { ref decision, .. } if decision == "defect"), "{twice}");
    assert!(matches!(
        store.submit_review(Uuid::now_v7(), "anna", "ok", now).await.unwrap_err(),
        ReviewError::NotFound(_)
    ));
    assert!(matches!(store.submit_review(ben.prediction_id, "ben", " ", now).await, Err(ReviewError::EmptyDecision)));
    // A lapsed claim lets another reviewer take the item over.
    let later = now + Duration::minutes(6);
    let carl = store.claim_review("carl", None, lease, later).await.unwrap().unwrap();
    assert_eq!(carl.prediction_id, ben.prediction_id, "ben's claim lapsed: the oldest open item");
    store.submit_review(carl.prediction_id, "carl", "ok", later).await.unwrap();
    let stats: ReviewStats = store.review_stats(None, later).await.unwrap();
    assert_eq!((stats.open, stats.claimed, stats.decided), (1, 0, 2));

    // Decisions are labels, with the reviewer as source, and sit beside the model's labels.
    let q = outcomes("scratch-detector", None, None, now - Duration::hours(1), later, 60);
    let mut actual: Vec<String> =
        expand(&store.labeled_counts(&q).await.unwrap()).into_iter().map(|l| l.actual).collect();
    actual.sort();
    assert_eq!(actual, ["defect", "ok"]);
    let reviewed = store
        .reviewed_predictions("scratch-detector", now - Duration::hours(1), later + Duration::seconds(1))
        .await
        .unwrap();
    let pairs: Vec<(String, String)> = reviewed.iter().map(|r| (r.predicted.clone(), r.decision.clone())).collect();
    assert_eq!(pairs, [("ok".to_string(), "defect".to_string()), ("ok".to_string(), "ok".to_string())]);
}

/// Panels: several reviewers decide one item independently; it is decided by their strict
/// majority, a tie asks one more; an item admits as many claims as decisions are missing.
async fn review_panels_conform<S: PredictionStore + vigil_store::ReviewStore + vigil_store::OutcomeStore>(store: S) {
    use vigil_store::{ReviewError, ReviewItem, ReviewOutcome};
    store.migrate().await.unwrap();
    let now = Utc::now();
    let rows: Vec<PredictionRow> =
        (0..3).map(|i| prediction(now - Duration::minutes(10 - i), 0.5, serde_json::json!({}))).collect();
    store.insert_batch(&rows, &[]).await.unwrap();
    let items: Vec<ReviewItem> =
        rows.iter().zip([3, 2, 2]).map(|(r, required)| vigil_store::testing::review_item(r, required)).collect();
    store.enqueue_reviews(&items).await.unwrap();
    let (first, second, third) = (rows[0].prediction_id, rows[1].prediction_id, rows[2].prediction_id);
    let lease = Duration::minutes(5);
    let claim = |who: &'static str| {
        let store = store.clone();
        async move { store.claim_review(who, None, lease, now).await.unwrap().map(|i| i.prediction_id) }
    };

    // Three doctors hold the first item at once; a fourth is handed the next one.
    for doctor in ["anna", "ben", "carl"] {
        assert_eq!(claim(doctor).await, Some(first), "{doctor}");
    }
    assert_eq!(claim("dora").await, Some(second));
    assert_eq!(store.review_stats(None, now).await.unwrap().claimed, 2);
    assert_eq!(
        store.submit_review(first, "anna", "refer", now).await.unwrap(),
        ReviewOutcome::Awaiting { decisions: 1, required: 3 }
    );
    let again = store.submit_review(first, "anna", "home", now).await.unwrap_err();
    assert!(matches!(again, ReviewError::AlreadyDecidedByYou { ref decision, .. } if decision == "refer"), "{again}");
    assert_eq!(claim("anna").await, Some(second), "anna decided the first item: the next one");
    // Both of the second item's slots are held (dora, anna): erin may neither claim nor decide it.
    assert_eq!(claim("erin").await, Some(third));
    let refused = store.submit_review(second, "erin", "home", now).await.unwrap_err();
    assert!(matches!(refused, ReviewError::ClaimedByOther { .. }), "{refused}");
    assert_eq!(
        store.submit_review(first, "ben", "home", now).await.unwrap(),
        ReviewOutcome::Awaiting { decisions: 2, required: 3 }
    );
    assert_eq!(
        store.submit_review(first, "carl", "home", now).await.unwrap(),
        ReviewOutcome::Decided { decision: "home".into() }
    );
    let decided = store.review_item(first).await.unwrap().unwrap();
    assert_eq!((decided.decision.as_deref(), decided.decided_by.as_deref()), (Some("home"), Some("anna,ben,carl")));
    let late = store.submit_review(first, "dora", "refer", now).await.unwrap_err();
    assert!(matches!(late, ReviewError::AlreadyDecided { .. }), "{late}");

    // A tie of two asks a third reviewer, who settles it.
    store.submit_review(second, "dora", "refer", now).await.unwrap();
    assert_eq!(
        store.submit_review(second, "anna", "home", now).await.unwrap(),
        ReviewOutcome::Awaiting { decisions: 2, required: 3 }
    );
    assert_eq!(claim("fred").await, Some(second));
    assert_eq!(
        store.submit_review(second, "fred", "refer", now).await.unwrap(),
        ReviewOutcome::Decided { decision: "refer".into() }
    );

    // Labels carry the panel; every reviewer's decision is kept beside the item's.
    let q = outcomes(&rows[0].model_name, None, None, now - Duration::hours(1), now, 60);
    let mut labels: Vec<String> =
        expand(&store.labeled_counts(&q).await.unwrap()).into_iter().map(|l| l.actual).collect();
    labels.sort();
    assert_eq!(labels, ["home", "refer"]);
    let decisions = store
        .reviewer_decisions(&rows[0].model_name, now - Duration::hours(1), now + Duration::seconds(1))
        .await
        .unwrap();
    let of_first: Vec<(&str, &str, Option<&str>)> = decisions
        .iter()
        .filter(|d| d.prediction_id == first)
        .map(|d| (d.reviewer.as_str(), d.decision.as_str(), d.final_decision.as_deref()))
        .collect();
    assert_eq!(
        of_first,
        [("anna", "refer", Some("home")), ("ben", "home", Some("home")), ("carl", "home", Some("home"))]
    );
    assert_eq!(decisions.len(), 6);
}

#[tokio::test]
async fn sqlite_review_panels_conform() {
    let dir = tempfile::tempdir().unwrap();
    review_panels_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_review_panels_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    review_panels_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

#[tokio::test]
async fn sqlite_reviews_conform() {
    let dir = tempfile::tempdir().unwrap();
    reviews_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_reviews_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    reviews_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Reviewers asking at the same moment: every item is claimed once, by one reviewer. On
/// Postgres a claim picks its item under its statement's snapshot, which cannot see a claim
/// committed by another reviewer while it ran.
async fn concurrent_claims_conform<S: PredictionStore + vigil_store::ReviewStore>(store: S) {
    use vigil_store::ReviewItem;
    store.migrate().await.unwrap();
    const ITEMS: usize = 80;
    let item = |i: usize| {
        let time = Utc::now() - Duration::seconds((ITEMS - i) as i64);
        vigil_store::testing::review_item(&prediction(time, 0.5, serde_json::json!({})), 1)
    };
    let items: Vec<ReviewItem> = (0..ITEMS).map(item).collect();
    assert_eq!(store.enqueue_reviews(&items).await.unwrap(), ITEMS as u64);
    // Rounds of eight reviewers asking at once, each new reviewer once (a reviewer asking again
    // would be handed their own claim back).
    let mut holders: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
    for round in 0..ITEMS / 8 {
        let reviewers: Vec<_> = (0..8)
            .map(|r| {
                let store = store.clone();
                tokio::spawn(async move {
                    let reviewer = format!("reviewer-{round}-{r}");
                    let claimed = store.claim_review(&reviewer, None, Duration::days(1), Utc::now()).await.unwrap();
                    (reviewer, claimed.expect("an item for each").prediction_id)
                })
            })
            .collect();
        for reviewer in reviewers {
            let (reviewer, id) = reviewer.await.unwrap();
            holders.entry(id).or_default().push(reviewer);
        }
    }
    let shared: Vec<_> = holders.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(shared.is_empty(), "items claimed by two reviewers: {shared:?}");
    assert_eq!(holders.len(), ITEMS / 8 * 8, "one item each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_claims_conform() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_claims_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_claims_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    concurrent_claims_conform(PgStore::connect_lazy(&db.url(), 8).unwrap()).await;
}

/// Retraining jobs: one active per model, claimed oldest first, reported, cancelled (queued at
/// once, running by request), finished only while running, interrupted by a restart; every
/// change an audit event.
async fn retrain_jobs_conform<S: PredictionStore + vigil_store::RetrainStore + vigil_store::RegistryStore>(store: S) {
    use vigil_store::registry::retraining::Reported;
    use vigil_store::{Change, JobState, RegistryError, RetrainJob};
    store.migrate().await.unwrap();
    let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let change = |actor: &'static str, s: i64| Change { actor, reason: "drift", at: at(s) };
    let first = RetrainJob::queued("screening", "manual", "", true, &change("anna", 0));
    store.enqueue_retrain(&first).await.unwrap();
    let refused = store.enqueue_retrain(&RetrainJob::queued("screening", "manual", "", false, &change("ben", 1))).await;
    assert!(
        matches!(&refused, Err(RegistryError::Invalid(m)) if m.contains(&first.job_id) && m.contains("queued")),
        "{refused:?}"
    );
    let other = RetrainJob::queued("spam-filter", "alarm drift", "datasets/x", false, &change("monitor", 2));
    store.enqueue_retrain(&other).await.unwrap();
    assert_eq!(store.retrain_job(&first.job_id).await.unwrap().as_ref(), Some(&first), "stored as given");
    let ids = |jobs: Vec<RetrainJob>| jobs.into_iter().map(|j| j.job_id).collect::<Vec<_>>();
    assert_eq!(ids(store.retrain_jobs(None, 10).await.unwrap()), [other.job_id.clone(), first.job_id.clone()]);
    assert_eq!(ids(store.retrain_jobs(Some("screening"), 10).await.unwrap()), [first.job_id.as_str()]);
    assert_eq!(store.retrain_jobs(None, 1).await.unwrap().len(), 1);

    // Claimed oldest first; a running job still blocks another of its model.
    let claimed = store.claim_retrain(at(10)).await.unwrap().unwrap();
    assert_eq!((claimed.job_id.as_str(), claimed.state.as_str()), (first.job_id.as_str(), "running"));
    assert_eq!(claimed.started_at, Some(at(10)));
    assert!(
        store.enqueue_retrain(&RetrainJob::queued("screening", "manual", "", false, &change("ben", 11))).await.is_err()
    );
    assert_eq!(store.report_retrain(&first.job_id, 0.5, "training", "epoch 1\n").await.unwrap(), Reported::Running);
    let cancelled = store.cancel_retrain(&first.job_id, &change("ben", 12)).await.unwrap();
    assert_eq!((cancelled.state.as_str(), cancelled.cancel_requested), ("running", true), "a running job is asked");
    assert_eq!(
        store.report_retrain(&first.job_id, 0.6, "training", "epoch 2\n").await.unwrap(),
        Reported::CancelRequested
    );
    let mut ended = store.retrain_job(&first.job_id).await.unwrap().unwrap();
    assert_eq!((ended.progress, ended.step.as_str(), ended.log.as_str()), (0.6, "training", "epoch 2\n"));
    ended.error = "cancelled by ben".into();
    assert!(store.finish_retrain(&ended, JobState::Cancelled, &change("retraining", 13)).await.unwrap());
    assert!(!store.finish_retrain(&ended, JobState::Failed, &change("retraining", 14)).await.unwrap(), "only once");
    assert_eq!(store.report_retrain(&first.job_id, 0.7, "x", "").await.unwrap(), Reported::Gone);
    let ended = store.retrain_job(&first.job_id).await.unwrap().unwrap();
    assert_eq!(
        (ended.state.as_str(), ended.finished_at, ended.error.as_str()),
        ("cancelled", Some(at(13)), "cancelled by ben")
    );
    assert_eq!(ended.duration(at(99)), Some(chrono::Duration::seconds(3)));
    let again = store.cancel_retrain(&first.job_id, &change("ben", 15)).await;
    assert!(matches!(&again, Err(RegistryError::Invalid(m)) if m.contains("already cancelled")), "{again:?}");

    // A queued job cancels at once; then nothing is left to claim.
    let queued = store.cancel_retrain(&other.job_id, &change("ben", 16)).await.unwrap();
    assert_eq!((queued.state.as_str(), queued.finished_at), ("cancelled", Some(at(16))));
    assert_eq!(store.claim_retrain(at(17)).await.unwrap(), None);

    // A restart fails what was running, and only that; the model may be retrained again.
    let next = RetrainJob::queued("screening", "manual", "", false, &change("anna", 20));
    store.enqueue_retrain(&next).await.unwrap();
    let mut succeeded = store.claim_retrain(at(21)).await.unwrap().unwrap();
    (succeeded.candidate_version, succeeded.dataset) = (Some("2".into()), "datasets/screening-1".into());
    assert!(store.finish_retrain(&succeeded, JobState::Succeeded, &change("retraining", 22)).await.unwrap());
    let last = RetrainJob::queued("screening", "manual", "", false, &change("anna", 30));
    store.enqueue_retrain(&last).await.unwrap();
    store.claim_retrain(at(31)).await.unwrap().unwrap();
    let restart = Change { actor: "retraining", reason: "interrupted: the monitor stopped", at: at(40) };
    let interrupted = store.interrupt_retrains(&restart).await.unwrap();
    assert_eq!(ids(interrupted), [last.job_id.as_str()]);
    let states: Vec<(String, String)> =
        store.retrain_jobs(None, 10).await.unwrap().into_iter().map(|j| (j.job_id, j.state)).collect();
    assert_eq!(
        states,
        [
            (last.job_id.clone(), "failed".to_string()),
            (next.job_id.clone(), "succeeded".to_string()),
            (other.job_id.clone(), "cancelled".to_string()),
            (first.job_id.clone(), "cancelled".to_string()),
        ]
    );
    let done = store.retrain_job(&next.job_id).await.unwrap().unwrap();
    assert_eq!((done.candidate_version.as_deref(), done.dataset.as_str()), (Some("2"), "datasets/screening-1"));
    assert_eq!(store.retrain_job(&last.job_id).await.unwrap().unwrap().error, "interrupted: the monitor stopped");

    let events: Vec<(String, String, String)> = store
        .audit_events(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.subject == format!("screening/job {}", first.job_id))
        .map(|e| (e.actor, e.from_state, e.to_state))
        .collect();
    let e = |a: &str, f: &str, t: &str| (a.to_string(), f.to_string(), t.to_string());
    assert_eq!(
        events,
        [
            e("retraining", "running", "cancelled"),
            e("ben", "running", "cancel requested"),
            e("retraining", "queued", "running"),
            e("anna", "", "queued"),
        ]
    );
}

#[tokio::test]
async fn sqlite_retrain_jobs_conform() {
    let dir = tempfile::tempdir().unwrap();
    retrain_jobs_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_retrain_jobs_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    retrain_jobs_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Raised capture rates: one per model and rule, raised again keeps its first time, ended once.
async fn capture_boosts_conform<S: PredictionStore + vigil_store::CaptureBoostStore>(store: S) {
    use vigil_store::CaptureBoost;
    store.migrate().await.unwrap();
    let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let boost = |model: &str, rule: &str, rate: f64, s: i64| CaptureBoost {
        model_name: model.into(),
        rule: rule.into(),
        rate,
        since: at(s),
    };
    store.raise_capture(&boost("detector", "drift", 0.5, 0)).await.unwrap();
    store.raise_capture(&boost("detector", "accuracy", 0.2, 1)).await.unwrap();
    store.raise_capture(&boost("detector", "drift", 0.8, 5)).await.unwrap();
    assert_eq!(
        store.capture_boosts().await.unwrap(),
        [boost("detector", "accuracy", 0.2, 1), boost("detector", "drift", 0.8, 0)],
        "raised again: the new rate, the first time"
    );
    assert!(store.end_capture_boost("detector", "drift").await.unwrap());
    assert!(!store.end_capture_boost("detector", "drift").await.unwrap());
    assert_eq!(store.capture_boosts().await.unwrap(), [boost("detector", "accuracy", 0.2, 1)]);
}

#[tokio::test]
async fn sqlite_capture_boosts_conform() {
    let dir = tempfile::tempdir().unwrap();
    capture_boosts_conform(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_capture_boosts_conform() {
    let db = vigil_store::testing::TestDatabase::create();
    capture_boosts_conform(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

/// Retention: each table loses exactly its rows older than the cut-off, in batches of at most
/// the limit; forgetting a device deletes its predictions with their labels, feedback and
/// review items (and names its captured inputs) in one audited transaction, and nothing else.
async fn retention_conforms<
    S: PredictionStore + vigil_store::RetentionStore + vigil_store::ReviewStore + vigil_store::RegistryStore,
>(
    store: S,
) {
    use vigil_store::{Expiring, Subject};
    store.migrate().await.unwrap();
    let now = Utc::now();
    let cutoff = now - Duration::days(30);
    // 23 rows older than the cut-off (one a second before it), 12 after (one a second after).
    let mut times: Vec<_> = (0..22).map(|i| now - Duration::days(40) + Duration::minutes(i)).collect();
    times.push(cutoff - Duration::seconds(1));
    times.push(cutoff + Duration::seconds(1));
    times.extend((0..11).map(|i| now - Duration::minutes(i)));
    let rows: Vec<PredictionRow> = times.iter().map(|t| prediction(*t, 0.2, serde_json::json!({}))).collect();
    let labels: Vec<LabelRow> = rows
        .iter()
        .map(|r| LabelRow {
            label_id: Uuid::now_v7(),
            prediction_id: r.prediction_id,
            label: "ok".into(),
            time: r.time,
            source: "anna".into(),
        })
        .collect();
    store.insert_batch(&rows, &labels).await.unwrap();
    let feedback: Vec<vigil_store::FeedbackRow> = rows
        .iter()
        .map(|r| vigil_store::FeedbackRow {
            event_id: Uuid::now_v7(),
            prediction_id: r.prediction_id,
            kind: "click".into(),
            value: String::new(),
            session_id: String::new(),
            time: r.time,
        })
        .collect();
    store.insert_feedback(&feedback).await.unwrap();

    for table in Expiring::LOG {
        let mut batches = Vec::new();
        loop {
            let deleted = store.expire(table, cutoff, 10).await.unwrap();
            batches.push(deleted);
            if deleted < 10 {
                break;
            }
        }
        assert_eq!(batches, vec![10, 10, 3], "{table:?}: 23 old rows in batches of at most 10");
    }
    let kept: Vec<Uuid> = {
        let mut ids: Vec<Uuid> = rows.iter().filter(|r| r.time >= cutoff).map(|r| r.prediction_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(store.prediction_ids().await.unwrap(), kept, "exactly the rows from the cut-off on");
    assert_eq!(store.count_feedback().await.unwrap(), 12);

    // Dead letters go by the time they were set aside.
    let letters: Vec<vigil_store::DeadLetterRow> = [now - Duration::days(40), now]
        .iter()
        .map(|t| vigil_store::DeadLetterRow {
            id: Uuid::now_v7(),
            time: *t,
            topic: "vigil.predictions.v1".into(),
            source: "0/1".into(),
            reason: "undecodable".into(),
            key: None,
            payload: Some(vec![0xff]),
        })
        .collect();
    store.insert_dead_letters(&letters).await.unwrap();
    assert_eq!(store.expire(Expiring::DeadLetters, cutoff, 10).await.unwrap(), 1);
    let left: Vec<Uuid> = store.dead_letters(10).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(left, [letters[1].id]);

    // Review items keep their raw input until decided and past the limit; the decision stays.
    let long_ago = now - Duration::days(40);
    let reviewed: Vec<PredictionRow> =
        (0..3).map(|i| prediction(long_ago + Duration::minutes(i), 0.5, serde_json::json!({}))).collect();
    let items: Vec<vigil_store::ReviewItem> = reviewed
        .iter()
        .map(|r| vigil_store::ReviewItem {
            input: Some(vec![1, 2, 3]),
            content_type: "image/png".into(),
            ..vigil_store::testing::review_item(r, 1)
        })
        .collect();
    store.enqueue_reviews(&items).await.unwrap();
    // The oldest is decided 40 days ago, the second today; the third is still open.
    for decided_at in [long_ago, now] {
        let item = store.claim_review("anna", None, Duration::minutes(5), decided_at).await.unwrap().unwrap();
        store.submit_review(item.prediction_id, "anna", "ok", decided_at).await.unwrap();
    }
    assert_eq!(store.expire_review_inputs(cutoff, 10).await.unwrap(), 1);
    assert_eq!(store.expire_review_inputs(cutoff, 10).await.unwrap(), 0, "nothing left to drop");
    let inputs: Vec<(Option<Vec<u8>>, Option<String>)> = {
        let mut v = Vec::new();
        for r in &reviewed {
            let item = store.review_item(r.prediction_id).await.unwrap().unwrap();
            v.push((item.input, item.decision));
        }
        v
    };
    assert_eq!(
        inputs,
        vec![(None, Some("ok".into())), (Some(vec![1, 2, 3]), Some("ok".into())), (Some(vec![1, 2, 3]), None)]
    );

    // A device's records, among others'.
    let mut device_rows: Vec<PredictionRow> = (0..3)
        .map(|i| PredictionRow {
            device_id: "cam-7".into(),
            ..prediction(now - Duration::minutes(i), 0.7, serde_json::json!({}))
        })
        .collect();
    device_rows[0].capture = "scratch-detector/abc123".into();
    // Captures are stored by content: another device's record names the same bytes as this one.
    device_rows[1].capture = "scratch-detector/def456".into();
    let same_bytes = PredictionRow {
        device_id: "cam-8".into(),
        capture: "scratch-detector/def456".into(),
        ..prediction(now, 0.7, serde_json::json!({}))
    };
    store.insert_batch(std::slice::from_ref(&same_bytes), &[]).await.unwrap();
    let mut kept = kept;
    kept.push(same_bytes.prediction_id);
    kept.sort();
    let label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: device_rows[1].prediction_id,
        label: "defect".into(),
        time: now,
        source: "anna".into(),
    };
    store.insert_batch(&device_rows, std::slice::from_ref(&label)).await.unwrap();
    let click = vigil_store::FeedbackRow {
        event_id: Uuid::now_v7(),
        prediction_id: device_rows[2].prediction_id,
        kind: "click".into(),
        value: String::new(),
        session_id: String::new(),
        time: now,
    };
    store.insert_feedback(std::slice::from_ref(&click)).await.unwrap();
    store.enqueue_reviews(&[vigil_store::testing::review_item(&device_rows[0], 1)]).await.unwrap();
    let change = vigil_store::Change { actor: "dpo", reason: "request 17", at: now };
    let forgotten = store.forget(&Subject::Device("cam-7".into()), &change).await.unwrap();
    assert_eq!((forgotten.predictions, forgotten.labels, forgotten.feedback, forgotten.review_items), (3, 1, 1, 1));
    let mut captures: Vec<(Uuid, &str, bool)> =
        forgotten.captures.iter().map(|c| (c.prediction_id, c.key.as_str(), c.shared)).collect();
    captures.sort();
    let mut expected = vec![
        (device_rows[0].prediction_id, "scratch-detector/abc123", false),
        (device_rows[1].prediction_id, "scratch-detector/def456", true),
    ];
    expected.sort();
    assert_eq!(captures, expected, "the bytes cam-8's record names are marked shared");
    assert_eq!(store.prediction_ids().await.unwrap(), kept, "only the device's rows went");
    assert_eq!(store.count_feedback().await.unwrap(), 12);
    let audit = store.audit_events(5).await.unwrap();
    let event = audit.iter().find(|e| e.action == "forget").expect("an audit event");
    assert_eq!((event.actor.as_str(), event.subject.as_str()), ("dpo", "device:cam-7"));
    assert!(event.reason.starts_with("request 17; 3 predictions"), "{}", event.reason);
    let again = store.forget(&Subject::Device("cam-7".into()), &change).await.unwrap();
    assert_eq!(again.predictions, 0, "nothing left to forget");
}

#[tokio::test]
async fn sqlite_retention_conforms() {
    let dir = tempfile::tempdir().unwrap();
    retention_conforms(SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_retention_conforms() {
    let db = vigil_store::testing::TestDatabase::create();
    retention_conforms(PgStore::connect_lazy(&db.url(), 2).unwrap()).await;
}

#[tokio::test]
async fn postgres_connections_take_sslmode_from_the_url() {
    let db = vigil_store::testing::TestDatabase::create();
    let url = db.url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = PgStore::connect_lazy(&format!("{url}{separator}sslmode=require"), 1).unwrap();
    store.migrate().await.expect("TLS to Postgres (the test server runs with ssl = on, Debian's default)");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
}
