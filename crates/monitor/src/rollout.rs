//! The rollout controller: steps a candidate through its plan of canary shares, judging each
//! step from the rollups of the candidate's and the primary's traffic over the same window.
//! A step passes when it has lasted its minimum duration, the candidate answered its minimum
//! number of requests, and every check holds; one failing check rolls the candidate back at
//! once (the failing checks in the audit event, the rollout's history, and an alarm notified
//! by webhook); too little data waits. It acts only in the monitor holding the alerting lease,
//! and each step moves by compare and set in the store, so no step is applied twice.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vigil_proto::vigil::v1::{RollupWindow, Variant};
use vigil_store::monitoring::{AlertRow, OutcomeQuery};
use vigil_store::{Change, DeploymentRow, MonitorStore, RolloutRow, RolloutStep, StepMode};

use crate::sketch;
use crate::views::{Scope, ViewError, Views, variant_name};

/// The actor of the controller's changes in the audit log.
pub const CONTROLLER: &str = "rollout-controller";

/// Alarm rule name of a model's rollbacks (`rollout:<model>`); kept out of the configured rules.
pub const ALERT_PREFIX: &str = "rollout:";

/// The thresholds of a step's analysis, candidate against primary over the step's window.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutChecks {
    /// How often running rollouts are judged.
    #[serde(deserialize_with = "crate::config::duration")]
    pub evaluate_every: Duration,
    /// Candidate error rate (requests the server failed) at most the primary's plus this.
    pub max_error_rate_increase: f64,
    /// Candidate rate of requests refused for their input at most the primary's plus this;
    /// judged side by side only (not in a 100% canary step, whose baseline is an earlier window:
    /// a client that starts sending bad input then is no fault of the candidate's).
    pub max_invalid_input_rate_increase: f64,
    /// Candidate null-output rate at most the primary's plus this.
    pub max_null_rate_increase: f64,
    /// Candidate p99 latency at most this many times the primary's ...
    pub max_latency_p99_ratio: f64,
    /// ... or the primary's plus this many milliseconds, whichever is more.
    pub latency_p99_slack_ms: f64,
    /// Latency is judged only when both variants answered at least this many requests in the
    /// window, the score and input distributions only when the primary did (a candidate's few
    /// answers in a 1% step are judged, the KS test's p value weighing how few they are); neither
    /// in a 100% canary step, where the primary answers nobody.
    #[serde(alias = "min_latency_samples")]
    pub min_comparison_samples: u64,
    /// The score distributions (and each input feature's) differ when their KS distance exceeds
    /// this and the KS test's p value is under `score_p_value` (both: no rollback on a tiny
    /// difference seen often).
    pub max_score_ks: f64,
    pub score_p_value: f64,
    /// Labelled accuracy may fall by at most this (where both variants have labels).
    pub max_accuracy_drop: f64,
    /// In a shadow step, the share of items the candidate answers as the primary did.
    pub min_shadow_agreement: f64,
    /// Reviewers' overrides (decisions other than the model's) per reviewed item may rise by
    /// at most this.
    pub max_override_increase: f64,
    /// A rate check fails only when the candidate's rate is also higher (or, for a rate where
    /// higher is better, lower) than the primary's with a one-sided p-value under this: no
    /// rollback on noise.
    pub significance: f64,
    /// Business metrics: feedback events per prediction of each variant (clicks, redo
    /// searches, switches to typing, reviewers' overrides).
    pub feedback: Vec<FeedbackCheck>,
    /// With at least this many labelled items of each variant in the window, the labels judge
    /// the candidate's answers: shadow agreement and the score distribution, proxies for them,
    /// are still reported but no longer fail a step (a retrained model is meant to answer
    /// otherwise than the primary it replaces).
    pub labels_outweigh_proxies_at: u64,
}

impl RolloutChecks {
    /// Refuses values that would judge nothing or loop without a pause; the message names the
    /// key under `[rollouts]`.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.evaluate_every.is_zero() {
            anyhow::bail!("rollouts.evaluate_every must be longer than 0 (15s by default)");
        }
        // A p value is never under 0: significance 0 would pass every rate check.
        for (key, value) in [("significance", self.significance), ("score_p_value", self.score_p_value)] {
            if !(value > 0.0 && value < 1.0) {
                anyhow::bail!("rollouts.{key} = {value}: give a p value between 0 and 1, such as 0.05");
            }
        }
        let limits = [
            ("max_error_rate_increase", self.max_error_rate_increase),
            ("max_invalid_input_rate_increase", self.max_invalid_input_rate_increase),
            ("max_null_rate_increase", self.max_null_rate_increase),
            ("max_latency_p99_ratio", self.max_latency_p99_ratio),
            ("latency_p99_slack_ms", self.latency_p99_slack_ms),
            ("max_score_ks", self.max_score_ks),
            ("max_accuracy_drop", self.max_accuracy_drop),
            ("min_shadow_agreement", self.min_shadow_agreement),
            ("max_override_increase", self.max_override_increase),
        ];
        let feedback = self.feedback.iter().map(|f| (f.kind.as_str(), f.max_change));
        for (key, value) in limits.into_iter().chain(feedback) {
            // NaN compares false everywhere: every check would pass.
            if !value.is_finite() || value < 0.0 {
                anyhow::bail!("rollouts: {key} = {value}: give a number of 0 or more");
            }
        }
        if self.min_shadow_agreement > 1.0 {
            anyhow::bail!("rollouts.min_shadow_agreement = {}: a share, at most 1", self.min_shadow_agreement);
        }
        if self.labels_outweigh_proxies_at == 0 {
            anyhow::bail!("rollouts.labels_outweigh_proxies_at must be at least 1 (with 0, no label would be needed)");
        }
        Ok(())
    }
}

/// One feedback rate compared between candidate and primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackCheck {
    /// The feedback kind, e.g. `click`, `redo_search`, `switch_to_typing`, `override`.
    pub kind: String,
    /// Clicks: more is better, and a drop fails; otherwise a rise fails.
    #[serde(default)]
    pub higher_is_better: bool,
    /// The change allowed, in events per prediction.
    pub max_change: f64,
}

impl Default for RolloutChecks {
    fn default() -> Self {
        Self {
            evaluate_every: Duration::from_secs(15),
            max_error_rate_increase: 0.01,
            max_invalid_input_rate_increase: 0.01,
            max_null_rate_increase: 0.01,
            max_latency_p99_ratio: 1.5,
            latency_p99_slack_ms: 5.0,
            min_comparison_samples: 100,
            max_score_ks: 0.2,
            score_p_value: 0.01,
            max_accuracy_drop: 0.02,
            min_shadow_agreement: 0.9,
            max_override_increase: 0.05,
            significance: 0.05,
            feedback: vec![
                FeedbackCheck { kind: "click".into(), higher_is_better: true, max_change: 0.05 },
                FeedbackCheck { kind: "redo_search".into(), higher_is_better: false, max_change: 0.05 },
                FeedbackCheck { kind: "switch_to_typing".into(), higher_is_better: false, max_change: 0.05 },
            ],
            labels_outweigh_proxies_at: 200,
        }
    }
}

/// One check of an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub candidate: Option<f64>,
    pub primary: Option<f64>,
    /// The most the candidate may have, or with `at_least` the least.
    pub limit: f64,
    /// The limit is a floor (accuracy, agreement, feedback where more is better).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_least: bool,
    pub passed: bool,
    /// Outside its limit, but outweighed by the labels (see
    /// [`RolloutChecks::labels_outweigh_proxies_at`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advisory: bool,
}

/// The checks behind a rollout's `index`th decision, as its history keeps them (none for a
/// decision made by hand, or past the history's end).
pub fn decision_checks(rollout: &RolloutRow, index: usize) -> Vec<Check> {
    rollout.decisions().get(index).and_then(|d| serde_json::from_value(d["checks"].clone()).ok()).unwrap_or_default()
}

/// The names of the checks that failed in a rollout's `index`th decision.
pub fn failed_checks(rollout: &RolloutRow, index: usize) -> Vec<String> {
    decision_checks(rollout, index).into_iter().filter(|c| !c.passed).map(|c| c.name).collect()
}

/// A step's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Analysis {
    /// Not enough time or requests yet: why.
    Wait(String),
    /// The candidate answered next to nothing where its share implies many requests (not loaded
    /// where the servers are, refused by them, or routing keys too few to reach it): for a
    /// person to look at, since waiting would wait for ever. Why.
    Silent(String),
    Pass(Vec<Check>),
    Fail(Vec<Check>),
}

fn rate(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// What one variant did over a step's window: its rollup, its feedback events by kind, and
/// its labelled predictions (how many, how many right).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub window: RollupWindow,
    pub feedback: BTreeMap<String, u64>,
    pub labeled: u64,
    pub correct: u64,
    /// In a shadow step: the candidate's answers compared with the primary's on the same
    /// items, and how far they agreed, summed (see [`crate::views::AgreementWindow::agreed`]).
    pub compared: u64,
    pub agreed: f64,
    /// Items of this variant a reviewer decided, and of those, decided otherwise than the model.
    pub reviewed: u64,
    pub overridden: u64,
}

/// A candidate short of its step's minimum requests where its share implies this many times that
/// minimum is [`Analysis::Silent`].
const SILENT_AFTER_DUE: u64 = 10;

/// Judges the candidate against the primary over `[since, now)`.
pub fn analyse(
    step: &RolloutStep,
    elapsed: Duration,
    candidate_traffic: &Traffic,
    primary_traffic: &Traffic,
    checks: &RolloutChecks,
) -> Analysis {
    let (candidate, primary) = (&candidate_traffic.window, &primary_traffic.window);
    if elapsed < Duration::from_secs(step.min_duration_s) {
        return Analysis::Wait(format!("{}s of the step's {}s", elapsed.as_secs(), step.min_duration_s));
    }
    // A step is judged on the candidate's own traffic: none is never evidence, whatever the plan.
    let needed = step.min_requests.max(1);
    if candidate.count < needed {
        // What the step's share of the primary's requests implies the candidate should have had:
        // a canary's share of the keys (a whole canary: as many as the primary had before),
        // a shadow's share of the primary's requests mirrored.
        let np = primary.count as f64;
        let due = match step.mode {
            StepMode::Canary if step.share >= 1.0 => np,
            StepMode::Canary => np * step.share / (1.0 - step.share),
            StepMode::Shadow => np * step.share,
        };
        if due >= (SILENT_AFTER_DUE * needed) as f64 {
            return Analysis::Silent(format!(
                "the candidate answered {} requests where its share implies about {due:.0}: is it loaded and \
                 served (or are the routing keys too few to reach it)?",
                candidate.count
            ));
        }
        return Analysis::Wait(format!("{} of the step's {needed} requests to the candidate", candidate.count));
    }
    let mut out = Vec::new();
    let (nc, np) = (candidate.count, primary.count);
    // A canary step of 100% leaves the primary no traffic of its own: its traffic is from a
    // window before the step (see `advance`).
    let side_by_side = !(step.mode == StepMode::Canary && step.share >= 1.0);
    // A rate that must not get worse: past its limit and significantly worse than the primary's.
    let mut rate_check = |name: String, xc: u64, xp: u64, max_change: f64, higher_is_better: bool| {
        let (c, p) = (rate(xc, nc), rate(xp, np));
        let (worse, limit, p_value) = if higher_is_better {
            let limit = p.unwrap_or(0.0) - max_change;
            (c.is_some_and(|c| c < limit), limit, vigil_drift::proportion_greater_p_value(xp, np, xc, nc))
        } else {
            let limit = p.unwrap_or(0.0) + max_change;
            (c.is_some_and(|c| c > limit), limit, vigil_drift::proportion_greater_p_value(xc, nc, xp, np))
        };
        // With nothing of the primary's to compare, the limit alone decides.
        let significant = np == 0 || p_value < checks.significance;
        let passed = !(worse && significant);
        out.push(Check { name, candidate: c, primary: p, limit, at_least: higher_is_better, passed, advisory: false });
    };
    // The server's failures decide in every step; inputs refused only side by side, where both
    // variants see the same clients' inputs (a candidate refusing what the primary accepts).
    let server_errors = |w: &RollupWindow| w.errors.saturating_sub(w.invalid_inputs);
    let (ec, ep) = (server_errors(candidate), server_errors(primary));
    rate_check("error_rate".into(), ec, ep, checks.max_error_rate_increase, false);
    if side_by_side {
        let (ic, ip) = (candidate.invalid_inputs, primary.invalid_inputs);
        rate_check("invalid_input_rate".into(), ic, ip, checks.max_invalid_input_rate_increase, false);
    }
    rate_check("null_rate".into(), candidate.nulls, primary.nulls, checks.max_null_rate_increase, false);
    // Users act on the answers they were given: a shadow's are never shown, so its traffic has
    // no feedback of its own and is judged on it in the canary steps only.
    for f in checks.feedback.iter().filter(|_| step.mode == StepMode::Canary) {
        let xc = candidate_traffic.feedback.get(&f.kind).copied().unwrap_or(0);
        let xp = primary_traffic.feedback.get(&f.kind).copied().unwrap_or(0);
        if xc + xp > 0 {
            rate_check(format!("feedback.{}", f.kind), xc, xp, f.max_change, f.higher_is_better);
        }
    }
    // In shadow: how often the candidate answers as the primary did on the same items.
    if candidate_traffic.compared > 0 {
        let agreement = candidate_traffic.agreed / candidate_traffic.compared as f64;
        out.push(Check {
            name: "shadow_agreement".into(),
            candidate: Some(agreement),
            primary: None,
            limit: checks.min_shadow_agreement,
            at_least: true,
            passed: agreement >= checks.min_shadow_agreement,
            advisory: false,
        });
    }
    // Reviewers deciding otherwise than the model, where both variants had items reviewed.
    let (rc, rp) = (candidate_traffic.reviewed, primary_traffic.reviewed);
    if rc > 0 && rp > 0 {
        let (oc, op) = (candidate_traffic.overridden, primary_traffic.overridden);
        let (c, p) = (oc as f64 / rc as f64, op as f64 / rp as f64);
        let limit = p + checks.max_override_increase;
        let p_value = vigil_drift::proportion_greater_p_value(oc, rc, op, rp);
        let passed = !(c > limit && p_value < checks.significance);
        out.push(Check {
            name: "review_overrides".into(),
            candidate: Some(c),
            primary: Some(p),
            limit,
            at_least: false,
            passed,
            advisory: false,
        });
    }
    // Accuracy from late labels, where both variants have some: must not fall.
    let (lc, lp) = (candidate_traffic.labeled, primary_traffic.labeled);
    if lc > 0 && lp > 0 {
        let (c, p) = (candidate_traffic.correct as f64 / lc as f64, primary_traffic.correct as f64 / lp as f64);
        let limit = p - checks.max_accuracy_drop;
        let p_value =
            vigil_drift::proportion_greater_p_value(primary_traffic.correct, lp, candidate_traffic.correct, lc);
        let passed = !(c < limit && p_value < checks.significance);
        out.push(Check {
            name: "accuracy".into(),
            candidate: Some(c),
            primary: Some(p),
            limit,
            at_least: true,
            passed,
            advisory: false,
        });
    }
    let mut check = |name: &str, c: Option<f64>, p: Option<f64>, limit: f64| {
        let passed = c.is_none_or(|c| c <= limit);
        out.push(Check {
            name: name.into(),
            candidate: c,
            primary: p,
            limit,
            at_least: false,
            passed,
            advisory: false,
        });
    };
    let p99 = |w: &RollupWindow| w.latency_ms.as_ref().and_then(|s| sketch::quantile(s, 0.99));
    let (c_p99, p_p99) = (p99(candidate), p99(primary));
    // A shadow's latency runs from the request it mirrors and includes sharing the cores with
    // the primary's answer: judged in the canary steps only.
    // In a 100% canary step, rates and labels compare with the window before the step, but
    // latency and distributions move with the hour's load and inputs: judged side by side only.
    let enough = side_by_side && candidate.count.min(primary.count) >= checks.min_comparison_samples;
    if let Some(p) = p_p99.filter(|_| step.mode == StepMode::Canary && enough) {
        let limit = (p * checks.max_latency_p99_ratio).max(p + checks.latency_p99_slack_ms);
        check("latency_p99_ms", c_p99, p_p99, limit);
    }
    // The scores, and each input feature both variants logged: the candidate's traffic must look
    // like the primary's (the same keys' inputs; a candidate that logs other inputs preprocesses
    // differently).
    let mut distributions = vec![("score_ks".to_string(), candidate.score.as_ref(), primary.score.as_ref())];
    for (name, c) in &candidate.features {
        let p = primary.features.get(name).and_then(|p| p.sketch.as_ref());
        distributions.push((format!("input_ks.{name}"), c.sketch.as_ref(), p));
    }
    let primary_enough = side_by_side && primary.count >= checks.min_comparison_samples;
    for (name, cs, ps) in distributions.into_iter().filter(|_| primary_enough) {
        let (Some(cs), Some(ps)) = (cs, ps) else { continue };
        let (Ok(c), Ok(p)) = (sketch::distribution(cs), sketch::distribution(ps)) else { continue };
        let Ok(d) = vigil_drift::ks_distance(&p, &c) else { continue };
        let p_value = vigil_drift::ks_p_value(d, sketch::count(ps) as usize, sketch::count(cs) as usize);
        // Failing only when both the distance and the evidence are large.
        let shifted = d > checks.max_score_ks && p_value < checks.score_p_value;
        out.push(Check {
            name,
            candidate: Some(d),
            primary: Some(p_value),
            limit: checks.max_score_ks,
            at_least: false,
            passed: !shifted,
            advisory: false,
        });
    }
    if lc.min(lp) >= checks.labels_outweigh_proxies_at {
        for proxy in out.iter_mut().filter(|c| c.name == "shadow_agreement" || c.name == "score_ks") {
            proxy.advisory = !proxy.passed;
            proxy.passed = true;
        }
    }
    if out.iter().all(|c| c.passed) { Analysis::Pass(out) } else { Analysis::Fail(out) }
}

impl Check {
    /// A failed check as the rollback's reason says it: `accuracy 0.8000 < 0.8800`.
    pub fn describe_failure(&self) -> String {
        let past = if self.at_least { "<" } else { ">" };
        let candidate = self.candidate.map_or("-".into(), |v| format!("{v:.4}"));
        format!("{} {candidate} {past} {:.4}", self.name, self.limit)
    }
}

/// One decision, as kept in the rollout's history.
#[derive(Debug, Clone, Serialize)]
struct Decision<'a> {
    time: DateTime<Utc>,
    step: i32,
    share: f64,
    decision: &'a str,
    checks: &'a [Check],
}

/// Judges every running rollout once at `now`, moving those whose step is decided. Returns
/// the rollouts changed.
pub async fn advance_all<S: MonitorStore>(
    views: &Views<S>,
    checks: &RolloutChecks,
    now: DateTime<Utc>,
) -> Result<usize, ViewError> {
    let mut moved = 0;
    for rollout in views.store.rollouts(None).await?.into_iter().filter(|r| r.state == "running") {
        match advance(views, checks, &rollout, now).await {
            Ok(true) => moved += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(rollout = %rollout.rollout_id, error = %e, "cannot judge the rollout step"),
        }
    }
    resolve_answered_alarms(views, now).await?;
    Ok(moved)
}

/// A rollout's alarm (a rollback, a step without a verdict) calls a person; once a person has
/// acted on that model's rollout since (promoted, aborted, resumed or paused it, with `vigil
/// rollout`) or started another rollout of it, it is resolved, naming them. A later rollout's
/// promotion resolves it too (`notify`).
async fn resolve_answered_alarms<S: MonitorStore>(views: &Views<S>, now: DateTime<Utc>) -> Result<(), ViewError> {
    let alerts = views.store.load_alerts().await?;
    for alert in alerts.into_iter().filter(|a| a.state == "firing" && a.alert_key.starts_with(ALERT_PREFIX)) {
        let rollouts = views.store.rollouts(Some(&alert.model_name)).await?;
        let Some(latest) = rollouts.into_iter().max_by_key(|r| r.updated_at) else { continue };
        if latest.updated_at <= alert.since {
            continue;
        }
        let history = latest.decisions();
        let by = |entry: &serde_json::Value| entry.get("by").and_then(|by| by.as_str()).map(str::to_string);
        let answer = match (history.last().and_then(by), latest.state.as_str()) {
            (Some(by), _) => {
                let action = history.last().and_then(|last| last["decision"].as_str()).unwrap_or("acted on");
                format!("rollout of {} version {}: {action} by {by}", latest.model_name, latest.candidate_version)
            }
            // Running since the alarm, its last step the controller's: resumed by a person
            // before it, or a rollout started anew (after a rollback, say), which answers the
            // call too. A rollback or a pause (what raises these alarms) is never running.
            (None, "running") => match history.iter().rev().find_map(by) {
                Some(by) => format!(
                    "rollout of {} version {} running again, resumed by {by}",
                    latest.model_name, latest.candidate_version
                ),
                None => format!(
                    "new rollout of {} version {} started by {}",
                    latest.model_name, latest.candidate_version, latest.created_by
                ),
            },
            (None, _) => continue,
        };
        let message = format!("{answer} ({})", alert.message);
        let resolved = AlertRow { state: "resolved".into(), since: now, message, ..alert };
        views.store.save_alert(&resolved, views.config.alerting.webhook_url.is_some()).await?;
    }
    Ok(())
}

async fn advance<S: MonitorStore>(
    views: &Views<S>,
    checks: &RolloutChecks,
    rollout: &RolloutRow,
    now: DateTime<Utc>,
) -> Result<bool, ViewError> {
    let steps = rollout.steps().map_err(ViewError::InvalidArgument)?;
    let Some(step) = steps.get(rollout.step as usize) else {
        return Err(ViewError::InvalidArgument(format!("rollout {} is past its plan", rollout.rollout_id)));
    };
    // Each variant's traffic is its version's only: records of the same variant from before
    // (e.g. the last rollout's candidate, in the rollup bucket this step started in) stay out.
    let version_of = |variant: Variant| {
        if variant == Variant::Primary { &rollout.primary_version } else { &rollout.candidate_version }
    };
    let scope = |variant: Variant| Scope {
        model: rollout.model_name.clone(),
        version: Some(version_of(variant).clone()),
        variant: Some(variant as i16),
    };
    let since = rollout.step_started_at;
    let traffic = |variant: Variant, since: DateTime<Utc>, now: DateTime<Utc>| {
        let scope = scope(variant);
        async move {
            if since >= now {
                return Ok::<_, ViewError>(Traffic::default());
            }
            // Reviewers' decisions of the window.
            let reviews = views.review_summary(&scope.model, since, now).await?.agreement;
            let window = views.total_since(&scope, since, now).await?;
            let seconds = u32::try_from((now - since).num_seconds().max(1)).unwrap_or(u32::MAX);
            // Late outcomes (feedback, labels) only as far as the window's end: a baseline window
            // before a 100% step is then counted at the age the candidate's window has, not with
            // the feedback and labels that kept arriving during the step.
            let outcomes = |since| OutcomeQuery { events_before: Some(now), ..scope.outcomes(since, now, seconds) };
            // Feedback is divided by the window's requests: counted over the same span, which
            // starts at the first whole rollup window of the step.
            let counted_from = views.counted_from(since);
            let mut feedback = BTreeMap::new();
            if counted_from < now {
                for c in views.store.feedback_counts(&outcomes(counted_from)).await? {
                    *feedback.entry(c.kind).or_default() += u64::try_from(c.count).unwrap_or(0);
                }
            }
            let (mut labeled, mut correct) = (0, 0);
            for group in views.store.labeled_counts(&outcomes(since)).await? {
                let n = u64::try_from(group.count).unwrap_or(0);
                labeled += n;
                correct += n * u64::from(crate::views::answered_right(&group));
            }
            let (mut compared, mut agreed) = (0, 0.0);
            if variant == Variant::Shadow {
                // A shadow's records carry no labels: it is judged by the labels people gave
                // the primary's predictions of the same items.
                for w in views.shadow_agreement(&scope, since, now, seconds).await? {
                    (compared, agreed) = (compared + w.compared, agreed + w.agreed);
                    (labeled, correct) = (labeled + w.labeled, correct + w.shadow_correct);
                }
            }
            let version = version_of(variant);
            let (mut reviewed, mut overridden) = (0, 0);
            let name = variant_name(variant as i16);
            for a in reviews.iter().filter(|a| a.variant == name && &a.model_version == version) {
                (reviewed, overridden) = (reviewed + a.compared, overridden + a.compared - a.agreed);
            }
            Ok(Traffic { window, feedback, labeled, correct, compared, agreed, reviewed, overridden })
        }
    };
    let candidate_variant = match step.mode {
        StepMode::Shadow => Variant::Shadow,
        StepMode::Canary => Variant::Canary,
    };
    // A canary step of 100% leaves the primary no traffic of its own: the candidate is judged
    // against what the primary did in as long a window just before the step first began (not
    // before a resume: the candidate served everything while the step was paused).
    let baseline =
        if step.mode == StepMode::Canary && step.share >= 1.0 { step_began(rollout) - (now - since) } else { since };
    let candidate = traffic(candidate_variant, since, now).await?;
    let primary = traffic(Variant::Primary, baseline, baseline + (now - since)).await?;
    let elapsed = (now - since).to_std().unwrap_or_default();
    // The distribution tests count exactly up to 10,000 values a side (as scipy's ks_2samp):
    // with many features, seconds of CPU, kept off the async threads.
    let (owned_step, owned_checks) = (*step, checks.clone());
    let analysis =
        tokio::task::spawn_blocking(move || analyse(&owned_step, elapsed, &candidate, &primary, &owned_checks))
            .await
            .map_err(|e| ViewError::InvalidArgument(format!("the step's analysis failed: {e}")))?;
    let past_deadline = step.max_duration_s.is_some_and(|m| elapsed > Duration::from_secs(m));
    let no_checks = Vec::new();
    let (decision, list) = match &analysis {
        Analysis::Wait(_) if past_deadline => ("inconclusive", &no_checks),
        Analysis::Silent(_) => ("inconclusive", &no_checks),
        Analysis::Wait(why) => {
            tracing::debug!(rollout = %rollout.rollout_id, step = rollout.step, "step waits: {why}");
            return Ok(false);
        }
        Analysis::Pass(list) if step.approval => ("awaiting_approval", list),
        Analysis::Pass(list) if rollout.step as usize + 1 == steps.len() => ("promote", list),
        Analysis::Pass(list) => ("next_step", list),
        Analysis::Fail(list) => ("rollback", list),
    };
    let mut history = rollout.decisions();
    history.push(
        serde_json::to_value(Decision { time: now, step: rollout.step, share: step.share, decision, checks: list })
            .expect("decisions serialise"),
    );
    let mut next = rollout.clone();
    next.history = serde_json::to_string(&history).expect("history serialises");
    next.updated_at = now;
    let deployment = |mode: &str, primary: &str, candidate: Option<&str>, share: f64| DeploymentRow {
        model_name: rollout.model_name.clone(),
        deployment_id: uuid::Uuid::now_v7().to_string(),
        primary_version: primary.into(),
        candidate_version: candidate.map(str::to_string),
        mode: mode.into(),
        share,
        updated_by: CONTROLLER.into(),
        updated_at: now,
        policy: "full".into(),
        accept_below: None,
        reject_at: None,
    };
    let current = views.store.deployments().await?.into_iter().find(|d| d.model_name == rollout.model_name);
    let keep_policy = |mut d: DeploymentRow| {
        if let Some(c) = &current {
            (d.policy, d.accept_below, d.reject_at) = (c.policy.clone(), c.accept_below, c.reject_at);
        }
        d
    };
    let failing: Vec<String> = list.iter().filter(|c| !c.passed).map(Check::describe_failure).collect();
    let (target, reason) = match decision {
        "inconclusive" | "awaiting_approval" => {
            next.state = "paused".into();
            let reason = match &analysis {
                Analysis::Wait(why) => {
                    format!("step {} has no verdict by its deadline ({why}): paused for a person", rollout.step + 1)
                }
                Analysis::Silent(why) => format!("step {}: {why}: paused for a person", rollout.step + 1),
                _ => format!(
                    "step {} passed; the promotion waits for a person's approval (`vigil rollout promote {}`)",
                    rollout.step + 1,
                    rollout.model_name
                ),
            };
            let change = Change { actor: CONTROLLER, reason: &reason, at: now };
            let applied = views.store.advance_rollout(rollout, &next, None, &change).await.map_err(registry_error)?;
            if applied {
                tracing::warn!(rollout = %rollout.rollout_id, model = %rollout.model_name, "{reason}");
                notify(views, rollout, decision, &reason, now).await?;
            }
            return Ok(applied);
        }
        "next_step" => {
            next.step += 1;
            next.step_started_at = now;
            let to = steps[next.step as usize];
            let mode = mode_name(to.mode);
            let d = deployment(mode, &rollout.primary_version, Some(&rollout.candidate_version), to.share);
            (keep_policy(d), format!("step {} passed; {mode} at {}%", rollout.step + 1, to.share * 100.0))
        }
        "promote" => {
            next.state = "promoted".into();
            // The previous primary is kept as the version to roll back to.
            let d = deployment("single", &rollout.candidate_version, Some(&rollout.primary_version), 0.0);
            (keep_policy(d), format!("every step passed; {} promoted", rollout.candidate_version))
        }
        _ => {
            next.state = "rolled_back".into();
            let d = deployment("single", &rollout.primary_version, Some(&rollout.candidate_version), 0.0);
            (keep_policy(d), format!("step {} failed: {}", rollout.step + 1, failing.join(", ")))
        }
    };
    let change = Change { actor: CONTROLLER, reason: &reason, at: now };
    // Made from the deployment read above: a change meanwhile (a person's policy) makes the
    // step wait for the next round, judged again from what is stored then.
    let target = vigil_store::NextDeployment::from_read(&target, current.as_ref());
    let applied = views.store.advance_rollout(rollout, &next, Some(target), &change).await.map_err(registry_error)?;
    if !applied {
        return Ok(false);
    }
    tracing::info!(rollout = %rollout.rollout_id, model = %rollout.model_name, "{reason}");
    notify(views, rollout, decision, &reason, now).await?;
    Ok(true)
}

/// The deployment mode of a step.
fn mode_name(mode: StepMode) -> &'static str {
    match mode {
        StepMode::Canary => "canary",
        StepMode::Shadow => "shadow",
    }
}

fn registry_error(e: vigil_store::RegistryError) -> ViewError {
    match e {
        vigil_store::RegistryError::Database(e) => ViewError::Store(e),
        other => ViewError::InvalidArgument(other.to_string()),
    }
}

/// A rollback (or a step paused for a person) fires the model's rollout alarm (notified by webhook like any alarm); a promotion
/// resolves it.
async fn notify<S: MonitorStore>(
    views: &Views<S>,
    rollout: &RolloutRow,
    decision: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), ViewError> {
    let key = format!("{ALERT_PREFIX}{}", rollout.model_name);
    let firing = views.store.load_alerts().await?.into_iter().any(|a| a.alert_key == key && a.state == "firing");
    let state = match decision {
        "rollback" | "inconclusive" => "firing",
        "promote" if firing => "resolved",
        _ => return Ok(()),
    };
    let alert = AlertRow {
        alert_key: key.clone(),
        rule: key,
        model_name: rollout.model_name.clone(),
        metric: "rollout".into(),
        severity: "critical".into(),
        state: state.into(),
        value: Some(f64::from(rollout.step + 1)),
        threshold: 0.0,
        since: now,
        message: format!("rollout of {} version {}: {reason}", rollout.model_name, rollout.candidate_version),
    };
    views.store.save_alert(&alert, views.config.alerting.webhook_url.is_some()).await?;
    Ok(())
}

/// Starts rolling `candidate` out over `steps`, from the model's current primary: the first
/// step's canary share is set at once.
pub async fn start<S: MonitorStore>(
    store: &S,
    model: &str,
    candidate: &str,
    steps: &[RolloutStep],
    change: &Change<'_>,
) -> Result<RolloutRow, vigil_store::RegistryError> {
    use vigil_store::RegistryError::Invalid;
    vigil_store::registry::rollouts::validate_plan(steps).map_err(Invalid)?;
    let current = store.deployments().await?.into_iter().find(|d| d.model_name == model);
    let Some(current) = current else {
        return Err(Invalid(format!("{model} has no deployment: `vigil deploy switch {model} --to VERSION` first")));
    };
    if current.primary_version == candidate {
        return Err(Invalid(format!("{model} version {candidate} already answers as the primary")));
    }
    let row = RolloutRow {
        rollout_id: uuid::Uuid::now_v7().to_string(),
        model_name: model.into(),
        primary_version: current.primary_version.clone(),
        candidate_version: candidate.into(),
        plan: serde_json::to_string(steps).expect("steps serialise"),
        step: 0,
        state: "running".into(),
        step_started_at: change.at,
        created_by: change.actor.into(),
        updated_at: change.at,
        history: "[]".into(),
    };
    let read = current.deployment_id.clone();
    let deployment = DeploymentRow {
        deployment_id: uuid::Uuid::now_v7().to_string(),
        candidate_version: Some(candidate.into()),
        mode: mode_name(steps[0].mode).into(),
        share: steps[0].share,
        updated_by: change.actor.into(),
        updated_at: change.at,
        ..current
    };
    let next = vigil_store::NextDeployment { row: &deployment, replaces: Some(&read) };
    store.start_rollout(&row, next, change).await?;
    Ok(row)
}

/// What a person may do to a model's active rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    /// Hold the current step: the controller leaves it alone.
    Pause,
    /// Judge again, the step's window starting now.
    Resume,
    /// Skip the remaining steps: the candidate becomes the primary.
    Promote,
    /// Stop and send all traffic back to the primary.
    Abort,
}

/// Applies a person's decision to `model`'s active rollout; returns it as it now stands.
pub async fn manual<S: MonitorStore>(
    store: &S,
    model: &str,
    action: Manual,
    change: &Change<'_>,
) -> Result<RolloutRow, vigil_store::RegistryError> {
    use vigil_store::RegistryError::Invalid;
    let rollouts = store.rollouts(Some(model)).await?;
    let Some(rollout) = rollouts.into_iter().find(RolloutRow::is_active) else {
        return Err(Invalid(format!("{model} has no active rollout (`vigil rollout status`)")));
    };
    let current = store.deployments().await?.into_iter().find(|d| d.model_name == model);
    let mut next = rollout.clone();
    next.updated_at = change.at;
    let mut history = rollout.decisions();
    let name = format!("{action:?}").to_lowercase();
    let mut entry = serde_json::json!({ "time": change.at, "step": rollout.step, "decision": name, "by": change.actor, "reason": change.reason });
    if action == Manual::Resume {
        // The step's clock starts again; a baseline read "before the step" still ends where the
        // step first began.
        entry["step_began"] = serde_json::json!(step_began(&rollout));
    }
    history.push(entry);
    next.history = serde_json::to_string(&history).expect("history serialises");
    let single = |primary: &str, previous: &str| {
        current.clone().map(|c| DeploymentRow {
            deployment_id: uuid::Uuid::now_v7().to_string(),
            primary_version: primary.into(),
            candidate_version: Some(previous.into()),
            mode: "single".into(),
            share: 0.0,
            updated_by: change.actor.into(),
            updated_at: change.at,
            ..c
        })
    };
    let deployment = match (action, rollout.state.as_str()) {
        (Manual::Pause, "running") => {
            next.state = "paused".into();
            None
        }
        (Manual::Resume, "paused") => {
            next.state = "running".into();
            next.step_started_at = change.at;
            None
        }
        (Manual::Promote, _) => {
            next.state = "promoted".into();
            single(&rollout.candidate_version, &rollout.primary_version)
        }
        (Manual::Abort, _) => {
            next.state = "aborted".into();
            single(&rollout.primary_version, &rollout.candidate_version)
        }
        (action, state) => return Err(Invalid(format!("cannot {action:?} a rollout that is {state}").to_lowercase())),
    };
    let deployment = deployment.as_ref().map(|d| vigil_store::NextDeployment::from_read(d, current.as_ref()));
    if !store.advance_rollout(&rollout, &next, deployment, change).await? {
        return Err(Invalid(format!(
            "{model}'s rollout or deployment changed meanwhile; look again (`vigil rollout status`)"
        )));
    }
    Ok(next)
}

/// When the current step first began: `step_started_at`, unless the step was resumed, which
/// starts its clock again (the history's resume entries keep the first beginning).
fn step_began(rollout: &RolloutRow) -> DateTime<Utc> {
    rollout
        .decisions()
        .iter()
        .rev()
        .filter(|d| d["step"].as_i64() == Some(i64::from(rollout.step)))
        .find_map(|d| d["step_began"].as_str().and_then(|t| t.parse().ok()))
        .unwrap_or(rollout.step_started_at)
}

/// Judges running rollouts every `checks.evaluate_every` while `leading` (this monitor holds the
/// alerting lease), until `shutdown`.
pub async fn run<S: MonitorStore>(
    views: Views<S>,
    checks: RolloutChecks,
    leading: tokio::sync::watch::Receiver<bool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // The database's clock, as for a person's changes (`vigil rollout`): every time a
        // rollout records comes from one clock, whichever monitor leads.
        let round = async {
            let now = views.store.clock().await?;
            advance_all(&views, &checks, now).await
        };
        if *leading.borrow()
            && let Err(e) = round.await
        {
            tracing::warn!(error = %e, "rollout round failed; retrying next round");
        }
        tokio::select! {
            _ = tokio::time::sleep(checks.evaluate_every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(count: u64, errors: u64, latency_ms: f64, scores: &[f64]) -> Traffic {
        let mut w = RollupWindow { count, errors, ..Default::default() };
        for _ in 0..count {
            sketch::add(w.latency_ms.get_or_insert_default(), latency_ms);
        }
        for &s in scores {
            sketch::add(w.score.get_or_insert_default(), s);
        }
        Traffic { window: w, ..Default::default() }
    }

    const STEP: RolloutStep = RolloutStep {
        share: 0.1,
        mode: StepMode::Canary,
        min_duration_s: 60,
        min_requests: 100,
        max_duration_s: None,
        approval: false,
    };

    #[test]
    fn labels_outweigh_a_shifted_score_and_shadow_disagreement_but_not_a_drop_in_accuracy() {
        let checks = RolloutChecks::default();
        let low: Vec<f64> = (0..500).map(|i| 0.1 + (i % 10) as f64 * 0.01).collect();
        let high: Vec<f64> = (0..500).map(|i| 0.6 + (i % 10) as f64 * 0.01).collect();
        let shadow = RolloutStep { mode: StepMode::Shadow, share: 1.0, ..STEP };
        let labelled = |labeled, correct, scores: &[f64]| Traffic { labeled, correct, ..window(500, 0, 2.0, scores) };
        let retrained =
            |labeled, correct| Traffic { compared: 500, agreed: 350.0, ..labelled(labeled, correct, &high) };
        let judge = |c: &Traffic, p: &Traffic| analyse(&shadow, Duration::from_secs(60), c, p, &checks);
        // Few labels: the proxies judge, and a model answering otherwise is rolled back.
        let Analysis::Fail(list) = judge(&retrained(50, 45), &labelled(50, 35, &low)) else { panic!("few labels") };
        let failed: Vec<&str> = list.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["shadow_agreement", "score_ks"]);
        // Enough labels on both sides, and better ones: the proxies are reported, advisory.
        let Analysis::Pass(list) = judge(&retrained(250, 225), &labelled(250, 180, &low)) else { panic!("labels") };
        let advisory: Vec<&str> = list.iter().filter(|c| c.advisory).map(|c| c.name.as_str()).collect();
        assert_eq!(advisory, ["shadow_agreement", "score_ks"]);
        // ... but labels saying it is worse still fail it.
        let Analysis::Fail(list) = judge(&retrained(250, 150), &labelled(250, 225, &low)) else { panic!("worse") };
        assert!(list.iter().any(|c| c.name == "accuracy" && !c.passed), "{list:?}");
    }

    #[test]
    fn distributions_are_judged_on_a_few_candidate_answers_but_not_in_a_full_step() {
        let checks = RolloutChecks::default();
        let low: Vec<f64> = (0..5000).map(|i| 0.1 + (i % 10) as f64 * 0.01).collect();
        let high: Vec<f64> = (0..40).map(|i| 0.6 + (i % 10) as f64 * 0.01).collect();
        let failed = |step: &RolloutStep, c: &Traffic, p: &Traffic| match analyse(
            step,
            Duration::from_secs(60),
            c,
            p,
            &checks,
        ) {
            Analysis::Fail(list) => list.into_iter().filter(|c| !c.passed).map(|c| c.name).collect::<Vec<_>>(),
            Analysis::Pass(_) => Vec::new(),
            other => panic!("{other:?}"),
        };
        // A 1% step: 40 candidate answers, all high, against the primary's many low ones.
        let one_percent = RolloutStep { share: 0.01, min_requests: 30, ..STEP };
        let (few_high, many_low) = (window(40, 0, 2.0, &high), window(5000, 0, 2.0, &low));
        assert_eq!(failed(&one_percent, &few_high, &many_low), ["score_ks"]);
        // A 100% step: the primary's 150 answers are the step's first moments; nothing to compare.
        let all = RolloutStep { share: 1.0, min_requests: 30, ..STEP };
        let leftover = window(150, 0, 20.0, &low[..150]);
        assert!(failed(&all, &window(5000, 0, 2.0, &[0.7; 5000]), &leftover).is_empty());
        // Latency needs enough of both; the primary's 40 answers are too few.
        let slow = window(5000, 0, 50.0, &low);
        assert!(failed(&one_percent, &slow, &window(40, 0, 2.0, &low[..40])).is_empty());
    }

    #[test]
    fn a_drop_in_clicks_fails_even_where_searches_get_several_each() {
        let click = FeedbackCheck { kind: "click".into(), higher_is_better: true, max_change: 0.5 };
        let checks = RolloutChecks { feedback: vec![click], ..RolloutChecks::default() };
        let clicks = |n: u64| Traffic { feedback: [("click".to_string(), n)].into(), ..window(300, 0, 2.0, &[]) };
        // 3 clicks per search on the primary, 1.2 on the candidate.
        let Analysis::Fail(list) = analyse(&STEP, Duration::from_secs(60), &clicks(360), &clicks(900), &checks) else {
            panic!("fewer clicks must fail the step");
        };
        let click = list.iter().find(|c| c.name == "feedback.click").unwrap();
        assert!(!click.passed && click.candidate == Some(1.2) && click.primary == Some(3.0), "{click:?}");
        // 2.8 against 3: within the change allowed.
        assert!(matches!(
            analyse(&STEP, Duration::from_secs(60), &clicks(840), &clicks(900), &checks),
            Analysis::Pass(_)
        ));
    }

    #[test]
    fn a_shadow_is_not_judged_on_feedback_its_answers_never_got() {
        // The default checks: clicks must not fall. Nobody saw the shadow's answers, so it has none.
        let checks = RolloutChecks::default();
        let clicks = |n: u64| Traffic { feedback: [("click".to_string(), n)].into(), ..window(500, 0, 2.0, &[]) };
        let shadow = RolloutStep { mode: StepMode::Shadow, share: 1.0, ..STEP };
        let Analysis::Pass(list) = analyse(&shadow, Duration::from_secs(60), &clicks(0), &clicks(50), &checks) else {
            panic!("a shadow step without clicks of its own must pass");
        };
        assert!(list.iter().all(|c| !c.name.starts_with("feedback.")), "{list:?}");
        // The same traffic in a canary step, where users saw the candidate's answers, fails.
        let Analysis::Fail(list) = analyse(&STEP, Duration::from_secs(60), &clicks(0), &clicks(50), &checks) else {
            panic!("a canary without clicks must fail");
        };
        assert!(list.iter().any(|c| c.name == "feedback.click" && !c.passed), "{list:?}");
    }

    #[test]
    fn checks_that_would_judge_nothing_are_refused() {
        assert!(RolloutChecks::default().validate().is_ok());
        let refused = |checks: RolloutChecks| checks.validate().unwrap_err().to_string();
        let e = refused(RolloutChecks { significance: 0.0, ..Default::default() });
        assert!(e.contains("rollouts.significance = 0"), "{e}");
        let e = refused(RolloutChecks { max_error_rate_increase: f64::NAN, ..Default::default() });
        assert!(e.contains("max_error_rate_increase = NaN"), "{e}");
        let e = refused(RolloutChecks { evaluate_every: Duration::ZERO, ..Default::default() });
        assert!(e.contains("evaluate_every"), "{e}");
        let click = FeedbackCheck { kind: "click".into(), higher_is_better: true, max_change: -0.1 };
        let e = refused(RolloutChecks { feedback: vec![click], ..Default::default() });
        assert!(e.contains("click = -0.1"), "{e}");
    }

    #[test]
    fn a_step_waits_for_its_time_and_its_requests() {
        let (c, p) = (window(500, 0, 2.0, &[]), window(5000, 0, 2.0, &[]));
        let checks = RolloutChecks::default();
        assert!(
            matches!(analyse(&STEP, Duration::from_secs(59), &c, &p, &checks), Analysis::Wait(w) if w.contains("59s"))
        );
        let few = window(99, 0, 2.0, &[]);
        assert!(
            matches!(analyse(&STEP, Duration::from_secs(60), &few, &p, &checks), Analysis::Wait(w) if w.contains("99 of"))
        );
        assert!(matches!(analyse(&STEP, Duration::from_secs(60), &c, &p, &checks), Analysis::Pass(_)));
        // A plan stored without a request minimum still waits for the candidate's first answer
        // while little traffic was due to it.
        let blind = RolloutStep { min_requests: 0, ..STEP };
        let none = window(0, 0, 2.0, &[]);
        let quiet = window(80, 0, 2.0, &[]);
        assert!(
            matches!(analyse(&blind, Duration::from_secs(60), &none, &quiet, &checks), Analysis::Wait(w) if w.contains("0 of the step's 1"))
        );
    }

    #[test]
    fn a_candidate_answering_next_to_nothing_of_its_share_is_for_a_person() {
        let checks = RolloutChecks::default();
        let verdict = |step: &RolloutStep, c: u64, p: u64| {
            analyse(step, Duration::from_secs(60), &window(c, 0, 2.0, &[]), &window(p, 0, 2.0, &[]), &checks)
        };
        // A 10% canary of at least 100 requests: 99 where 889 were due (8,000 to the primary) is
        // short; 3 where 1,000 were due is silent.
        assert!(matches!(verdict(&STEP, 99, 8_000), Analysis::Wait(_)));
        let Analysis::Silent(why) = verdict(&STEP, 3, 9_000) else { panic!("3 of 1,000 due") };
        assert!(why.contains("answered 3 requests where its share implies about 1000"), "{why}");
        // Below ten times the minimum due, waiting goes on (few keys, little traffic).
        assert!(matches!(verdict(&STEP, 0, 8_990), Analysis::Wait(_)));
        // A whole canary is due what the primary had before it; a shadow its share mirrored.
        let whole = RolloutStep { share: 1.0, ..STEP };
        assert!(matches!(verdict(&whole, 0, 1_000), Analysis::Silent(_)));
        assert!(matches!(verdict(&whole, 0, 999), Analysis::Wait(_)));
        let shadow = RolloutStep { mode: StepMode::Shadow, share: 0.5, ..STEP };
        assert!(matches!(verdict(&shadow, 0, 2_000), Analysis::Silent(_)));
        assert!(matches!(verdict(&shadow, 0, 1_999), Analysis::Wait(_)));
    }

    #[test]
    fn errors_latency_and_shifted_scores_fail_the_step() {
        let checks = RolloutChecks::default();
        let judge = |c: &Traffic, p: &Traffic| match analyse(&STEP, Duration::from_secs(60), c, p, &checks) {
            Analysis::Fail(list) => list.into_iter().filter(|c| !c.passed).map(|c| c.name).collect::<Vec<_>>(),
            other => panic!("expected a failure, got {other:?}"),
        };
        let low: Vec<f64> = (0..500).map(|i| 0.1 + (i % 10) as f64 * 0.01).collect();
        let high: Vec<f64> = (0..500).map(|i| 0.6 + (i % 10) as f64 * 0.01).collect();
        assert_eq!(judge(&window(500, 30, 2.0, &low), &window(5000, 10, 2.0, &low)), ["error_rate"]);
        assert_eq!(judge(&window(500, 0, 10.0, &low), &window(5000, 0, 2.0, &low)), ["latency_p99_ms"]);
        assert_eq!(judge(&window(500, 0, 2.0, &high), &window(5000, 0, 2.0, &low)), ["score_ks"]);
        let mut nulls = window(500, 0, 2.0, &low);
        nulls.window.nulls = 50;
        assert_eq!(judge(&nulls, &window(5000, 0, 2.0, &low)), ["null_rate"]);
        let mut fewer_clicks = window(500, 0, 2.0, &low);
        fewer_clicks.feedback.insert("click".into(), 20);
        let mut clicks = window(5000, 0, 2.0, &low);
        clicks.feedback.insert("click".into(), 500);
        assert_eq!(judge(&fewer_clicks, &clicks), ["feedback.click"], "click-through fell from 10% to 4%");
        let wrong = Traffic { labeled: 400, correct: 320, ..window(500, 0, 2.0, &low) };
        let right = Traffic { labeled: 4000, correct: 3800, ..window(5000, 0, 2.0, &low) };
        assert_eq!(judge(&wrong, &right), ["accuracy"], "80% against 95% of labels right");
        // Each failure is said the way it failed: below a floor, or above a ceiling.
        let said = |c: &Traffic, p: &Traffic| match analyse(&STEP, Duration::from_secs(60), c, p, &checks) {
            Analysis::Fail(list) => list.iter().filter(|c| !c.passed).map(Check::describe_failure).collect::<Vec<_>>(),
            other => panic!("expected a failure, got {other:?}"),
        };
        let floor = 0.95 - checks.max_accuracy_drop;
        assert_eq!(said(&wrong, &right), [format!("accuracy 0.8000 < {floor:.4}")]);
        assert!(
            said(&fewer_clicks, &clicks)[0].starts_with("feedback.click 0.0400 < "),
            "{:?}",
            said(&fewer_clicks, &clicks)
        );
        assert!(said(&window(500, 30, 2.0, &low), &window(5000, 10, 2.0, &low))[0].starts_with("error_rate 0.0600 > "));
        let overruled = Traffic { reviewed: 200, overridden: 60, ..window(500, 0, 2.0, &low) };
        let trusted = Traffic { reviewed: 2000, overridden: 100, ..window(5000, 0, 2.0, &low) };
        assert_eq!(judge(&overruled, &trusted), ["review_overrides"], "reviewers overrule 30% against 5%");
        let mut other_inputs = window(500, 0, 2.0, &low);
        let mut inputs = window(5000, 0, 2.0, &low);
        for (w, offset) in [(&mut other_inputs.window, 60.0), (&mut inputs.window, 120.0)] {
            let f = w.features.entry("brightness".into()).or_default();
            for i in 0..500 {
                sketch::add(f.sketch.get_or_insert_default(), offset + (i % 20) as f64);
            }
        }
        assert_eq!(judge(&other_inputs, &inputs), ["input_ks.brightness"], "the candidate sees other inputs");
        // 2 ms on 2 ms: within the slack, and a slightly different score mix passes.
        let similar: Vec<f64> = (0..500).map(|i| 0.1 + (i % 11) as f64 * 0.01).collect();
        let ok = analyse(
            &STEP,
            Duration::from_secs(60),
            &window(500, 0, 3.0, &similar),
            &window(5000, 0, 2.0, &low),
            &checks,
        );
        assert!(matches!(ok, Analysis::Pass(_)), "{ok:?}");
    }

    #[test]
    fn refused_inputs_are_judged_side_by_side_and_are_not_server_errors() {
        let checks = RolloutChecks::default();
        let refusing = |count: u64, refused: u64| {
            let mut t = window(count, refused, 2.0, &[]);
            t.window.invalid_inputs = refused;
            t
        };
        let failed = |list: &[Check]| list.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect::<Vec<_>>();
        // A 10% canary refusing 6% of its inputs where the primary refuses 0.2%: it refuses what
        // the primary accepts.
        match analyse(&STEP, Duration::from_secs(60), &refusing(500, 30), &refusing(5000, 10), &checks) {
            Analysis::Fail(list) => assert_eq!(failed(&list), ["invalid_input_rate"]),
            other => panic!("expected a failure, got {other:?}"),
        }
        // In a 100% step the primary's traffic is from before it: a client sending bad input
        // since then is no fault of the candidate's. Its server errors still count.
        let whole = RolloutStep { share: 1.0, ..STEP };
        let bad_client = analyse(&whole, Duration::from_secs(60), &refusing(500, 30), &refusing(5000, 10), &checks);
        let Analysis::Pass(list) = bad_client else { panic!("refused inputs in a 100% step: {bad_client:?}") };
        assert!(!list.iter().any(|c| c.name == "invalid_input_rate"), "{list:?}");
        match analyse(&whole, Duration::from_secs(60), &window(500, 30, 2.0, &[]), &refusing(5000, 10), &checks) {
            Analysis::Fail(list) => assert_eq!(failed(&list), ["error_rate"]),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn an_excess_seen_on_few_requests_is_noise_and_on_many_it_is_not() {
        let checks = RolloutChecks::default();
        let judged = |c: &Traffic, p: &Traffic| analyse(&STEP, Duration::from_secs(60), c, p, &checks);
        // 2.5% against 1% errors: past the limit (2%), but on 120 requests p = 0.16 (Fisher's:
        // 1.4 errors expected of the candidate).
        let few = judged(&window(120, 3, 2.0, &[]), &window(900, 9, 2.0, &[]));
        assert!(matches!(few, Analysis::Pass(_)), "{few:?}");
        // One error in a 30-request step against 10 in 2,000: the z-test's p = 0.018 would roll
        // back; the exact test's p = 0.15 does not.
        let short = RolloutStep { min_requests: 30, ..STEP };
        let one =
            analyse(&short, Duration::from_secs(60), &window(30, 1, 2.0, &[]), &window(2000, 10, 2.0, &[]), &checks);
        assert!(matches!(one, Analysis::Pass(_)), "{one:?}");
        let many = judged(&window(1200, 30, 2.0, &[]), &window(9000, 90, 2.0, &[]));
        assert!(matches!(many, Analysis::Fail(_)), "{many:?}");
    }
}
