//! Rollups: per model, version, variant and window, a mergeable summary of the prediction log
//! (`vigil.v1.RollupWindow`), kept up to date from the log by [`upkeep`] so that charts and drift
//! read O(windows x buckets) whatever the number of raw rows.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message;
use vigil_proto::vigil::v1::{FeatureRollup, RecordStatus, RollupWindow};
use vigil_store::MonitorStore;
use vigil_store::monitoring::{RollupInput, RollupKey, StoredRollup};

use crate::sketch;
use crate::telemetry::MonitorMetrics;

/// Window widths kept, in seconds, finest first (each a multiple of the first).
pub const DEFAULT_RESOLUTIONS: [u32; 3] = [60, 300, 3600];

/// The start of the `resolution_s` window holding `t`.
pub fn window_start(t: DateTime<Utc>, resolution_s: u32) -> DateTime<Utc> {
    let r = i64::from(resolution_s.max(1));
    let s = t.timestamp().div_euclid(r) * r;
    DateTime::from_timestamp(s, 0).unwrap_or(t)
}

/// Adds one logged prediction to a window.
pub fn add_row(w: &mut RollupWindow, r: &RollupInput) {
    w.count += 1;
    if r.status != RecordStatus::Ok as i16 {
        w.errors += 1;
    }
    if r.status == RecordStatus::InvalidInput as i16 {
        w.invalid_inputs += 1;
    }
    // A null output is an answer that says nothing; a request not answered (refused or failed,
    // logged with an empty output) is an error, counted once, as such.
    if r.output_null && r.status == RecordStatus::Ok as i16 {
        w.nulls += 1;
    }
    let latency_ms = match r.request_time {
        Some(start) => (r.time - start).num_microseconds().unwrap_or(0) as f64 / 1000.0,
        None => (r.queue_time_us + r.compute_time_us) as f64 / 1000.0,
    };
    sketch::add(w.latency_ms.get_or_insert_default(), latency_ms);
    *w.verdicts.entry(i32::from(r.verdict)).or_default() += 1;
    *w.decisions.entry(i32::from(r.decision)).or_default() += 1;
    if let Some(score) = r.score {
        sketch::add(w.score.get_or_insert_default(), f64::from(score));
    }
    if !r.stage.is_empty() {
        *w.stages.entry(r.stage.clone()).or_default() += 1;
    }
    if !r.label.is_empty() {
        *w.labels.entry(r.label.clone()).or_default() += 1;
    }
    if let Some(features) = r.features.as_object() {
        for (name, value) in features {
            let f = w.features.entry(name.clone()).or_default();
            match value.as_f64() {
                Some(v) if v.is_finite() => {
                    f.count += 1;
                    f.sum += v;
                    f.sum_sq += v * v;
                    sketch::add(f.sketch.get_or_insert_default(), v);
                }
                // Missing (null) or not a number: counted as missing.
                _ => f.missing += 1,
            }
        }
    }
}

/// Adds window `b` into `a`.
pub fn merge_windows(a: &mut RollupWindow, b: &RollupWindow) {
    a.count += b.count;
    a.errors += b.errors;
    a.invalid_inputs += b.invalid_inputs;
    a.nulls += b.nulls;
    if let Some(l) = &b.latency_ms {
        sketch::merge(a.latency_ms.get_or_insert_default(), l);
    }
    for (k, v) in &b.verdicts {
        *a.verdicts.entry(*k).or_default() += v;
    }
    for (k, v) in &b.decisions {
        *a.decisions.entry(*k).or_default() += v;
    }
    if let Some(s) = &b.score {
        sketch::merge(a.score.get_or_insert_default(), s);
    }
    for (stage, n) in &b.stages {
        *a.stages.entry(stage.clone()).or_default() += n;
    }
    for (label, n) in &b.labels {
        *a.labels.entry(label.clone()).or_default() += n;
    }
    for (name, fb) in &b.features {
        let fa: &mut FeatureRollup = a.features.entry(name.clone()).or_default();
        fa.count += fb.count;
        fa.missing += fb.missing;
        fa.sum += fb.sum;
        fa.sum_sq += fb.sum_sq;
        if let Some(s) = &fb.sketch {
            sketch::merge(fa.sketch.get_or_insert_default(), s);
        }
    }
}

/// Merges an encoded delta into an encoded stored window. A stored body that fails to decode
/// (never written by this code) is replaced by the delta alone, and the loss is logged.
pub fn merge_bodies(into: &mut Vec<u8>, delta: &[u8]) {
    let mut a = RollupWindow::decode(into.as_slice()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored rollup does not decode; starting it afresh");
        RollupWindow::default()
    });
    match RollupWindow::decode(delta) {
        Ok(b) => merge_windows(&mut a, &b),
        Err(e) => tracing::error!(error = %e, "a rollup delta does not decode"),
    }
    *into = a.encode_to_vec();
}

/// Summarises rows into one encoded delta per model, version, variant, resolution and window.
pub fn summarize(rows: &[RollupInput], resolutions: &[u32]) -> Vec<StoredRollup> {
    let mut windows: HashMap<RollupKey, RollupWindow> = HashMap::new();
    for r in rows {
        for &res in resolutions {
            let key = RollupKey {
                model_name: r.model_name.clone(),
                resolution_s: res as i32,
                window_start: window_start(r.time, res),
                model_version: r.model_version.clone(),
                variant: r.variant,
            };
            add_row(windows.entry(key).or_default(), r);
        }
    }
    windows.into_iter().map(|(key, w)| StoredRollup { key, body: w.encode_to_vec() }).collect()
}

/// Rolls up the next batch of logged predictions and returns how many rows it summarised:
/// 0 when it is caught up (or another worker took the batch: the caller simply tries again).
pub async fn step<S: MonitorStore>(store: &S, resolutions: &[u32], max_rows: usize) -> Result<usize, sqlx::Error> {
    Ok(step_newest(store, resolutions, max_rows).await?.0)
}

/// [`step`], and the time of the newest prediction it summarised.
async fn step_newest<S: MonitorStore>(
    store: &S,
    resolutions: &[u32],
    max_rows: usize,
) -> Result<(usize, Option<DateTime<Utc>>), sqlx::Error> {
    let cursor = store.rollup_cursor().await?;
    let batch = store.read_for_rollup(cursor, max_rows).await?;
    if batch.next_cursor == cursor {
        return Ok((0, None));
    }
    let deltas = summarize(&batch.rows, resolutions);
    let applied = store.apply_rollups(cursor, batch.next_cursor, deltas, &merge_bodies).await?;
    let newest = batch.rows.iter().map(|r| r.time).max();
    Ok(if applied { (batch.rows.len(), newest) } else { (0, None) })
}

/// Keeps rollups up to date until `shutdown` fires: catches up in batches, then polls.
pub async fn upkeep<S: MonitorStore>(
    store: S,
    resolutions: Vec<u32>,
    poll: Duration,
    metrics: MonitorMetrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let chunk = vigil_store::monitoring::DEFAULT_ROLLUP_CHUNK;
        match step_newest(&store, &resolutions, chunk).await {
            Ok((n, newest)) => {
                if failing {
                    tracing::info!("rollup upkeep resumed");
                    failing = false;
                }
                metrics.rollup_records.inc_by(n as u64);
                // A full batch: more rows wait, about as old as the newest one just summarised.
                let behind = match newest {
                    Some(t) if n >= chunk => (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0,
                    _ => 0.0,
                };
                metrics.rollup_lag_seconds.set(behind);
                if n > 0 {
                    continue;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "rollup upkeep failed; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: i64, score: f32, brightness: Option<f64>) -> RollupInput {
        RollupInput {
            model_name: "m".into(),
            model_version: "1".into(),
            variant: 1,
            time: DateTime::from_timestamp(t, 0).unwrap(),
            request_time: None,
            features: serde_json::json!({ "brightness": brightness }),
            score: Some(score),
            output_null: false,
            verdict: 1,
            decision: 1,
            queue_time_us: 100,
            compute_time_us: 900,
            status: RecordStatus::Ok as i16,
            stage: if t % 2 == 0 { "asr".into() } else { String::new() },
            label: if score >= 0.5 { "spam".into() } else { "ham".into() },
        }
    }

    #[test]
    fn a_request_not_answered_is_an_error_not_a_null_output() {
        let mut w = RollupWindow::default();
        let null = RollupInput { output_null: true, ..row(1, 0.5, None) };
        let refused = RollupInput { status: RecordStatus::InvalidInput as i16, ..null.clone() };
        let failed = RollupInput { status: RecordStatus::Error as i16, ..null.clone() };
        for r in [&null, &refused, &failed] {
            add_row(&mut w, r);
        }
        assert_eq!((w.count, w.nulls, w.errors, w.invalid_inputs), (3, 1, 2, 1));
    }

    #[test]
    fn windows_align_to_their_resolution() {
        let t = DateTime::from_timestamp(3_725, 0).unwrap();
        assert_eq!(window_start(t, 60).timestamp(), 3_720);
        assert_eq!(window_start(t, 3600).timestamp(), 3_600);
    }

    #[test]
    fn summaries_of_parts_merge_into_the_summary_of_the_whole() {
        let rows: Vec<RollupInput> =
            (0..200).map(|i| row(i * 7, i as f32 / 200.0, (i % 9 != 0).then_some(i as f64))).collect();
        let whole = summarize(&rows, &[3600]);
        assert_eq!(whole.len(), 1);
        let mut body = Vec::new();
        for part in rows.chunks(37) {
            for d in summarize(part, &[3600]) {
                merge_bodies(&mut body, &d.body);
            }
        }
        let (a, b) = (RollupWindow::decode(body.as_slice()).unwrap(), RollupWindow::decode(&*whole[0].body).unwrap());
        assert_eq!(a.count, 200);
        assert_eq!(a.features["brightness"].missing, 23);
        assert_eq!(a.features["brightness"].count, b.features["brightness"].count);
        assert_eq!(a.features["brightness"].sketch, b.features["brightness"].sketch);
        assert_eq!(a.score.as_ref().unwrap().positive, b.score.as_ref().unwrap().positive);
        assert_eq!(a.verdicts, b.verdicts);
        // i * 7 is even for even i: 100 of the 200 rows are the "asr" stage, the rest have none.
        assert_eq!(a.stages, b.stages);
        assert_eq!(a.stages.get("asr"), Some(&100));
        assert_eq!(a.stages.len(), 1);
        assert_eq!(a.labels, b.labels);
        assert_eq!((a.labels["spam"], a.labels["ham"]), (100, 100), "scores i / 200: half at 0.5 or more");
        assert_eq!(sketch::quantile(a.latency_ms.as_ref().unwrap(), 0.5), Some(1.0));
    }
}
