//! Alarms: rules evaluated on a schedule, each alarm moving through inactive -> pending ->
//! firing -> resolved, every transition persisted with its history and, when it fires or
//! resolves, notified by webhook (see [`crate::notify`]) and logged.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use vigil_proto::vigil::v1::{Decision, Verdict};
use vigil_store::MonitorStore;
use vigil_store::monitoring::{AlertRow, LEASE_UNCONFIRMED_GRACE, LeaseState};

use crate::config::Rule;
use crate::sketch;
use crate::telemetry::MonitorMetrics;
use crate::views::{Baseline, DriftReport, Scope, ViewError, Views};

/// What a rule watches. Names in the config file:
/// `requests`, `throughput_rps`, `error_rate` (requests not answered, refused inputs included),
/// `invalid_input_rate` (requests refused for their input), `null_rate`, `latency_p50_ms`, `latency_p99_ms`,
/// `score_mean`, `verdict.<name>.rate`, `decision.<name>.rate`, `label.<name>.rate` (the share of
/// predictions with that output label, e.g. `label.unknown.rate`), `feedback.<kind>.rate` (events of
/// a kind per prediction, e.g. `redo_search`, `switch_to_typing`, `click`), `feature.<name>.mean`,
/// `feature.<name>.missing_rate` (names may hold dots: `feature.text.lang.eng.mean`),
/// `drift.<feature|score>` (the test statistic),
/// `drift.<feature|score>.detected` (1 or 0), `drift.dataset_share`, `accuracy`, `precision`,
/// `recall`, `label_coverage`, `word_error_rate` (models answering in text, against labels giving
/// what was said), `shadow.agreement` (the share of shadow answers with the primary's label; a
/// failed shadow run disagrees).
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    Requests,
    ThroughputRps,
    ErrorRate,
    InvalidInputRate,
    NullRate,
    LatencyP50Ms,
    LatencyP99Ms,
    ScoreMean,
    VerdictRate(i32),
    DecisionRate(i32),
    LabelRate(String),
    FeedbackRate(String),
    FeatureMean(String),
    FeatureMissingRate(String),
    DriftStatistic(String),
    DriftDetected(String),
    DatasetDriftShare,
    Accuracy,
    Precision,
    Recall,
    LabelCoverage,
    WordErrorRate,
    ShadowAgreement,
}

impl Metric {
    /// Whether the metric is computed from labels (which may come late: `label_delay`).
    pub fn needs_labels(&self) -> bool {
        matches!(self, Self::Accuracy | Self::Precision | Self::Recall | Self::LabelCoverage | Self::WordErrorRate)
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let m = match parts.as_slice() {
            ["requests"] => Self::Requests,
            ["throughput_rps"] => Self::ThroughputRps,
            ["error_rate"] => Self::ErrorRate,
            ["invalid_input_rate"] => Self::InvalidInputRate,
            ["null_rate"] => Self::NullRate,
            ["latency_p50_ms"] => Self::LatencyP50Ms,
            ["latency_p99_ms"] => Self::LatencyP99Ms,
            ["score_mean"] => Self::ScoreMean,
            ["accuracy"] => Self::Accuracy,
            ["precision"] => Self::Precision,
            ["recall"] => Self::Recall,
            ["label_coverage"] => Self::LabelCoverage,
            ["word_error_rate"] => Self::WordErrorRate,
            ["drift", "dataset_share"] => Self::DatasetDriftShare,
            ["shadow", "agreement"] => Self::ShadowAgreement,
            ["verdict", v, "rate"] => Self::VerdictRate(
                Verdict::from_str_name(&format!("VERDICT_{}", v.to_uppercase()))
                    .ok_or_else(|| format!("unknown verdict '{v}' in metric '{s}' (ok, defect)"))?
                    as i32,
            ),
            ["decision", d, "rate"] => Self::DecisionRate(
                Decision::from_str_name(&format!("DECISION_{}", d.to_uppercase()))
                    .ok_or_else(|| format!("unknown decision '{d}' in metric '{s}' (accept, reject, human_review)"))?
                    as i32,
            ),
            ["feedback", k, "rate"] => Self::FeedbackRate(k.to_string()),
            ["label", name @ .., "rate"] if !name.is_empty() => Self::LabelRate(name.join(".")),
            ["feature", name @ .., "mean"] if !name.is_empty() => Self::FeatureMean(name.join(".")),
            ["feature", name @ .., "missing_rate"] if !name.is_empty() => Self::FeatureMissingRate(name.join(".")),
            ["drift", f] => Self::DriftStatistic(f.to_string()),
            ["drift", f, "detected"] => Self::DriftDetected(f.to_string()),
            _ => {
                return Err(format!(
                    "unknown metric '{s}'; use requests, throughput_rps, error_rate, invalid_input_rate, null_rate, latency_p50_ms, \
                     latency_p99_ms, score_mean, verdict.<v>.rate, decision.<d>.rate, label.<l>.rate, \
                     feedback.<kind>.rate, \
                     feature.<f>.mean, \
                     feature.<f>.missing_rate, drift.<f>, drift.<f>.detected, drift.dataset_share, accuracy, \
                     precision, recall, label_coverage, word_error_rate or shadow.agreement"
                ));
            }
        };
        Ok(m)
    }
}

/// How a metric is compared with a threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparator {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl FromStr for Comparator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            _ => return Err(format!("unknown comparator '{s}'; use >, >=, <, <=, == or !=")),
        })
    }
}

impl Comparator {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Gt => value > threshold,
            Self::Ge => value >= threshold,
            Self::Lt => value < threshold,
            Self::Le => value <= threshold,
            Self::Eq => value == threshold,
            Self::Ne => value != threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
        }
    }
}

/// A rule's alarm for `model` before its first evaluation.
pub fn inactive(rule: &Rule, model: &str, now: DateTime<Utc>) -> AlertRow {
    AlertRow {
        alert_key: alert_key(&rule.name, model),
        rule: rule.name.clone(),
        model_name: model.to_string(),
        metric: rule.metric_name.clone(),
        severity: rule.severity.clone(),
        state: "inactive".into(),
        value: None,
        threshold: rule.threshold,
        since: now,
        message: String::new(),
    }
}

/// When each firing alarm's condition stopped holding, or its data stopped coming (two waits,
/// timed apart), by alert key: the evaluator's memory for `keep_firing_for` and for no data (a
/// restarted monitor, or one that takes the alerting lease again, starts the wait again).
/// The time clear before a gap is kept through it: on bursty traffic the clear stretches add up
/// (a gap counts toward neither wait), so such an alarm resolves.
#[derive(Debug, Default)]
pub struct ClearedSince(HashMap<String, Wait>);

/// One alarm's wait: since when (a clear wait's start moved back by the clear time banked before
/// gaps), in which gap, and the clear time banked.
#[derive(Debug, Clone, Copy)]
struct Wait {
    since: DateTime<Utc>,
    gap: Gap,
    banked_clear: chrono::Duration,
}

/// What an alarm's wait in [`ClearedSince`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// The condition does not hold.
    Clear,
    /// The metric has no data.
    NoData,
}

impl ClearedSince {
    /// The slot of one alarm, for [`transition`].
    pub fn slot<'a>(&'a mut self, alert_key: &'a str) -> Slot<'a> {
        Slot { map: &mut self.0, key: alert_key }
    }
}

/// One alarm's entry in [`ClearedSince`].
pub struct Slot<'a> {
    map: &'a mut HashMap<String, Wait>,
    key: &'a str,
}

impl Slot<'_> {
    /// Since when the alarm has been in `gap`: now, when it was in none or in the other; for
    /// `Clear`, moved back by the clear time before the gaps since the wait began.
    fn since(&mut self, gap: Gap, now: DateTime<Utc>) -> DateTime<Utc> {
        let zero = chrono::Duration::zero();
        let wait = self.map.entry(self.key.to_string()).or_insert(Wait { since: now, gap, banked_clear: zero });
        if wait.gap != gap {
            let banked_clear = match wait.gap {
                Gap::Clear => (now - wait.since).max(zero),
                Gap::NoData => wait.banked_clear,
            };
            let since = match gap {
                Gap::Clear => now - banked_clear,
                Gap::NoData => now,
            };
            *wait = Wait { since, gap, banked_clear };
        }
        wait.since
    }

    fn forget(&mut self) {
        self.map.remove(self.key);
    }
}

/// The next state of an alarm given whether its condition holds now. Returns the new row and
/// whether the change is a transition worth recording (`Some(notify)`). A firing alarm whose rule
/// has `keep_firing_for` resolves only once its condition has not held for that long, timed from
/// the round it first stopped holding (kept in `cleared`). No data (no traffic, no labels, a
/// stalled rollup) is not a recovery: a firing alarm keeps firing through a gap as long as its
/// window (or its `keep_firing_for`, if longer), timed in `cleared` too, and then resolves
/// saying it has no data (a canary that ended, a model retired); a pending one goes back to
/// inactive (its condition was not seen to hold for its duration).
pub fn transition(
    rule: &Rule,
    current: &AlertRow,
    value: Option<f64>,
    now: DateTime<Utc>,
    mut cleared: Slot<'_>,
) -> (AlertRow, Option<bool>) {
    let holds = value.is_some_and(|v| rule.comparator.holds(v, rule.threshold));
    let mut next = current.clone();
    next.value = value;
    // The rule as configured now (an operator may have changed its severity or threshold).
    (next.metric, next.severity, next.threshold) = (rule.metric_name.clone(), rule.severity.clone(), rule.threshold);
    let describe = |state: &str| match value {
        Some(v) => format!(
            "{} {} for {}: {} = {v:.4} ({} {})",
            rule.name,
            state,
            current.model_name,
            rule.metric_name,
            rule.comparator.symbol(),
            rule.threshold
        ),
        None => format!("{} {state} for {}: {} has no data", rule.name, current.model_name, rule.metric_name),
    };
    let held_for = |since: DateTime<Utc>| (now - since).to_std().unwrap_or(Duration::ZERO);
    if value.is_none() {
        let (state, notify) = match current.state.as_str() {
            "pending" => ("inactive", false),
            "firing" if held_for(cleared.since(Gap::NoData, now)) < rule.window.max(rule.keep_firing_for) => {
                return (next, None);
            }
            "firing" => ("resolved", true),
            _ => return (next, None),
        };
        cleared.forget();
        next.state = state.into();
        next.since = now;
        next.message = describe(state);
        return (next, Some(notify));
    }
    let still_kept = current.state == "firing"
        && !holds
        && !rule.keep_firing_for.is_zero()
        && held_for(cleared.since(Gap::Clear, now)) < rule.keep_firing_for;
    if !still_kept {
        cleared.forget();
    }
    let change = match (current.state.as_str(), holds) {
        ("firing", false) if still_kept => None,
        ("inactive" | "resolved", true) if rule.for_duration.is_zero() => Some(("firing", true)),
        ("inactive" | "resolved", true) => Some(("pending", false)),
        ("pending", true) if held_for(current.since) >= rule.for_duration => Some(("firing", true)),
        ("pending", false) => Some(("inactive", false)),
        ("firing", false) => Some(("resolved", true)),
        _ => None,
    };
    match change {
        Some((state, notify)) => {
            next.state = state.to_string();
            next.since = now;
            next.message = describe(state);
            (next, Some(notify))
        }
        None => (next, None),
    }
}

/// Computes a rule's metric for one model over the trailing window ending at `now`; None when
/// there is nothing to measure (no traffic, no labels).
pub async fn evaluate<S: MonitorStore>(
    views: &Views<S>,
    rule: &Rule,
    model: &str,
    now: DateTime<Utc>,
) -> Result<Option<f64>, ViewError> {
    evaluate_with(views, rule, model, now, &mut DriftReports::default()).await
}

/// Drift reports computed in one evaluation round, by model, window and baseline: several drift
/// rules on one model share one report (None: no data in the window).
#[derive(Default)]
pub struct DriftReports(HashMap<(String, Option<i16>, Duration, Baseline), Option<DriftReport>>);

async fn evaluate_with<S: MonitorStore>(
    views: &Views<S>,
    rule: &Rule,
    model: &str,
    now: DateTime<Utc>,
    reports: &mut DriftReports,
) -> Result<Option<f64>, ViewError> {
    let since = now - chrono::Duration::from_std(rule.window).unwrap_or(chrono::Duration::minutes(5));
    let scope = Scope { model: model.to_string(), version: None, variant: rule.variant };
    let rate = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    let metric = &rule.metric;
    let value = match metric {
        Metric::DriftStatistic(_) | Metric::DriftDetected(_) | Metric::DatasetDriftShare => {
            let baseline = match rule.baseline_offset.and_then(|d| chrono::Duration::from_std(d).ok()) {
                Some(offset) => Baseline::Window(since - offset, now - offset),
                None => rule.baseline.clone(),
            };
            let key = (model.to_string(), rule.variant, rule.window, baseline.clone());
            if !reports.0.contains_key(&key) {
                let report = match views.drift(&scope, since, now, &baseline).await {
                    Ok(r) => Some(r),
                    Err(ViewError::NoData(_)) => None,
                    Err(e) => return Err(e),
                };
                reports.0.insert(key.clone(), report);
            }
            let Some(report) = reports.0.get(&key).and_then(Option::as_ref) else { return Ok(None) };
            let find = |f: &str| {
                if f == "score" {
                    report.prediction.clone()
                } else {
                    report.features.iter().find(|d| d.feature == f).cloned()
                }
            };
            match metric {
                Metric::DriftStatistic(f) => find(f).map(|d| d.result.statistic),
                Metric::DriftDetected(f) => find(f).map(|d| if d.result.drifted { 1.0 } else { 0.0 }),
                _ => (report.dataset.total > 0).then_some(report.dataset.share),
            }
        }
        Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::LabelCoverage | Metric::WordErrorRate => {
            // Labels come late: the window judged is `label_delay` back.
            let delay = chrono::Duration::from_std(rule.label_delay).unwrap_or_default();
            let (since, now) = (since - delay, now - delay);
            let res = views.resolution(since, now, 0, 1)?;
            let (windows, coverage) = views.accuracy(&scope, since, now, res).await?;
            // Each ratio over the whole range from the windows' counts (their ratios weighted by
            // what each counted: items labelled, predicted positive, labelled positive).
            let sum = |f: &dyn Fn(&crate::views::AccuracyWindow) -> u64| windows.iter().map(f).sum::<u64>();
            let labeled = sum(&|w| w.labeled);
            let correct: f64 = windows.iter().map(|w| w.accuracy * w.labeled as f64).sum();
            let true_positives = sum(&|w| w.true_positives);
            match metric {
                Metric::Accuracy => (labeled > 0).then(|| correct / labeled as f64),
                Metric::Precision => rate(true_positives, sum(&|w| w.predicted_positives)),
                Metric::Recall => rate(true_positives, sum(&|w| w.actual_positives)),
                Metric::WordErrorRate => {
                    let words: u64 = windows.iter().map(|w| w.reference_words).sum();
                    (words > 0).then(|| windows.iter().map(|w| w.word_errors).sum::<u64>() as f64 / words as f64)
                }
                _ => (views.total(&scope, since, now).await?.count > 0).then_some(coverage),
            }
        }
        Metric::ShadowAgreement => {
            let res = views.resolution(since, now, 0, 1)?;
            let windows = views.shadow_agreement(&scope, since, now, res).await?;
            let compared: u64 = windows.iter().map(|w| w.compared).sum();
            let agreed: f64 = windows.iter().map(|w| w.agreed).sum();
            (compared > 0).then(|| agreed / compared as f64)
        }
        Metric::FeedbackRate(kind) => {
            // Events over the requests rolled up: both over whole windows.
            let (since, now) = views.aligned(since, now);
            let t = views.total(&scope, since, now).await?;
            if t.count == 0 {
                return Ok(None);
            }
            let res = views.resolution(since, now, 0, 1)?;
            let events: u64 = views.feedback(&scope, since, now, res).await?.values().filter_map(|k| k.get(kind)).sum();
            rate(events, t.count)
        }
        _ => {
            let t = views.total(&scope, since, now).await?;
            if t.count == 0 && *metric != Metric::Requests && *metric != Metric::ThroughputRps {
                return Ok(None);
            }
            match metric {
                Metric::Requests => Some(t.count as f64),
                // Over the whole windows read: from the start of the finest one holding `since`.
                Metric::ThroughputRps => {
                    let span = (now - crate::rollup::window_start(since, views.finest())).num_milliseconds();
                    Some(t.count as f64 * 1000.0 / span.max(1) as f64)
                }
                Metric::ErrorRate => rate(t.errors, t.count),
                Metric::InvalidInputRate => rate(t.invalid_inputs, t.count),
                Metric::NullRate => rate(t.nulls, t.count),
                Metric::LatencyP50Ms => t.latency_ms.as_ref().and_then(|s| sketch::quantile(s, 0.5)),
                Metric::LatencyP99Ms => t.latency_ms.as_ref().and_then(|s| sketch::quantile(s, 0.99)),
                Metric::ScoreMean => t.score.as_ref().and_then(sketch::mean),
                Metric::VerdictRate(v) => rate(t.verdicts.get(v).copied().unwrap_or(0), t.count),
                Metric::DecisionRate(d) => rate(t.decisions.get(d).copied().unwrap_or(0), t.count),
                Metric::LabelRate(l) => rate(t.labels.get(l).copied().unwrap_or(0), t.count),
                Metric::FeatureMean(f) => t.features.get(f).and_then(|f| (f.count > 0).then(|| f.sum / f.count as f64)),
                Metric::FeatureMissingRate(f) => t.features.get(f).and_then(|f| rate(f.missing, f.count + f.missing)),
                _ => None,
            }
        }
    };
    Ok(value)
}

fn alert_key(rule: &str, model: &str) -> String {
    format!("{rule}/{model}")
}

/// What alarm evaluation carries from one round to the next: the waits of [`ClearedSince`] and,
/// for rounds with a time budget, where the last round stopped.
#[derive(Debug, Default)]
pub struct Rounds {
    cleared: ClearedSince,
    /// How long a round may go on starting evaluations; None: every one, every round.
    budget: Option<Duration>,
    /// The rule and model the next round starts with: its alarm key, and its place in the last
    /// round's order (where it went if its model left).
    next: Option<(String, usize)>,
}

impl Rounds {
    /// Rounds that start no evaluation once `budget` has passed (after their first): the next
    /// round starts where the last one stopped, so a configuration too large for one round is
    /// evaluated over several, every rule and model in turn.
    pub fn with_budget(budget: Duration) -> Self {
        Self { budget: Some(budget), ..Self::default() }
    }
}

/// Evaluates every rule for every model in its scope once (or as many as the round's budget
/// allows, from where the last round stopped), persisting transitions.
pub async fn evaluate_all<S: MonitorStore>(
    views: &Views<S>,
    rules: &[Rule],
    now: DateTime<Utc>,
    metrics: &MonitorMetrics,
    rounds: &mut Rounds,
) -> Result<(), ViewError> {
    let started = Instant::now();
    let stored = views.store.load_alerts().await?;
    let models: Vec<String> = views.models().await?.into_keys().collect();
    // The capture action follows the alarm's state every round, not only its changes: a raise
    // that failed after its alarm's change was saved (or a rule given the action while firing)
    // is made the next round.
    let boosts = views.store.capture_boosts().await?;
    let mut reports = DriftReports::default();
    let targets: Vec<(&Rule, &str)> = rules
        .iter()
        .flat_map(|rule| match &rule.model {
            Some(m) => vec![(rule, m.as_str())],
            None => models.iter().map(|m| (rule, m.as_str())).collect(),
        })
        .collect();
    // By key: a model appearing or leaving before it shifts the places of the rest.
    let start = match &rounds.next {
        Some((key, place)) => {
            targets.iter().position(|(rule, model)| alert_key(&rule.name, model) == *key).unwrap_or(*place)
        }
        None => 0,
    } % targets.len().max(1);
    let key_at = |at: usize| (alert_key(&targets[at].0.name, targets[at].1), at);
    for done in 0..targets.len() {
        let at = (start + done) % targets.len();
        if done > 0 && rounds.budget.is_some_and(|budget| started.elapsed() >= budget) {
            tracing::warn!(
                evaluated = done,
                of = targets.len(),
                "alarm round stopped at its budget of {:?}; the next round goes on from there (fewer rules or \
                 models per monitor, or a longer evaluate_every, would let one round finish)",
                rounds.budget.unwrap_or_default()
            );
            rounds.next = Some(key_at(at));
            break;
        }
        // A round cut or failed at this target goes on after it next time: one evaluation that
        // always fails or hangs does not hold back the rest.
        rounds.next = Some(key_at((at + 1) % targets.len()));
        let (rule, model) = (targets[at].0, targets[at].1.to_string());
        let key = alert_key(&rule.name, &model);
        let found = stored.iter().find(|a| a.alert_key == key);
        let was_stored = found.is_some();
        let current = found.cloned().unwrap_or_else(|| inactive(rule, &model, now));
        let value = match evaluate_with(views, rule, &model, now, &mut reports).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(rule = %rule.name, model = %model, error = %e, "cannot evaluate alarm rule");
                continue;
            }
        };
        let (next, change) = transition(rule, &current, value, now, rounds.cleared.slot(&key));
        let rule_changed =
            (&current.metric, &current.severity, current.threshold) != (&next.metric, &next.severity, next.threshold);
        if change.is_none() && was_stored && rule_changed {
            // Shown with the rule's new severity and threshold from now on; no one is notified.
            tracing::info!(alert = %key, severity = %next.severity, threshold = next.threshold, "alarm rule changed");
            views.store.save_alert(&next, false).await?;
        }
        if let Some(notify) = change {
            match next.state.as_str() {
                "firing" => {
                    tracing::warn!(alert = %key, severity = %rule.severity, "ALARM FIRING: {}", next.message)
                }
                "resolved" => tracing::info!(alert = %key, "alarm resolved: {}", next.message),
                _ => tracing::info!(alert = %key, state = %next.state, "{}", next.message),
            }
            views.store.save_alert(&next, notify && views.config.alerting.webhook_url.is_some()).await?;
        }
        let boosted = boosts.iter().find(|b| b.model_name == model && b.rule == rule.name).map(|b| b.rate);
        let wanted = rule.capture_rate.filter(|_| next.state == "firing");
        if boosted != wanted {
            raise_or_end_capture(views, rule, &model, wanted, now).await?;
        }
        if rule.retrain && next.state == "firing" {
            use crate::retrain::trigger::{Considered, consider};
            match consider(&views.store, &views.config.retraining, rule, &model, now).await? {
                Considered::Queued(job) => tracing::warn!(
                    alert = %key, job = %job.job_id, "{} fires: retraining {model} (job {})", rule.name, job.job_id
                ),
                Considered::Waiting(why) => {
                    tracing::debug!(alert = %key, "{} fires; no retraining yet: {why}", rule.name)
                }
            }
        }
    }
    // Alarms whose rule left the configuration end rather than staying as they were, and so do
    // those of a model the rule no longer covers (its `model` changed, or the model is gone).
    let covers = |r: &Rule, model: &str| r.model.as_deref().map_or(models.iter().any(|m| m == model), |m| m == model);
    let configured = |a: &AlertRow| {
        rules.iter().any(|r| r.name == a.rule && covers(r, &a.model_name))
            || a.rule.starts_with(crate::rollout::ALERT_PREFIX)
    };
    for mut old in stored.into_iter().filter(|a| !configured(a)) {
        let ended = match old.state.as_str() {
            "firing" => "resolved",
            "pending" => "inactive",
            _ => continue,
        };
        views.store.end_capture_boost(&old.model_name, &old.rule).await?;
        old.state = ended.into();
        old.since = now;
        old.message = format!("{} {ended}: the rule is no longer configured for {}", old.rule, old.model_name);
        tracing::info!(alert = %old.alert_key, "{}", old.message);
        views.store.save_alert(&old, ended == "resolved" && views.config.alerting.webhook_url.is_some()).await?;
    }
    let states = views.store.load_alerts().await?;
    metrics.set_alert_states(&states);
    metrics.alert_evaluations.inc();
    Ok(())
}

/// A rule with the `capture` action raises its model's capture rate to `wanted` while it fires,
/// and ends the raise (`None`) when it no longer does.
async fn raise_or_end_capture<S: MonitorStore>(
    views: &Views<S>,
    rule: &Rule,
    model: &str,
    wanted: Option<f64>,
    now: DateTime<Utc>,
) -> Result<(), ViewError> {
    if let Some(rate) = wanted {
        let boost = vigil_store::CaptureBoost { model_name: model.into(), rule: rule.name.clone(), rate, since: now };
        views.store.raise_capture(&boost).await?;
        tracing::warn!(rule = %rule.name, model, rate, "capturing at least {rate} of {model}'s inputs while the alarm fires");
    } else if views.store.end_capture_boost(model, &rule.name).await? {
        tracing::info!(rule = %rule.name, model, "capture back to the servers' own policy");
    }
    Ok(())
}

/// The lease that makes one monitor per database the one that evaluates alarms and notifies.
pub const ALERTING_LEASE: &str = "monitor.alerting";

/// The longest round of alarm evaluation: well within the time the database keeps a silent
/// holder's lease (`LEASE_SILENCE_RELEASE`), so a leader stuck on a dead connection stops
/// acting as one before another can lead.
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a round goes on starting evaluations ([`Rounds::with_budget`]): half its bound, so
/// that a large configuration is evaluated over several rounds instead of being cut at the same
/// rule every round.
const ROUND_BUDGET: Duration = Duration::from_secs(30);

/// Evaluates the rules every `every` until `shutdown` fires, while this monitor holds the
/// alerting lease; `leading` tells the notifier whether it does. A monitor without the lease
/// stands by and takes over when the holder goes away.
pub async fn run<S: MonitorStore>(
    views: Views<S>,
    rules: Vec<Rule>,
    every: Duration,
    metrics: MonitorMetrics,
    leading: tokio::sync::watch::Sender<bool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut lease: Option<vigil_store::monitoring::Lease> = None;
    // Since when the lease has gone unconfirmed, check after check.
    let mut unconfirmed_since: Option<Instant> = None;
    let mut standing_by = false;
    let mut rounds = Rounds::with_budget(ROUND_BUDGET);
    loop {
        // A lease the database does not confirm now (no answer in time) is kept for a while, but
        // its rounds are not acted on: dropping it would hand the lead to another monitor after
        // one stall.
        let mut unconfirmed = false;
        if let Some(current) = lease.as_mut() {
            match current.state().await {
                LeaseState::Held => unconfirmed_since = None,
                LeaseState::Unconfirmed
                    if unconfirmed_since.get_or_insert_with(Instant::now).elapsed() < LEASE_UNCONFIRMED_GRACE =>
                {
                    tracing::warn!("the database did not confirm the alerting lease in time; skipping this round");
                    unconfirmed = true;
                }
                LeaseState::Unconfirmed | LeaseState::Lost => {
                    tracing::warn!("lost the alerting lease (database connection gone); trying to take it again");
                    lease = None;
                    unconfirmed_since = None;
                }
            }
        }
        if lease.is_none() {
            match views.store.try_lease(ALERTING_LEASE).await {
                Ok(Some(taken)) => {
                    tracing::info!("this monitor evaluates alarms and sends notifications");
                    lease = Some(taken);
                    standing_by = false;
                    // What it timed before another monitor led is stale.
                    rounds = Rounds::with_budget(ROUND_BUDGET);
                }
                Ok(None) if !standing_by => {
                    tracing::info!("another monitor evaluates alarms on this database; standing by");
                    standing_by = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the alerting lease; retrying next round"),
            }
        }
        let lead = lease.is_some() && !unconfirmed;
        leading.send_replace(lead);
        metrics.alerting_leader.set(i64::from(lead));
        if lead {
            // Bounded well within the time the database keeps a silent holder's lease: a round
            // stuck on a dead connection must not go on leading beside the next leader.
            let round = evaluate_all(&views, &rules, Utc::now(), &metrics, &mut rounds);
            match tokio::time::timeout(EVALUATION_TIMEOUT, round).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "alarm evaluation failed; retrying next round"),
                Err(_) => {
                    tracing::error!(
                        "alarm evaluation took over {}s and was cut short (a database not answering, or one \
                         evaluation taking the rest of the round); not leading until the lease is confirmed",
                        EVALUATION_TIMEOUT.as_secs()
                    );
                    leading.send_replace(false);
                    metrics.alerting_leader.set(0);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::Baseline;

    fn rule(for_s: u64) -> Rule {
        Rule {
            name: "r".into(),
            metric_name: "error_rate".into(),
            metric: Metric::ErrorRate,
            model: None,
            variant: None,
            window: Duration::from_secs(60),
            comparator: Comparator::Gt,
            threshold: 0.1,
            for_duration: Duration::from_secs(for_s),
            keep_firing_for: Duration::ZERO,
            label_delay: Duration::ZERO,
            severity: "warning".into(),
            baseline: Baseline::Training,
            baseline_offset: None,
            retrain: false,
            rollout: false,
            capture_rate: None,
        }
    }

    fn row(state: &str, since: i64) -> AlertRow {
        AlertRow {
            alert_key: "r/m".into(),
            rule: "r".into(),
            model_name: "m".into(),
            metric: "error_rate".into(),
            severity: "warning".into(),
            state: state.into(),
            value: None,
            threshold: 0.1,
            since: DateTime::from_timestamp(since, 0).unwrap(),
            message: String::new(),
        }
    }

    /// One transition with a fresh memory of cleared conditions.
    fn step(r: &Rule, current: &AlertRow, value: Option<f64>, now: DateTime<Utc>) -> (AlertRow, Option<bool>) {
        transition(r, current, value, now, ClearedSince::default().slot(&current.alert_key))
    }

    #[test]
    fn pending_then_firing_after_the_for_duration_then_resolved() {
        let r = rule(30);
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let (p, change) = step(&r, &row("inactive", 0), Some(0.5), at(100));
        assert_eq!((p.state.as_str(), change), ("pending", Some(false)));
        let (still, change) = step(&r, &p, Some(0.5), at(120));
        assert_eq!((still.state.as_str(), change), ("pending", None));
        let (f, change) = step(&r, &still, Some(0.5), at(130));
        assert_eq!((f.state.as_str(), change), ("firing", Some(true)));
        let (same, change) = step(&r, &f, Some(0.7), at(140));
        assert_eq!((same.state.as_str(), change, same.since), ("firing", None, at(130)));
        let (res, change) = step(&r, &same, Some(0.01), at(150));
        assert_eq!((res.state.as_str(), change), ("resolved", Some(true)));
        let (none, change) = step(&r, &res, None, at(160));
        assert_eq!((none.state.as_str(), change), ("resolved", None));
    }

    #[test]
    fn no_data_keeps_a_firing_alarm_firing_for_its_window_and_ends_a_pending_one() {
        let r = rule(30);
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let (p, _) = step(&r, &row("inactive", 0), Some(0.5), at(100));
        let (f, _) = step(&r, &p, Some(0.5), at(130));
        assert_eq!(f.state, "firing");
        let mut memory = ClearedSince::default();
        let mut next = |current: &AlertRow, value, t| transition(&r, current, value, at(t), memory.slot("k"));
        let (silent, change) = next(&f, None, 140);
        assert_eq!((silent.state.as_str(), change, silent.since), ("firing", None, at(130)));
        assert_eq!(silent.value, None);
        let (back, change) = next(&silent, Some(0.01), 150);
        assert_eq!((back.state.as_str(), change), ("resolved", Some(true)), "data that clears it resolves it");
        // A gap as long as the window (60 s) ends it: the traffic is gone.
        let (f, _) = next(&back, Some(0.5), 1_000);
        let (f, _) = next(&f, Some(0.5), 1_030);
        assert_eq!(f.state, "firing");
        let (still, change) = next(&f, None, 1_040);
        assert_eq!((still.state.as_str(), change), ("firing", None));
        let (still, change) = next(&still, None, 1_099);
        assert_eq!((still.state.as_str(), change), ("firing", None), "59 s into a 60 s window");
        let (gone, change) = next(&still, None, 1_100);
        assert_eq!((gone.state.as_str(), change), ("resolved", Some(true)));
        assert!(gone.message.contains("has no data"), "{}", gone.message);
        let (p, _) = step(&r, &row("inactive", 0), Some(0.5), at(200));
        let (ended, change) = step(&r, &p, None, at(210));
        assert_eq!((ended.state.as_str(), change), ("inactive", Some(false)));
        let (p, _) = step(&r, &ended, Some(0.5), at(220));
        let (still, _) = step(&r, &p, Some(0.5), at(240));
        assert_eq!(still.state, "pending", "the wait starts again after the gap");
    }

    #[test]
    fn a_no_data_gap_does_not_count_toward_keep_firing_for() {
        // Window 60 s, keep firing 100 s after the condition clears.
        let r = Rule { keep_firing_for: Duration::from_secs(100), ..rule(0) };
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let mut cleared = ClearedSince::default();
        let mut next = |row: &AlertRow, value, s| transition(&r, row, value, at(s), cleared.slot("r/m"));
        let (firing, _) = next(&row("inactive", 0), Some(0.5), 100);
        // 90 s without data, then a clear reading: the 100 s start at the reading, not the gap.
        let (silent, _) = next(&firing, None, 110);
        let (silent, _) = next(&silent, None, 199);
        assert_eq!(silent.state, "firing");
        let (kept, change) = next(&silent, Some(0.0), 200);
        assert_eq!((kept.state.as_str(), change), ("firing", None));
        let (kept, change) = next(&kept, Some(0.0), 290);
        assert_eq!((kept.state.as_str(), change), ("firing", None), "90 s clear of the 100");
        let (resolved, change) = next(&kept, Some(0.0), 300);
        assert_eq!((resolved.state.as_str(), change), ("resolved", Some(true)));
    }

    #[test]
    fn clear_stretches_between_gaps_add_up_to_keep_firing_for() {
        // Keep firing 100 s after the condition clears; traffic in bursts: 60 s clear, 50 s with
        // no data, 40 s clear. Neither wait alone reaches 100 s; the clear ones together do.
        let r = Rule { keep_firing_for: Duration::from_secs(100), ..rule(0) };
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let mut cleared = ClearedSince::default();
        let mut next = |row: &AlertRow, value, s| transition(&r, row, value, at(s), cleared.slot("r/m"));
        let (firing, _) = next(&row("inactive", 0), Some(0.5), 100);
        let (kept, _) = next(&firing, Some(0.0), 200);
        let (kept, _) = next(&kept, None, 260);
        let (kept, _) = next(&kept, None, 300);
        let (kept, change) = next(&kept, Some(0.0), 310);
        assert_eq!((kept.state.as_str(), change), ("firing", None), "60 s clear so far");
        let (kept, change) = next(&kept, Some(0.0), 349);
        assert_eq!((kept.state.as_str(), change), ("firing", None), "99 s clear so far");
        let (resolved, change) = next(&kept, Some(0.0), 350);
        assert_eq!((resolved.state.as_str(), change), ("resolved", Some(true)), "60 + 40 s clear");
        // The condition holding again in between starts the clear wait anew.
        let (firing, _) = next(&row("inactive", 0), Some(0.5), 1000);
        let (kept, _) = next(&firing, Some(0.0), 1010);
        let (kept, _) = next(&kept, None, 1070);
        let (kept, _) = next(&kept, Some(0.5), 1080);
        let (kept, _) = next(&kept, Some(0.0), 1090);
        let (kept, change) = next(&kept, Some(0.0), 1189);
        assert_eq!((kept.state.as_str(), change), ("firing", None), "99 s since the condition last held");
    }

    #[test]
    fn a_blip_shorter_than_the_for_duration_never_fires() {
        let r = rule(30);
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let (p, _) = step(&r, &row("inactive", 0), Some(0.5), at(100));
        let (back, change) = step(&r, &p, Some(0.0), at(110));
        assert_eq!((back.state.as_str(), change), ("inactive", Some(false)));
        assert_eq!(step(&rule(0), &row("inactive", 0), Some(0.5), at(100)).0.state, "firing");
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alarm_until_its_condition_stays_clear() {
        let r = Rule { keep_firing_for: Duration::from_secs(10), ..rule(0) };
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let mut cleared = ClearedSince::default();
        let mut next = |row: &AlertRow, value, s| transition(&r, row, Some(value), at(s), cleared.slot("r/m"));
        let (firing, change) = next(&row("inactive", 0), 0.5, 100);
        assert_eq!((firing.state.as_str(), change), ("firing", Some(true)));
        // Clear at 150, back at 155: it never resolved, and the wait starts again.
        let (kept, change) = next(&firing, 0.0, 150);
        assert_eq!((kept.state.as_str(), change, kept.since), ("firing", None, at(100)));
        let (kept, change) = next(&kept, 0.5, 155);
        assert_eq!((kept.state.as_str(), change), ("firing", None));
        // Clear again at 160: 15 s after the first clearing but 5 s after this one, still firing.
        let (kept, _) = next(&kept, 0.0, 160);
        let (kept, change) = next(&kept, 0.0, 165);
        assert_eq!((kept.state.as_str(), change), ("firing", None));
        let (kept, change) = next(&kept, 0.0, 169);
        assert_eq!((kept.state.as_str(), change), ("firing", None));
        let (resolved, change) = next(&kept, 0.0, 170);
        assert_eq!((resolved.state.as_str(), change), ("resolved", Some(true)));
        // The memory ends with the alarm: firing again later waits the whole time again.
        let (again, _) = next(&resolved, 0.5, 200);
        let (kept, change) = next(&again, 0.0, 201);
        assert_eq!((kept.state.as_str(), change), ("firing", None));
        let (resolved, change) = next(&kept, 0.0, 211);
        assert_eq!((resolved.state.as_str(), change), ("resolved", Some(true)));
        // Without the setting it resolves at the first clear round.
        assert_eq!(step(&rule(0), &again, Some(0.0), at(201)).0.state, "resolved");
    }

    #[test]
    fn metric_names_parse_or_say_what_is_allowed() {
        assert_eq!("drift.brightness.detected".parse(), Ok(Metric::DriftDetected("brightness".into())));
        assert_eq!("verdict.defect.rate".parse(), Ok(Metric::VerdictRate(Verdict::Defect as i32)));
        assert_eq!("feedback.redo_search.rate".parse(), Ok(Metric::FeedbackRate("redo_search".into())));
        assert_eq!("decision.human_review.rate".parse(), Ok(Metric::DecisionRate(Decision::HumanReview as i32)));
        assert_eq!("label.unknown.rate".parse(), Ok(Metric::LabelRate("unknown".into())));
        assert_eq!("feature.text.lang.eng.mean".parse(), Ok(Metric::FeatureMean("text.lang.eng".into())));
        assert_eq!("feature.temperature.missing_rate".parse(), Ok(Metric::FeatureMissingRate("temperature".into())));
        assert_eq!("invalid_input_rate".parse(), Ok(Metric::InvalidInputRate));
        assert!("label.rate".parse::<Metric>().is_err());
        let e = "latency_p95".parse::<Metric>().unwrap_err();
        assert!(e.contains("unknown metric 'latency_p95'") && e.contains("latency_p99_ms"), "{e}");
        assert!("verdict.maybe.rate".parse::<Metric>().unwrap_err().contains("unknown verdict"));
        assert!("=>".parse::<Comparator>().is_err());
    }
}
