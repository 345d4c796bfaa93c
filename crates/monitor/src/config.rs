//! The monitor's configuration file (TOML): rollup resolutions, drift tests, alarm rules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vigil_drift::DriftConfig;
use vigil_proto::vigil::v1::Variant;

use crate::alarms::{Comparator, Metric};
use crate::views::Baseline;

/// Everything configurable about monitoring; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// The model repository: each `<model>/<version>/` with `model.toml` and `reference.json`.
    pub models: PathBuf,
    pub rollups: RollupConfig,
    /// Drift tests: `[drift.default]` for every model, `[drift.models.<name>]` for one.
    pub drift: DriftSettings,
    pub alerting: AlertingConfig,
    /// The control plane servers follow (`vigil.v1.Control` on the gRPC port).
    pub control: ControlConfig,
    /// The rollout controller's checks and how often it judges.
    pub rollouts: crate::rollout::RolloutChecks,
    /// Retraining jobs: where they work, and each model's recipe, triggers and rollout.
    pub retraining: crate::retrain::RetrainingConfig,
    /// TLS on both ports and tokens for every API and page (`[security]`).
    pub security: vigil_security::SecurityConfig,
    /// How long records are kept (`[retention]`; by default, forever).
    pub retention: crate::retention::RetentionConfig,
    /// The gRPC APIs' request limits (`[limits]`, the servers' keys; see [`default_limits`]).
    #[serde(deserialize_with = "limits")]
    pub limits: vigil_server::Limits,
}

/// The monitor's request limits by default: the servers', with a minute for a unary call (an
/// analyst's query may read many rows).
pub fn default_limits() -> vigil_server::Limits {
    vigil_server::Limits { request_timeout_ms: 60_000, ..Default::default() }
}

/// `[limits]`: the keys given, over [`default_limits`].
fn limits<'de, D: Deserializer<'de>>(deserializer: D) -> Result<vigil_server::Limits, D::Error> {
    use serde::de::Error;
    let given = toml::Table::deserialize(deserializer)?;
    let defaults = toml::Value::try_from(default_limits()).map_err(D::Error::custom)?;
    let toml::Value::Table(mut merged) = defaults else { return Err(D::Error::custom("limits are a table")) };
    merged.extend(given);
    toml::Value::Table(merged).try_into().map_err(D::Error::custom)
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            models: PathBuf::from("models"),
            rollups: RollupConfig::default(),
            drift: DriftSettings::default(),
            alerting: AlertingConfig::default(),
            control: ControlConfig::default(),
            rollouts: crate::rollout::RolloutChecks::default(),
            retraining: crate::retrain::RetrainingConfig::default(),
            security: vigil_security::SecurityConfig::default(),
            retention: crate::retention::RetentionConfig::default(),
            limits: default_limits(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// How often the deployments are read for the servers watching them; a change reaches
    /// them within this plus their network delay.
    #[serde(deserialize_with = "duration")]
    pub poll: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { poll: Duration::from_millis(500) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollupConfig {
    /// Window widths in seconds, finest first; each a multiple of the first.
    pub resolutions: Vec<u32>,
    /// How often upkeep looks for new predictions once caught up.
    #[serde(deserialize_with = "duration")]
    pub poll: Duration,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self { resolutions: crate::rollup::DEFAULT_RESOLUTIONS.to_vec(), poll: Duration::from_secs(1) }
    }
}

/// `[drift.default]` and `[drift.models.<name>]`: a model's section sets only what differs from
/// the default section, which sets what differs from the built-in defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "DriftSections")]
pub struct DriftSettings {
    pub defaults: DriftConfig,
    pub models: HashMap<String, DriftConfig>,
}

/// The sections as written, before a model's is laid over the default one.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DriftSections {
    #[serde(rename = "default")]
    defaults: toml::Table,
    models: HashMap<String, toml::Table>,
}

impl TryFrom<DriftSections> for DriftSettings {
    type Error = String;

    fn try_from(sections: DriftSections) -> Result<Self, String> {
        let config = |table: toml::Table, section: &str| {
            toml::Value::Table(table).try_into::<DriftConfig>().map_err(|e| format!("[{section}]: {e}"))
        };
        let models = sections
            .models
            .into_iter()
            .map(|(name, own)| {
                let mut merged = sections.defaults.clone();
                merged.extend(own);
                let section = format!("drift.models.{name}");
                config(merged, &section).map(|c| (name, c))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { defaults: config(sections.defaults, "drift.default")?, models })
    }
}

impl DriftSettings {
    /// The drift configuration of one model.
    pub fn for_model(&self, model: &str) -> &DriftConfig {
        self.models.get(model).unwrap_or(&self.defaults)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// How often every rule is evaluated.
    #[serde(deserialize_with = "duration")]
    pub evaluate_every: Duration,
    /// Where alarm transitions are POSTed as JSON; none: the log line only.
    pub webhook_url: Option<String>,
    /// Per delivery attempt; a webhook slower than this counts as failed and is retried.
    #[serde(deserialize_with = "duration")]
    pub webhook_timeout: Duration,
    /// Longest wait between retries of a failing webhook.
    #[serde(deserialize_with = "duration")]
    pub webhook_max_backoff: Duration,
    /// Attempts per notification before it is given up (logged, counted, kept in the history),
    /// so that a receiver refusing one notification for good does not hold back the later ones.
    pub webhook_max_attempts: u32,
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            evaluate_every: Duration::from_secs(15),
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_max_backoff: Duration::from_secs(60),
            webhook_max_attempts: 20,
            rules: Vec::new(),
        }
    }
}

/// One alarm rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// See [`Metric`] for the names.
    pub metric: String,
    /// One model; unset: every model with traffic.
    pub model: Option<String>,
    /// One variant of the model's traffic: `primary`, `canary` or `shadow`; unset: all of it.
    pub variant: Option<String>,
    /// The trailing window the metric is computed over.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`.
    pub comparator: String,
    pub threshold: f64,
    /// How long the condition must hold before the alarm fires.
    #[serde(rename = "for", default, deserialize_with = "duration")]
    pub for_duration: Duration,
    /// How long a firing alarm keeps firing after its condition stops holding: a condition that
    /// holds again within this time never resolved (a drift test at a window's edge, late
    /// records). Unset: it resolves at the first round the condition does not hold.
    #[serde(default, deserialize_with = "duration")]
    pub keep_firing_for: Duration,
    /// For label metrics (accuracy, precision, recall, label_coverage, word_error_rate): judge
    /// the predictions of the window this long ago, e.g. "1d" where inspectors label a day's
    /// parts the next morning; the window now would have none labelled yet.
    #[serde(default, deserialize_with = "duration")]
    pub label_delay: Duration,
    #[serde(default = "default_severity")]
    pub severity: String,
    /// For drift metrics: compare with predictions logged in this window (RFC 3339 times, both
    /// or neither) instead of the training reference, e.g. last month's production traffic.
    pub baseline_since: Option<String>,
    pub baseline_until: Option<String>,
    /// For drift metrics: compare with the same window this long before, e.g. "1d" (the same
    /// hour yesterday) or "7d"; for models shipped without a training reference.
    #[serde(default, deserialize_with = "optional_duration")]
    pub baseline_offset: Option<Duration>,
    /// What the monitor does while the alarm fires: `capture` (the servers capture at least
    /// `capture_rate` of the model's inputs), `retrain` (queue a retraining job of the rule's
    /// model once enough new labelled items exist; see `[retraining.models.<model>]`), then
    /// `rollout` (roll the retrained candidate out under the controller's analysis).
    #[serde(default)]
    pub actions: Vec<String>,
    /// The share of inputs captured while the alarm fires (with the `capture` action).
    pub capture_rate: Option<f64>,
}

fn default_severity() -> String {
    "warning".into()
}

/// A rule checked and parsed.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub metric_name: String,
    pub metric: Metric,
    pub model: Option<String>,
    /// `vigil.v1.Variant` value; None: every variant.
    pub variant: Option<i16>,
    pub window: Duration,
    pub comparator: Comparator,
    pub threshold: f64,
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    /// Label metrics judge the window this long before now.
    pub label_delay: Duration,
    pub severity: String,
    pub baseline: Baseline,
    /// When set, the baseline is the evaluated window shifted back by this much.
    pub baseline_offset: Option<Duration>,
    /// Retrain the model while the alarm fires.
    pub retrain: bool,
    /// ... and roll the candidate out when the job succeeds.
    pub rollout: bool,
    /// Raise the model's capture rate to this while the alarm fires.
    pub capture_rate: Option<f64>,
}

impl MonitorConfig {
    /// Reads a config file; errors name the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks everything that deserialising does not: resolutions and rules.
    pub fn validate(&self) -> anyhow::Result<()> {
        let r = &self.rollups.resolutions;
        if r.is_empty() || r.contains(&0) || r.windows(2).any(|w| w[1] <= w[0] || w[1] % w[0] != 0) {
            anyhow::bail!(
                "rollups.resolutions {r:?}: give one or more widths in seconds, ascending, each a multiple of the one before"
            );
        }
        self.limits.validate().map_err(anyhow::Error::msg)?;
        self.retraining.validate()?;
        self.retention.validate(r)?;
        self.rollouts.validate()?;
        // Retraining that copies captured inputs needs every one in its window: inputs expired
        // sooner would refuse every job's dataset.
        if let (Some(_), Some(days)) = (&self.retraining.captures, self.retention.captures_days) {
            let kept = std::time::Duration::from_secs(u64::from(days) * 86_400);
            for (name, model) in &self.retraining.models {
                if model.dataset_window > kept {
                    anyhow::bail!(
                        "retraining.models.{name}.dataset_window ({}) is longer than retention.captures_days ({days} days): \
                         its datasets would miss expired inputs and be refused; shorten the window or keep captures longer",
                        humantime::format_duration(model.dataset_window)
                    );
                }
            }
        }
        if self.alerting.webhook_max_attempts == 0 {
            anyhow::bail!("alerting.webhook_max_attempts must be at least 1");
        }
        let rules = self.rules()?;
        self.check_rules_are_kept(&rules)
    }

    /// Every rule reads back at most `label_delay + window + baseline_offset`, from the start of
    /// the finest window holding that time: the rollups of every resolution with a retention
    /// limit, and the raw rows some metrics read (predictions with their labels or feedback),
    /// must be kept that long, else the expired edges of its windows would silently shrink what
    /// it judges.
    fn check_rules_are_kept(&self, rules: &[Rule]) -> anyhow::Result<()> {
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let limits = self.retention.rollup_limits(&self.rollups.resolutions)?;
        let finest = Duration::from_secs(self.rollups.resolutions.iter().copied().min().unwrap_or(1).into());
        for rule in rules {
            let reach = rule.label_delay + rule.window + rule.baseline_offset.unwrap_or_default();
            let needed = reach + finest;
            let too_short = |what: &str, kept: u32, needed: Duration| {
                anyhow::anyhow!(
                    "alarm rule '{}' reads {} back (label_delay + window + baseline_offset), but \
                     retention.{what} keeps {kept} days: keep them at least {} days or shorten the rule",
                    rule.name,
                    humantime::format_duration(reach),
                    needed.as_secs().div_ceil(86_400)
                )
            };
            for &(resolution, kept) in &limits {
                if days(kept) < needed {
                    return Err(too_short(&format!("rollups_days.{resolution}"), kept, needed));
                }
            }
            let r = &self.retention;
            // Labels and feedback count from a day before their predictions' window (a clock
            // behind the server's).
            let skewed = needed + Duration::from_secs(vigil_store::monitoring::LATE_CLOCK_ALLOWANCE_S.unsigned_abs());
            let tables = match &rule.metric {
                m if m.needs_labels() => {
                    vec![("predictions_days", r.predictions_days, needed), ("labels_days", r.labels_days, skewed)]
                }
                Metric::FeedbackRate(_) => {
                    vec![("predictions_days", r.predictions_days, needed), ("feedback_days", r.feedback_days, skewed)]
                }
                Metric::ShadowAgreement => vec![("predictions_days", r.predictions_days, needed)],
                _ => Vec::new(),
            };
            for (what, kept, needed) in tables {
                if let Some(kept) = kept.filter(|&kept| days(kept) < needed) {
                    return Err(too_short(what, kept, needed));
                }
            }
        }
        Ok(())
    }

    /// The alarm rules, checked: unknown metrics, comparators or severities are errors.
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let mut seen = std::collections::HashSet::new();
        self.alerting
            .rules
            .iter()
            .map(|r| {
                let bad = |what: String| anyhow::anyhow!("alarm rule '{}': {what}", r.name);
                if r.name.is_empty() || !seen.insert(r.name.clone()) {
                    return Err(bad("names must be unique and non-empty".into()));
                }
                if r.window.is_zero() {
                    return Err(bad("window must be longer than 0s".into()));
                }
                // Read in windows of the coarsest resolution at most (the views refuse more).
                let coarsest = self.rollups.resolutions.iter().copied().max().unwrap_or(60);
                let windows = r.window.as_secs() / u64::from(coarsest.max(1));
                if windows > crate::views::MAX_WINDOWS_PER_READ as u64 {
                    return Err(bad(format!(
                        "window {} holds {windows} windows of the coarsest rollup ({coarsest} s), more than {}: \
                         shorten it or add a coarser resolution to rollups.resolutions",
                        humantime::format_duration(r.window),
                        crate::views::MAX_WINDOWS_PER_READ
                    )));
                }
                if !["info", "warning", "critical"].contains(&r.severity.as_str()) {
                    return Err(bad(format!("severity '{}' is not info, warning or critical", r.severity)));
                }
                let time = |field: &str, v: &str| {
                    chrono::DateTime::parse_from_rfc3339(v)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| bad(format!("{field} '{v}' is not an RFC 3339 time ({e})")))
                };
                let baseline = match (&r.baseline_since, &r.baseline_until) {
                    (None, None) => Baseline::Training,
                    (Some(a), Some(b)) => {
                        let (a, b) = (time("baseline_since", a)?, time("baseline_until", b)?);
                        if a >= b {
                            return Err(bad("baseline_since must be before baseline_until".into()));
                        }
                        Baseline::Window(a, b)
                    }
                    _ => return Err(bad("give both baseline_since and baseline_until, or neither".into())),
                };
                if let Some(offset) = r.baseline_offset {
                    if baseline != Baseline::Training {
                        return Err(bad("give baseline_offset or baseline_since/baseline_until, not both".into()));
                    }
                    if offset < r.window {
                        return Err(bad(format!(
                            "baseline_offset {} is shorter than the window {}: the baseline would overlap it",
                            humantime::format_duration(offset),
                            humantime::format_duration(r.window)
                        )));
                    }
                }
                let variant = match r.variant.as_deref() {
                    None => None,
                    Some("primary") => Some(Variant::Primary as i16),
                    Some("canary") => Some(Variant::Canary as i16),
                    Some("shadow") => Some(Variant::Shadow as i16),
                    Some(other) => return Err(bad(format!("variant '{other}' is not primary, canary or shadow"))),
                };
                let (mut retrain, mut rollout, mut capture) = (false, false, false);
                for action in &r.actions {
                    match action.as_str() {
                        "retrain" => retrain = true,
                        "rollout" => rollout = true,
                        "capture" => capture = true,
                        other => return Err(bad(format!("action '{other}' is not capture, retrain or rollout"))),
                    }
                }
                let capture_rate = match (capture, r.capture_rate) {
                    (true, Some(rate)) if rate > 0.0 && rate <= 1.0 => Some(rate),
                    (true, _) => return Err(bad("the capture action needs capture_rate in (0, 1]".into())),
                    (false, Some(_)) => return Err(bad("capture_rate goes with the capture action".into())),
                    (false, None) => None,
                };
                if rollout && !retrain {
                    return Err(bad("the rollout action rolls out what retrain made: give both".into()));
                }
                if retrain {
                    let model =
                        r.model.as_deref().ok_or_else(|| bad("the retrain action needs the rule's model".into()))?;
                    if !self.retraining.models.contains_key(model) {
                        return Err(bad(format!("the retrain action needs [retraining.models.{model}] (its recipe)")));
                    }
                }
                let metric: Metric = r.metric.parse().map_err(bad)?;
                if !r.label_delay.is_zero() && !metric.needs_labels() {
                    return Err(bad(format!(
                        "label_delay is for label metrics (accuracy, precision, recall, label_coverage, \
                         word_error_rate), not {}",
                        r.metric
                    )));
                }
                Ok(Rule {
                    retrain,
                    rollout,
                    capture_rate,
                    name: r.name.clone(),
                    variant,
                    metric_name: r.metric.clone(),
                    metric,
                    model: r.model.clone(),
                    window: r.window,
                    comparator: r.comparator.parse().map_err(bad)?,
                    threshold: r.threshold,
                    for_duration: r.for_duration,
                    keep_firing_for: r.keep_firing_for,
                    label_delay: r.label_delay,
                    severity: r.severity.clone(),
                    baseline,
                    baseline_offset: r.baseline_offset,
                })
            })
            .collect()
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("'{s}' is not a duration ({e}); e.g. 30s, 5m, 1h")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_loads_with_its_speech_rules() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitor.toml");
        let config = MonitorConfig::load(&path).unwrap();
        let rules = config.rules().unwrap();
        let pitch = rules.iter().find(|r| r.name == "voice-pitch-drift").unwrap();
        assert_eq!(pitch.metric, Metric::DriftDetected("pitch_hz".into()));
        assert_eq!(pitch.baseline_offset, Some(Duration::from_secs(86_400)));
        let wer = rules.iter().find(|r| r.name == "word-error-rate").unwrap();
        assert_eq!(wer.metric, Metric::WordErrorRate);
        // Rules for the line's classifier do not judge the recogniser by a classifier's yardstick.
        let accuracy = rules.iter().find(|r| r.name == "accuracy-drop").unwrap();
        assert_eq!(accuracy.model.as_deref(), Some("scratch-detector"));
        assert_eq!(accuracy.keep_firing_for, Duration::ZERO);
        let brightness = rules.iter().find(|r| r.name == "brightness-drift").unwrap();
        assert_eq!(brightness.keep_firing_for, Duration::from_secs(600));
    }

    #[test]
    fn limits_take_the_keys_given_over_the_monitors_defaults() {
        let none: MonitorConfig = toml::from_str("").unwrap();
        assert_eq!(none.limits, default_limits());
        assert_eq!(none.limits.request_timeout_ms, 60_000, "a minute for an analyst's query");
        let some: MonitorConfig = toml::from_str("[limits]\nmax_message_bytes = 4096\n").unwrap();
        assert_eq!(some.limits.max_message_bytes, 4096);
        assert_eq!(some.limits.request_timeout_ms, 60_000, "the keys not given keep the monitor's defaults");
        let unknown = toml::from_str::<MonitorConfig>("[limits]\nmax_bytes = 1\n").unwrap_err().to_string();
        assert!(unknown.contains("max_bytes"), "{unknown}");
        let zero: MonitorConfig = toml::from_str("[limits]\nmax_concurrent_requests = 0\n").unwrap();
        let refused = zero.validate().unwrap_err().to_string();
        assert!(refused.contains("limits.max_concurrent_requests"), "{refused}");
    }

    #[test]
    fn a_model_drift_section_sets_only_what_differs_from_the_default_section() {
        let config: MonitorConfig =
            toml::from_str("[drift.default]\npsi = 0.25\nmethod = \"psi\"\n[drift.models.cam]\ndataset_share = 0.3\n")
                .unwrap();
        let cam = config.drift.for_model("cam");
        assert_eq!((cam.psi, cam.dataset_share, cam.method), (0.25, 0.3, vigil_drift::Method::Psi));
        assert_eq!(config.drift.for_model("other").dataset_share, 0.5);
        let wrong = toml::from_str::<MonitorConfig>("[drift.models.cam]\npsi = \"high\"\n").unwrap_err().to_string();
        assert!(wrong.contains("drift.models.cam"), "{wrong}");
    }

    #[test]
    fn a_rule_window_too_long_for_the_stored_rollups_is_refused() {
        let config: MonitorConfig = toml::from_str(
            "[rollups]\nresolutions = [1]\n[[alerting.rules]]\nname = \"slow\"\nmetric = \"error_rate\"\n\
             window = \"7d\"\ncomparator = \">\"\nthreshold = 0.1\n",
        )
        .unwrap();
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("alarm rule 'slow': window 7days holds 604800 windows"), "{e}");
    }

    #[test]
    fn retention_must_keep_what_a_rule_reads_back() {
        let config = |retention: &str| -> MonitorConfig {
            toml::from_str(&format!(
                "[rollups]\nresolutions = [60, 3600]\n[retention]\n{retention}\n\
                 [[alerting.rules]]\nname = \"late-accuracy\"\nmetric = \"accuracy\"\nwindow = \"1d\"\n\
                 label_delay = \"2d\"\ncomparator = \"<\"\nthreshold = 0.9\n\
                 [[alerting.rules]]\nname = \"drift\"\nmetric = \"drift.score\"\nwindow = \"1h\"\n\
                 baseline_offset = \"7d\"\ncomparator = \">\"\nthreshold = 0.5\n"
            ))
            .unwrap()
        };
        let e = config("rollups_days = { 60 = 3 }").validate().unwrap_err().to_string();
        assert!(
            e.contains("alarm rule 'late-accuracy' reads 3days back")
                && e.contains("retention.rollups_days.60 keeps 3 days"),
            "{e}"
        );
        assert!(e.contains("at least 4 days"), "a minute more than three days: {e}");
        let e = config("rollups_days = { 60 = 4 }").validate().unwrap_err().to_string();
        assert!(e.contains("alarm rule 'drift' reads 7days 1h back"), "{e}");
        config("rollups_days = { 60 = 8 }").validate().unwrap();
        // Every resolution is read from the finest window's start: an hour's rollups need no
        // more than the minute's.
        config("rollups_days = { 60 = 8, 3600 = 8 }").validate().unwrap();
        let e = config("rollups_days = { 60 = 8, 3600 = 7 }").validate().unwrap_err().to_string();
        assert!(e.contains("retention.rollups_days.3600 keeps 7 days"), "{e}");
        // The label metric reads predictions and labels from three days and a minute back.
        let e = config("predictions_days = 3").validate().unwrap_err().to_string();
        assert!(e.contains("'late-accuracy'") && e.contains("retention.predictions_days keeps 3 days"), "{e}");
        let e = config("labels_days = 1").validate().unwrap_err().to_string();
        assert!(e.contains("retention.labels_days keeps 1 days"), "{e}");
        // Labels from a day earlier still count (a labeller's clock behind).
        let e = config("labels_days = 4").validate().unwrap_err().to_string();
        assert!(e.contains("retention.labels_days keeps 4 days: keep them at least 5 days"), "{e}");
        // The drift rule reads rollups only: a week of them, four days of rows.
        config("predictions_days = 4\nlabels_days = 5").validate().unwrap();
    }

    #[test]
    fn captured_inputs_must_outlive_the_dataset_window_that_copies_them() {
        let config = |days: u32| -> MonitorConfig {
            toml::from_str(&format!(
                "[retention]\ncaptures_days = {days}\ncapture_store = \"file:///tmp/c\"\n\
                 [retraining]\ncaptures = \"file:///tmp/c\"\n\
                 [retraining.models.scratch-detector]\nrecipe = [\"python\", \"train.py\"]\ndataset_window = \"30d\"\n"
            ))
            .unwrap()
        };
        let e = config(14).validate().unwrap_err().to_string();
        assert!(e.contains("dataset_window (30days) is longer than retention.captures_days (14 days)"), "{e}");
        config(30).validate().unwrap();
    }
}
