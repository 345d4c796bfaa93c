//! Reading the monitor's figures: per-window metrics and totals from rollups, data drift against
//! a baseline, accuracy from late labels. Shared by the gRPC API, the dashboard and the alarms.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use prost::Message;
use vigil_drift::{DatasetDrift, DriftConfig, DriftResult, Histogram, NumericFeature};
use vigil_proto::vigil::v1::{RollupWindow, Sketch, Variant};
use vigil_speech::text;
use vigil_store::MonitorStore;
use vigil_store::monitoring::{OutcomeQuery, RollupQuery};

use crate::catalog::{Catalog, LiveCatalog, ReferenceFeature};
use crate::config::MonitorConfig;
use crate::rollup::{merge_windows, window_start};
use crate::sketch;

/// Most windows a chart asks for when it lets the monitor pick the resolution.
pub const MAX_CHART_WINDOWS: i64 = 400;
/// Most windows one read returns when the caller picks the resolution.
pub const MAX_WINDOWS_PER_READ: i64 = 10_000;
/// Bins of the shared histogram when the baseline is a window rather than a training reference.
pub const WINDOW_BASELINE_BINS: usize = 20;

/// Errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NoData(String),
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
}

/// Which predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub model: String,
    pub version: Option<String>,
    /// One variant's; None: every variant, but for a scope naming no version either (the
    /// model's figures) what it answered, its shadows' copies left out: they are not more
    /// requests, and carry no labels.
    pub variant: Option<i16>,
}

impl Scope {
    /// The outcome counts of this scope's predictions in [since, until), by window of
    /// `resolution_s`.
    pub fn outcomes(&self, since: DateTime<Utc>, until: DateTime<Utc>, resolution_s: u32) -> OutcomeQuery {
        OutcomeQuery {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            variant: self.variant,
            since,
            until,
            resolution_s,
            events_before: None,
        }
    }
}

/// Whether a group of labelled predictions answered right: a class equal to the label, or, for
/// a model that answers in text, a transcript equal to it once both are normalised (case and
/// punctuation aside), as word error rates compare them.
pub(crate) fn answered_right(group: &vigil_store::monitoring::LabeledCount) -> bool {
    if group.text_output {
        text::normalise(&group.predicted) == text::normalise(&group.actual)
    } else {
        group.predicted == group.actual
    }
}

/// A window start from the store's seconds since the epoch.
fn from_seconds(window_s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(window_s, 0).unwrap_or_default()
}

/// A window's start and its merged rollup.
pub type Window = (DateTime<Utc>, RollupWindow);

/// What drift was measured against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Baseline {
    /// The training reference shipped with the model.
    Training,
    /// Predictions logged in [since, until).
    Window(DateTime<Utc>, DateTime<Utc>),
}

/// One feature's (or the score's) drift test and the two distributions it compared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureDrift {
    pub feature: String,
    #[serde(flatten)]
    pub result: DriftResult,
    pub edges: Vec<f64>,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
    pub current_count: u64,
}

/// Data drift of one model over one window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriftReport {
    pub baseline: String,
    pub features: Vec<FeatureDrift>,
    pub prediction: Option<FeatureDrift>,
    pub dataset: DatasetDrift,
}

/// Accuracy of one window from labeled predictions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccuracyWindow {
    pub start: DateTime<Utc>,
    pub labeled: u64,
    pub accuracy: f64,
    /// None when nothing was predicted (precision) or labeled (recall) positive.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// The counts behind precision and recall (the model's last label is the positive class),
    /// so that windows are merged by their counts rather than by averaging their ratios.
    pub true_positives: u64,
    pub predicted_positives: u64,
    pub actual_positives: u64,
    pub label_lag_s: f64,
    /// Text answers (transcripts): words in their labels, and word errors (substitutions,
    /// deletions, insertions) against them after normalisation. Accuracy of a text answer is
    /// an exact match after normalisation.
    pub reference_words: u64,
    pub word_errors: u64,
}

impl AccuracyWindow {
    /// Word errors over reference words; None when no text answer was labelled.
    pub fn word_error_rate(&self) -> Option<f64> {
        (self.reference_words > 0).then(|| self.word_errors as f64 / self.reference_words as f64)
    }
}

/// Agreement of one shadow version with the primary over one window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgreementWindow {
    pub start: DateTime<Utc>,
    pub shadow_version: String,
    /// Shadow answers paired with a primary answer to the same item.
    pub compared: u64,
    /// How far those agreed, summed over them: 1 for an answer with the primary's label, 0
    /// otherwise; for a transcript, 1 − its word error rate against the primary's (at least 0),
    /// so one word wrong in ten agrees 0.9, not 0.
    pub agreed: f64,
    /// Of those, shadow runs that failed (counted as disagreement).
    pub shadow_failed: u64,
    /// Of those, items with a ground-truth label (given to the primary's prediction) ...
    pub labeled: u64,
    /// ... and of those, the shadow's answers equal to it.
    pub shadow_correct: u64,
}

/// Reviewers' agreement with one version of the model, in one variant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewAgreement {
    /// `primary`, `canary`, `shadow`.
    pub variant: String,
    pub model_version: String,
    /// Decisions on items the model had answered.
    pub compared: u64,
    /// Of those, decisions equal to the model's label.
    pub agreed: u64,
}

/// The human review queue of one model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewSummary {
    pub open: i64,
    pub claimed: i64,
    pub decided: i64,
    /// Age of the oldest open item, in seconds.
    pub oldest_open_age_s: Option<f64>,
    /// Over the decisions made in the range.
    pub agreement: Vec<ReviewAgreement>,
    /// How the reviewers agree with each other, the model and their panels, over the range.
    pub panel: crate::panel::PanelAgreement,
}

/// The short name of a `vigil.v1.Variant` value (`primary`, `canary`, `shadow`).
pub fn variant_name(variant: i16) -> String {
    vigil_proto::vigil::v1::Variant::try_from(i32::from(variant))
        .map(|v| v.as_str_name().trim_start_matches("VARIANT_").to_lowercase())
        .unwrap_or_else(|_| variant.to_string())
}

/// The monitor's read side over a store.
#[derive(Clone)]
pub struct Views<S> {
    pub store: S,
    /// The models' labels and drift references (`catalog.current()`).
    pub catalog: Arc<LiveCatalog>,
    pub config: Arc<MonitorConfig>,
}

impl<S: MonitorStore> Views<S> {
    /// Views over a fixed catalog.
    pub fn new(store: S, catalog: Arc<Catalog>, config: Arc<MonitorConfig>) -> Self {
        Self::following(store, Arc::new(catalog.into()), config)
    }

    /// Views over a catalog that follows the model repository.
    pub fn following(store: S, catalog: Arc<LiveCatalog>, config: Arc<MonitorConfig>) -> Self {
        Self { store, catalog, config }
    }

    fn resolutions(&self) -> &[u32] {
        &self.config.rollups.resolutions
    }

    /// The finest stored resolution, in seconds.
    pub fn finest(&self) -> u32 {
        self.resolutions().iter().copied().min().unwrap_or(60)
    }

    /// `[since, until)` widened to whole windows of the finest resolution: the range
    /// [`Views::total`] counts, so that a count read from the raw rows over it (labels, feedback)
    /// has the same requests as its denominator.
    pub fn aligned(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let finest = self.finest();
        (window_start(since, finest), ceil_to(until, finest))
    }

    /// The resolution to read: `requested` if stored, else the finest giving at most `max_windows`.
    pub fn resolution(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        requested: u32,
        max_windows: i64,
    ) -> Result<u32, ViewError> {
        let stored = self.resolutions();
        let range = (until - since).num_seconds().max(1);
        if requested != 0 {
            let windows = range / i64::from(requested);
            return if !stored.contains(&requested) {
                Err(ViewError::InvalidArgument(format!(
                    "resolution_seconds {requested} is not stored; use one of {stored:?} or 0"
                )))
            } else if windows > MAX_WINDOWS_PER_READ {
                Err(ViewError::InvalidArgument(format!(
                    "the range holds {windows} windows of {requested} s, more than {MAX_WINDOWS_PER_READ}; \
                     use a coarser resolution_seconds or 0"
                )))
            } else {
                Ok(requested)
            };
        }
        let chosen = stored
            .iter()
            .copied()
            .find(|r| range / i64::from(*r) <= max_windows)
            .unwrap_or_else(|| stored.iter().copied().max().unwrap_or(60));
        let windows = range / i64::from(chosen);
        if windows > MAX_WINDOWS_PER_READ {
            return Err(ViewError::InvalidArgument(format!(
                "the range ({since} to {until}) holds {windows} windows of the coarsest resolution stored \
                 ({chosen} s), more than {MAX_WINDOWS_PER_READ}: narrow since and until"
            )));
        }
        Ok(chosen)
    }

    /// Merged rollups per window of `resolution_s` in [since, until) (the window holding `since`
    /// included), across the versions and variants the scope allows.
    pub async fn windows(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        resolution_s: u32,
    ) -> Result<Vec<Window>, ViewError> {
        if since >= until {
            return Err(ViewError::InvalidArgument(format!("since {since} is not before until {until}")));
        }
        let q = RollupQuery {
            model_name: scope.model.clone(),
            model_version: scope.version.clone(),
            variant: scope.variant,
            resolution_s: resolution_s as i32,
            since: window_start(since, resolution_s),
            until,
        };
        let mut merged: BTreeMap<DateTime<Utc>, RollupWindow> = BTreeMap::new();
        let shadow = Variant::Shadow as i16;
        for r in self.store.read_rollups(&q).await? {
            if scope.variant.is_none() && scope.version.is_none() && r.key.variant == shadow {
                continue;
            }
            match RollupWindow::decode(r.body.as_slice()) {
                Ok(w) => merge_windows(merged.entry(r.key.window_start).or_default(), &w),
                Err(e) => {
                    tracing::error!(error = %e, window = %r.key.window_start, "skipping a rollup that does not decode")
                }
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Everything in the whole windows of the finest resolution that start at or after `since`,
    /// up to the one holding `until`: nothing from before `since` (a rollout step's traffic is
    /// its own, not the step's before it). Empty when no such window has started.
    pub async fn total_since(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RollupWindow, ViewError> {
        let from = self.counted_from(since);
        if from >= until {
            return Ok(RollupWindow::default());
        }
        self.total(scope, from, until).await
    }

    /// Where [`Views::total_since`] starts counting for `since`: the first whole window of the
    /// finest resolution at or after it. Counts divided by such a total start here too.
    pub fn counted_from(&self, since: DateTime<Utc>) -> DateTime<Utc> {
        ceil_to(since, self.resolutions().iter().copied().min().unwrap_or(1))
    }

    /// Everything in [since, until) merged into one window, in whole windows of the finest
    /// resolution: from the one holding `since` to the one holding `until`.
    /// The range is covered with the coarsest aligned windows first and finer ones at its edges,
    /// so a day costs a few dozen rollups rather than one per minute.
    pub async fn total(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RollupWindow, ViewError> {
        if since >= until {
            return Err(ViewError::InvalidArgument(format!("since {since} is not before until {until}")));
        }
        let mut levels = self.resolutions().to_vec();
        levels.sort_unstable();
        let mut total = RollupWindow::default();
        let mut todo = vec![(window_start(since, levels[0]), until, levels.len() - 1)];
        while let Some((a, b, level)) = todo.pop() {
            let r = levels[level];
            // The aligned blocks of width r inside [a, b); at the finest level, every window from a.
            let (lo, hi) = if level == 0 { (a, b) } else { (ceil_to(a, r), window_start(b, r)) };
            if lo >= hi {
                todo.push((a, b, level - 1));
                continue;
            }
            for (_, w) in self.windows(scope, lo, hi, r).await? {
                merge_windows(&mut total, &w);
            }
            if level > 0 {
                if a < lo {
                    todo.push((a, lo, level - 1));
                }
                if hi < b {
                    todo.push((hi, b, level - 1));
                }
            }
        }
        Ok(total)
    }

    /// Data drift of [since, until) against `baseline`, per feature and on the score.
    pub async fn drift(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        baseline: &Baseline,
    ) -> Result<DriftReport, ViewError> {
        let current = self.total(scope, since, until).await?;
        if current.count == 0 {
            return Err(ViewError::NoData(format!("no predictions of {} between {since} and {until}", scope.model)));
        }
        let cfg = self.config.drift.for_model(&scope.model).clone();
        let catalog = self.catalog.current();
        let (label, pairs) = match baseline {
            Baseline::Training => {
                // All versions' traffic is compared with the reference of the version that
                // serves it (the deployment's primary), not the newest one in the repository
                // (a retrained candidate, or one rolled back).
                let info = match &scope.version {
                    Some(version) => catalog.get(&scope.model, Some(version)),
                    None => {
                        let deployments = self.store.deployments().await?;
                        let serving = deployments.into_iter().find(|d| d.model_name == scope.model);
                        serving
                            .and_then(|d| catalog.get(&scope.model, Some(&d.primary_version)))
                            .or_else(|| catalog.get(&scope.model, None))
                    }
                };
                let Some(reference) = info.and_then(|m| m.reference.as_ref()) else {
                    return Err(ViewError::NoData(format!(
                        "model {} has no reference.json in the model repository; give a baseline window",
                        scope.model
                    )));
                };
                let version = info.map(|m| m.version.as_str()).unwrap_or("?");
                let mut pairs: Vec<(String, Cow<'_, ReferenceFeature>, Option<&Sketch>)> = reference
                    .features
                    .iter()
                    .map(|(name, r)| {
                        (name.clone(), Cow::Borrowed(r), current.features.get(name).and_then(|f| f.sketch.as_ref()))
                    })
                    .collect();
                if let Some(r) = &reference.score {
                    pairs.push(("score".into(), Cow::Borrowed(r), current.score.as_ref()));
                }
                (format!("training reference of version {version} (n={})", reference.n), pairs)
            }
            Baseline::Window(b_since, b_until) => {
                let base = self.total(scope, *b_since, *b_until).await?;
                if base.count == 0 {
                    return Err(ViewError::NoData(format!(
                        "no predictions in the baseline window {b_since} .. {b_until}"
                    )));
                }
                let mut pairs = Vec::new();
                for (name, f) in &base.features {
                    if let Some(s) = f.sketch.as_ref() {
                        let cur = current.features.get(name).and_then(|f| f.sketch.as_ref());
                        if let Some(r) = window_reference(s, cur) {
                            pairs.push((name.clone(), Cow::Owned(r), cur));
                        }
                    }
                }
                if let Some(r) = base.score.as_ref().and_then(|s| window_reference(s, current.score.as_ref())) {
                    pairs.push(("score".into(), Cow::Owned(r), current.score.as_ref()));
                }
                (format!("predictions from {b_since} to {b_until} (n={})", base.count), pairs)
            }
        };
        let mut features = Vec::new();
        let mut prediction = None;
        for (name, reference, cur) in pairs {
            let Some(cur) = cur else { continue };
            let Some(result) = test(&name, &reference, cur, &cfg) else { continue };
            if name == "score" {
                prediction = Some(result);
            } else {
                features.push(result);
            }
        }
        let results: Vec<DriftResult> = features.iter().map(|f| f.result.clone()).collect();
        let dataset = vigil_drift::dataset_drift(&results, &cfg);
        Ok(DriftReport { baseline: label, features, prediction, dataset })
    }

    /// Accuracy, precision and recall per window from labels, and the labeled share of traffic.
    pub async fn accuracy(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        resolution_s: u32,
    ) -> Result<(Vec<AccuracyWindow>, f64), ViewError> {
        // Coverage divides the items labelled by the requests rolled up: both over whole windows.
        let (since, until) = self.aligned(since, until);
        let labeled = self.store.labeled_counts(&scope.outcomes(since, until, resolution_s)).await?;
        let positive =
            self.catalog.current().get(&scope.model, scope.version.as_deref()).and_then(|m| m.labels.last().cloned());
        #[derive(Default)]
        struct Counts {
            n: u64,
            correct: u64,
            tp: u64,
            predicted_pos: u64,
            actual_pos: u64,
            lag: f64,
            words: u64,
            word_errors: u64,
        }
        let mut per: BTreeMap<DateTime<Utc>, Counts> = BTreeMap::new();
        let mut all_labeled = 0;
        for group in &labeled {
            let n = u64::try_from(group.count).unwrap_or(0);
            all_labeled += n;
            let c = per.entry(from_seconds(group.window_s)).or_default();
            c.n += n;
            c.lag += group.lag_s;
            if group.text_output {
                let (said, heard) = (text::normalise(&group.actual), text::normalise(&group.predicted));
                let said: Vec<&str> = said.split_whitespace().collect();
                let heard: Vec<&str> = heard.split_whitespace().collect();
                c.words += n * said.len() as u64;
                c.word_errors += n * text::word_errors(&said, &heard) as u64;
                c.correct += n * u64::from(said == heard);
                continue;
            }
            let pos = |s: &str| positive.as_deref() == Some(s);
            c.correct += n * u64::from(answered_right(group));
            c.predicted_pos += n * u64::from(pos(&group.predicted));
            c.actual_pos += n * u64::from(pos(&group.actual));
            c.tp += n * u64::from(pos(&group.predicted) && pos(&group.actual));
        }
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let windows = per
            .into_iter()
            .map(|(start, c)| AccuracyWindow {
                start,
                labeled: c.n,
                accuracy: c.correct as f64 / c.n as f64,
                precision: ratio(c.tp, c.predicted_pos),
                recall: ratio(c.tp, c.actual_pos),
                true_positives: c.tp,
                predicted_positives: c.predicted_pos,
                actual_positives: c.actual_pos,
                label_lag_s: c.lag / c.n as f64,
                reference_words: c.words,
                word_errors: c.word_errors,
            })
            .collect();
        let total = self.total(scope, since, until).await?.count;
        let coverage = if total > 0 { all_labeled as f64 / total as f64 } else { 0.0 };
        Ok((windows, coverage))
    }

    /// Agreement of each shadow version with the primary, by window of `resolution_s` (the
    /// scope's version, when given, selects the shadow version).
    pub async fn shadow_agreement(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        resolution_s: u32,
    ) -> Result<Vec<AgreementWindow>, ViewError> {
        let counts = self.store.shadow_counts(&scope.outcomes(since, until, resolution_s)).await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let mut windows: BTreeMap<(i64, String), AgreementWindow> = BTreeMap::new();
        for c in counts {
            let w = windows.entry((c.window_s, c.shadow_version.clone())).or_insert_with(|| AgreementWindow {
                start: from_seconds(c.window_s),
                shadow_version: c.shadow_version.clone(),
                compared: 0,
                agreed: 0.0,
                shadow_failed: 0,
                labeled: 0,
                shadow_correct: 0,
            });
            let (answered, labeled) =
                (count(c.compared) - count(c.shadow_failed).min(count(c.compared)), count(c.labeled));
            let (agreed, correct) = match (&c.shadow_text, &c.primary_text) {
                // Transcripts agree as far as their words do, as a word error rate compares
                // them (case and punctuation aside), the primary's taken as the reference.
                (Some(shadow_text), Some(primary)) => {
                    let shadow = text::normalise(shadow_text);
                    let closeness = (1.0 - text::word_error_rate(primary, shadow_text)).max(0.0);
                    let agreed = answered as f64 * closeness;
                    let right = c.actual_text.as_deref().is_some_and(|actual| shadow == text::normalise(actual));
                    // The pairs of one row share their label: labelled ones all, or none.
                    (agreed, if right { labeled.min(answered) } else { 0 })
                }
                _ => (count(c.agreed) as f64, count(c.shadow_correct)),
            };
            w.compared += count(c.compared);
            w.agreed += agreed;
            w.shadow_failed += count(c.shadow_failed);
            w.labeled += labeled;
            w.shadow_correct += correct;
        }
        Ok(windows.into_values().collect())
    }

    /// The review queue of `model` now, and reviewers' agreement with the model per variant and
    /// version over the decisions made in [since, until).
    pub async fn review_summary(
        &self,
        model: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<ReviewSummary, ViewError> {
        let now = Utc::now();
        let stats = self.store.review_stats(Some(model), now).await?;
        let mut agreement: BTreeMap<(i16, String), ReviewAgreement> = BTreeMap::new();
        for r in self.store.reviewed_predictions(model, since, until).await? {
            if r.predicted.is_empty() {
                continue; // the model was not consulted (policy human_only)
            }
            let a = agreement.entry((r.variant, r.model_version.clone())).or_insert_with(|| ReviewAgreement {
                variant: variant_name(r.variant),
                model_version: r.model_version.clone(),
                compared: 0,
                agreed: 0,
            });
            a.compared += 1;
            a.agreed += u64::from(r.predicted == r.decision);
        }
        Ok(ReviewSummary {
            open: stats.open,
            claimed: stats.claimed,
            decided: stats.decided,
            oldest_open_age_s: stats.oldest_open.map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
            agreement: agreement.into_values().collect(),
            panel: crate::panel::panel_agreement(&self.store.reviewer_decisions(model, since, until).await?),
        })
    }

    /// Feedback events by window of `resolution_s` and kind, on the scope's predictions.
    pub async fn feedback(
        &self,
        scope: &Scope,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        resolution_s: u32,
    ) -> Result<BTreeMap<DateTime<Utc>, BTreeMap<String, u64>>, ViewError> {
        let counts = self.store.feedback_counts(&scope.outcomes(since, until, resolution_s)).await?;
        let mut out: BTreeMap<DateTime<Utc>, BTreeMap<String, u64>> = BTreeMap::new();
        for c in counts {
            *out.entry(from_seconds(c.window_s)).or_default().entry(c.kind).or_default() +=
                u64::try_from(c.count).unwrap_or(0);
        }
        Ok(out)
    }

    /// The models to show: those with rollups within the longest range the dashboard shows,
    /// then those in the repository.
    pub async fn models(&self) -> Result<BTreeMap<String, Vec<String>>, ViewError> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // From the coarsest resolution configured, over the longest range the dashboard shows
        // and the window that straddles its start.
        let coarsest = self.resolutions().iter().copied().max().unwrap_or(60);
        let since = Utc::now() - ChronoDuration::seconds(crate::http::MAX_RANGE_SECONDS + i64::from(coarsest));
        for (m, v) in self.store.rollup_models(coarsest, since).await? {
            out.entry(m).or_default().push(v);
        }
        for m in self.catalog.current().models() {
            let versions = out.entry(m.name.clone()).or_default();
            if !versions.contains(&m.version) {
                versions.push(m.version.clone());
            }
        }
        Ok(out)
    }
}

/// The first multiple of `resolution_s` at or after `t`.
fn ceil_to(t: DateTime<Utc>, resolution_s: u32) -> DateTime<Utc> {
    let start = window_start(t, resolution_s);
    if start == t { t } else { start + ChronoDuration::seconds(i64::from(resolution_s)) }
}

/// Default range when a request leaves it open: the last hour.
pub fn default_range(since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> (DateTime<Utc>, DateTime<Utc>) {
    let until = until.unwrap_or_else(Utc::now);
    let since =
        since.unwrap_or_else(|| until.checked_sub_signed(ChronoDuration::hours(1)).unwrap_or(DateTime::<Utc>::MIN_UTC));
    (since, until)
}

/// Tests one feature: distances between the two distributions, PSI and the display on the
/// reference's bins.
fn test(name: &str, reference: &ReferenceFeature, current: &Sketch, cfg: &DriftConfig) -> Option<FeatureDrift> {
    let counts = bin_sketch(&reference.histogram.edges, current);
    let distribution = sketch::distribution(current).ok()?;
    let feature = NumericFeature {
        bins: &reference.histogram,
        current_counts: &counts,
        reference: &reference.distribution,
        current: &distribution,
        reference_std: reference.std,
    };
    let result = vigil_drift::test_numeric(&feature, cfg).ok()?;
    let reference = &reference.histogram;
    let fractions = |c: &[f64]| {
        let t: f64 = c.iter().sum();
        c.iter().map(|v| if t > 0.0 { v / t } else { 0.0 }).collect::<Vec<f64>>()
    };
    Some(FeatureDrift {
        feature: name.to_string(),
        result,
        edges: reference.edges.clone(),
        reference: fractions(&reference.counts),
        current: fractions(&counts),
        current_count: sketch::count(current),
    })
}

/// Counts of a sketch's values per bin of `edges`: each bucket's count spread evenly over the
/// value range it stands for (clamped to the observed min and max), so a bucket that straddles
/// an edge splits rather than jumping whole to one side. The outer bins extend to infinity.
pub fn bin_sketch(edges: &[f64], s: &Sketch) -> Vec<f64> {
    let bins = edges.len().saturating_sub(1).max(1);
    let mut counts = vec![0.0; bins];
    for (lo, hi, c) in sketch::bucket_ranges(s) {
        let (first, last) = (vigil_drift::bin_index(edges, lo), vigil_drift::bin_index(edges, hi));
        if first == last || hi <= lo {
            counts[first] += c as f64;
            continue;
        }
        for (j, count) in counts.iter_mut().enumerate().take(last + 1).skip(first) {
            let bin_lo = if j == 0 { f64::NEG_INFINITY } else { edges[j] };
            let bin_hi = if j + 1 == bins { f64::INFINITY } else { edges[j + 1] };
            let overlap = hi.min(bin_hi) - lo.max(bin_lo);
            if overlap > 0.0 {
                *count += c as f64 * overlap / (hi - lo);
            }
        }
    }
    counts
}

/// A baseline histogram for window-vs-window drift: equal-width bins over both value ranges.
/// A window's sketch as the reference: its distribution, and even bins over both sides' range.
fn window_reference(baseline: &Sketch, current: Option<&Sketch>) -> Option<ReferenceFeature> {
    let distribution = sketch::distribution(baseline).ok()?;
    let histogram = window_histogram(baseline, current);
    Some(ReferenceFeature { std: distribution.std(), distribution, histogram })
}

fn window_histogram(baseline: &Sketch, current: Option<&Sketch>) -> Histogram {
    let (mut lo, mut hi) = (baseline.min, baseline.max);
    if let Some(c) = current.filter(|c| sketch::count(c) > 0) {
        lo = lo.min(c.min);
        hi = hi.max(c.max);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let step = (hi - lo) / WINDOW_BASELINE_BINS as f64;
    let edges: Vec<f64> = (0..=WINDOW_BASELINE_BINS).map(|i| lo + step * i as f64).collect();
    let counts = bin_sketch(&edges, baseline);
    Histogram { edges, counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_straddling_an_edge_is_split_and_nothing_is_lost() {
        let mut s = Sketch::default();
        for v in [9.99, 10.0, 10.01, 10.02, 3.0, 250.0] {
            sketch::add(&mut s, v);
        }
        let edges = [0.0, 5.0, 10.0, 20.0];
        let counts = bin_sketch(&edges, &s);
        assert!((counts.iter().sum::<f64>() - 6.0).abs() < 1e-9);
        assert!((counts[0] - 1.0).abs() < 1e-9, "{counts:?}");
        // The four values around the edge 10 land on both sides of it, and 250 in the last bin.
        assert!(counts[1] > 0.0 && counts[2] > 1.0, "{counts:?}");
        let single = bin_sketch(&edges, &{
            let mut one = Sketch::default();
            sketch::add(&mut one, 10.0);
            one
        });
        assert_eq!(single, vec![0.0, 0.0, 1.0], "a lone value sits exactly where it is");
    }
}
