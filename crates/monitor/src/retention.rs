//! Retention: the leading monitor deletes predictions, labels and feedback older than their
//! limits in bounded batches (a pause between batches leaves the loggers the table), and the
//! rollups of each fine resolution after their own limit, except those an alarm rule's fixed
//! baseline window reads. Nothing is deleted unless a limit is configured.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use vigil_store::{Expiring, RetentionStore};

use crate::telemetry::MonitorMetrics;

/// `[retention]`: how many days each kind of record is kept (unset: forever).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub predictions_days: Option<u32>,
    pub labels_days: Option<u32>,
    pub feedback_days: Option<u32>,
    /// Records no logger could decode (kept with their payload for inspection).
    pub dead_letters_days: Option<u32>,
    /// The raw input of review items decided longer ago (the decision and label stay).
    pub review_inputs_days: Option<u32>,
    /// Captured inputs (with `capture_store`): objects last written longer ago are deleted.
    pub captures_days: Option<u32>,
    /// The capture store the servers write to (`[capture] store`: file:///... or
    /// s3://bucket/prefix with the AWS_* variables).
    pub capture_store: Option<String>,
    /// Days kept per rollup resolution in seconds, e.g. `60 = 7` drops 1-minute rollups after
    /// a week; resolutions not listed are kept.
    pub rollups_days: BTreeMap<String, u32>,
    /// Rows deleted per statement.
    pub batch_rows: i64,
    /// Pause between two batches.
    #[serde(deserialize_with = "crate::config::duration")]
    pub pause: Duration,
    /// How often retention runs.
    #[serde(deserialize_with = "crate::config::duration")]
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            predictions_days: None,
            labels_days: None,
            feedback_days: None,
            dead_letters_days: None,
            review_inputs_days: None,
            captures_days: None,
            capture_store: None,
            rollups_days: BTreeMap::new(),
            batch_rows: 10_000,
            pause: Duration::from_millis(20),
            every: Duration::from_secs(3600),
        }
    }
}

impl RetentionConfig {
    /// Checks values serde cannot; `resolutions` are the configured rollup resolutions.
    pub fn validate(&self, resolutions: &[u32]) -> anyhow::Result<()> {
        if self.batch_rows < 1 {
            anyhow::bail!("retention.batch_rows must be at least 1");
        }
        if self.every.is_zero() {
            anyhow::bail!("retention.every must be longer than 0s");
        }
        for (key, days) in [
            ("predictions_days", self.predictions_days),
            ("labels_days", self.labels_days),
            ("feedback_days", self.feedback_days),
            ("captures_days", self.captures_days),
            ("dead_letters_days", self.dead_letters_days),
            ("review_inputs_days", self.review_inputs_days),
        ] {
            if days == Some(0) {
                anyhow::bail!("retention.{key} must be at least 1 (leave it out to keep everything)");
            }
        }
        if self.captures_days.is_some() != self.capture_store.is_some() {
            anyhow::bail!("retention.captures_days and retention.capture_store go together");
        }
        if let Some(url) = &self.capture_store {
            vigil_capture::open_url(url).map_err(|e| anyhow::anyhow!("retention.capture_store: {e}"))?;
        }
        self.rollup_limits(resolutions).map(drop)
    }

    /// The rollup limits as (resolution in seconds, days).
    pub fn rollup_limits(&self, resolutions: &[u32]) -> anyhow::Result<Vec<(i32, u32)>> {
        self.rollups_days
            .iter()
            .map(|(key, days)| {
                let resolution: u32 = key
                    .parse()
                    .map_err(|_| anyhow::anyhow!("retention.rollups_days: '{key}' is not a resolution in seconds"))?;
                if !resolutions.contains(&resolution) {
                    anyhow::bail!(
                        "retention.rollups_days: {resolution} is not one of rollups.resolutions {resolutions:?}"
                    );
                }
                if *days == 0 {
                    anyhow::bail!("retention.rollups_days.{key} must be at least 1");
                }
                Ok((resolution as i32, *days))
            })
            .collect()
    }

    fn table_limits(&self) -> Vec<(Expiring, u32)> {
        [
            (Expiring::Predictions, self.predictions_days),
            (Expiring::Labels, self.labels_days),
            (Expiring::Feedback, self.feedback_days),
            (Expiring::DeadLetters, self.dead_letters_days),
        ]
        .into_iter()
        .filter_map(|(table, days)| days.map(|d| (table, d)))
        .collect()
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Rows deleted per table (`predictions`, `labels`, `feedback`, `dead_letters`, `rollups`),
    /// review items whose input was dropped (`review_inputs`), and objects deleted from the
    /// capture store (`captures`).
    pub deleted: BTreeMap<&'static str, u64>,
    /// Statements run on the expiring tables (each deleting at most `batch_rows`).
    pub batches: u64,
}

/// A fixed baseline window a rule reads (`baseline_since`/`baseline_until`): its rollups are
/// kept whatever their age, or the rule would compare with less and less of them.
#[derive(Debug, Clone, PartialEq)]
pub struct PinnedBaseline {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The rule's model; None for a rule on every model with traffic.
    pub model: Option<String>,
}

/// The fixed baseline windows of `rules`.
pub fn pinned_baselines(rules: &[crate::config::Rule]) -> Vec<PinnedBaseline> {
    rules
        .iter()
        .filter(|rule| rule.baseline_offset.is_none())
        .filter_map(|rule| match rule.baseline {
            crate::views::Baseline::Window(since, until) => {
                Some(PinnedBaseline { since, until, model: rule.model.clone() })
            }
            crate::views::Baseline::Training => None,
        })
        .collect()
}

/// Window starts `[from, before)` (`from` None: unbounded) whose rollups may be deleted, but
/// those of the models in `keep`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expirable {
    pub from: Option<DateTime<Utc>>,
    pub before: DateTime<Utc>,
    pub keep: Vec<String>,
}

/// What may be deleted of the rollups of `resolution_s` older than `before`: all but the
/// windows overlapping a `pinned` range, for every model where its rule is on every model, for
/// its rule's model alone otherwise.
pub fn expirable_ranges(before: DateTime<Utc>, pinned: &[PinnedBaseline], resolution_s: u32) -> Vec<Expirable> {
    // Widened to the windows that overlap them.
    let widened = |pin: &PinnedBaseline| (crate::rollup::window_start(pin.since, resolution_s), pin.until);
    let every: Vec<_> = pinned.iter().filter(|pin| pin.model.is_none()).map(widened).collect();
    let per_model: Vec<_> = pinned
        .iter()
        .filter_map(|pin| pin.model.as_ref().map(|model| (widened(pin), model)))
        .filter(|((since, until), _)| since < until)
        .collect();
    let mut expirable = Vec::new();
    for (from, to) in outside(before, &every) {
        // Cut where a model's window starts or ends: each piece is inside a model's window
        // whole, or outside it whole.
        let mut cuts: Vec<_> = per_model
            .iter()
            .flat_map(|((since, until), _)| [*since, *until])
            .filter(|t| from.is_none_or(|from| from < *t) && *t < to)
            .collect();
        cuts.sort();
        cuts.dedup();
        let mut start = from;
        for end in cuts.into_iter().chain([to]) {
            let mut keep: Vec<String> = per_model
                .iter()
                .filter(|((since, until), _)| start.is_some_and(|start| *since <= start) && end <= *until)
                .map(|(_, model)| model.to_string())
                .collect();
            keep.sort();
            keep.dedup();
            match expirable.last_mut() {
                // Next to a piece that keeps the same: one range.
                Some(Expirable { before, keep: kept, .. }) if Some(*before) == start && *kept == keep => *before = end,
                _ => expirable.push(Expirable { from: start, before: end, keep }),
            }
            start = Some(end);
        }
    }
    expirable
}

/// The ranges `[from, before)` before `before` outside every `held` range (`from` None:
/// unbounded).
fn outside(
    before: DateTime<Utc>,
    held: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Vec<(Option<DateTime<Utc>>, DateTime<Utc>)> {
    let mut holes: Vec<_> = held.iter().copied().filter(|(since, until)| since < until && *since < before).collect();
    holes.sort();
    let mut ranges = Vec::new();
    // Where the range being formed starts: the end of the holes so far.
    let mut from: Option<DateTime<Utc>> = None;
    for (since, until) in holes {
        if from.is_none_or(|from| from < since) {
            ranges.push((from, since));
        }
        from = Some(from.map_or(until, |from| from.max(until)));
    }
    if from.is_none_or(|from| from < before) {
        ranges.push((from, before));
    }
    ranges
}

/// One pass at `now`: every limit applied until nothing older is left; the rollups of the
/// `pinned` ranges (see [`pinned_baselines`]) stay.
pub async fn expire_once<S: RetentionStore>(
    store: &S,
    config: &RetentionConfig,
    resolutions: &[u32],
    pinned: &[PinnedBaseline],
    now: DateTime<Utc>,
) -> anyhow::Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let days = |d: u32| chrono::Duration::days(i64::from(d));
    for (table, limit) in config.table_limits() {
        let before = now - days(limit);
        loop {
            let deleted = store.expire(table, before, config.batch_rows).await?;
            report.batches += 1;
            *report.deleted.entry(table.table()).or_default() += deleted;
            if deleted < config.batch_rows as u64 {
                break;
            }
            tokio::time::sleep(config.pause).await;
        }
    }
    if let Some(limit) = config.review_inputs_days {
        loop {
            let dropped = store.expire_review_inputs(now - days(limit), config.batch_rows).await?;
            report.batches += 1;
            *report.deleted.entry("review_inputs").or_default() += dropped;
            if dropped < config.batch_rows as u64 {
                break;
            }
            tokio::time::sleep(config.pause).await;
        }
    }
    for (resolution, limit) in config.rollup_limits(resolutions)? {
        for range in expirable_ranges(now - days(limit), pinned, resolution as u32) {
            let deleted = store.expire_rollups(resolution, range.from, range.before, &range.keep).await?;
            *report.deleted.entry("rollups").or_default() += deleted;
        }
    }
    if let (Some(limit), Some(url)) = (config.captures_days, &config.capture_store) {
        let (objects, prefix) = vigil_capture::open_url(url)?;
        let expired = vigil_capture::expire_captures(objects.as_ref(), &prefix, now - days(limit))
            .await
            .map_err(|e| anyhow::anyhow!("expiring captured inputs in {url}: {e}"))?;
        *report.deleted.entry("captures").or_default() += expired.deleted;
    }
    Ok(report)
}

/// Applies retention every `config.every` while this monitor leads, until `shutdown`.
pub async fn run<S: RetentionStore>(
    store: S,
    config: RetentionConfig,
    resolutions: Vec<u32>,
    pinned: Vec<PinnedBaseline>,
    leading: tokio::sync::watch::Receiver<bool>,
    metrics: MonitorMetrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let nothing = config.table_limits().is_empty()
        && config.rollups_days.is_empty()
        && config.captures_days.is_none()
        && config.review_inputs_days.is_none();
    if nothing {
        // Nothing to do, but the task lives as long as the monitor: a task that ends stops it.
        let _ = shutdown.changed().await;
        return;
    }
    // The first pass soon after start: a monitor restarted hourly must still get to it.
    let mut wait = config.every.min(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = config.every;
        if !*leading.borrow() {
            continue;
        }
        match expire_once(&store, &config, &resolutions, &pinned, Utc::now()).await {
            Ok(report) => {
                for (table, deleted) in &report.deleted {
                    metrics.retention_deleted(table, *deleted);
                }
                tracing::info!(deleted = ?report.deleted, batches = report.batches, "retention pass");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention pass failed; retrying at the next"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::{Expirable, PinnedBaseline, expirable_ranges};

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, hour, minute, 0).unwrap()
    }

    fn pin(since: DateTime<Utc>, until: DateTime<Utc>, model: Option<&str>) -> PinnedBaseline {
        PinnedBaseline { since, until, model: model.map(str::to_string) }
    }

    fn range(from: Option<DateTime<Utc>>, before: DateTime<Utc>, keep: &[&str]) -> Expirable {
        Expirable { from, before, keep: keep.iter().map(|m| m.to_string()).collect() }
    }

    #[test]
    fn pinned_windows_are_cut_out_of_what_expires() {
        let before = at(20, 0);
        assert_eq!(expirable_ranges(before, &[], 60), [range(None, before, &[])], "nothing pinned");
        // Widened to the windows that overlap them (an hour's start), overlapping and
        // touching ranges merged, one past the limit ignored, one running past it kept whole.
        let pinned = [
            pin(at(2, 30), at(4, 0), None),
            pin(at(3, 0), at(5, 0), None),
            pin(at(5, 0), at(6, 0), None),
            pin(at(8, 15), at(9, 0), None),
            pin(at(21, 0), at(22, 0), None),
        ];
        assert_eq!(
            expirable_ranges(before, &pinned, 3600),
            [range(None, at(2, 0), &[]), range(Some(at(6, 0)), at(8, 0), &[]), range(Some(at(9, 0)), before, &[])]
        );
        let late = [pin(at(19, 0), at(23, 0), None)];
        assert_eq!(expirable_ranges(before, &late, 60), [range(None, at(19, 0), &[])]);
        let whole = [pin(at(0, 0), at(23, 0), None)];
        assert_eq!(expirable_ranges(before, &whole, 60), [range(None, at(0, 0), &[])]);
    }

    #[test]
    fn a_models_window_keeps_that_models_rollups_alone() {
        let before = at(20, 0);
        let pinned = [
            pin(at(2, 30), at(5, 0), Some("a")),
            pin(at(4, 0), at(6, 0), Some("b")),
            pin(at(4, 0), at(6, 0), Some("a")),
            // Inside a window of every model: nothing of it goes.
            pin(at(8, 0), at(10, 0), None),
            pin(at(9, 0), at(11, 0), Some("c")),
            pin(at(19, 0), at(21, 0), Some("c")),
        ];
        assert_eq!(
            expirable_ranges(before, &pinned, 3600),
            [
                range(None, at(2, 0), &[]),
                range(Some(at(2, 0)), at(4, 0), &["a"]),
                range(Some(at(4, 0)), at(6, 0), &["a", "b"]),
                range(Some(at(6, 0)), at(8, 0), &[]),
                range(Some(at(10, 0)), at(11, 0), &["c"]),
                range(Some(at(11, 0)), at(19, 0), &[]),
                range(Some(at(19, 0)), before, &["c"]),
            ]
        );
    }
}
