//! Retraining: jobs that run a model's training recipe on its logged, labelled data, register the
//! result as a candidate and (when asked) roll it out. Jobs are queued by a person
//! (`vigil retrain`) or by an alarm rule with the `retrain` action ([`trigger`]), kept in the
//! store, and run one at a time by the monitor holding the alerting lease ([`runner`]).
//!
//! A recipe is a program run as `<recipe...> --out DIR --version N --dataset DIR`: it trains on
//! its base data plus the dataset's labelled rows, evaluates on its original holdout and on a
//! holdout of the new rows, and writes `model.onnx`, `model.toml` and `metrics.json` into `DIR`.
//! Lines `progress <0..1> <what>` on its output report progress; the rest is the job's log.

mod output;
pub mod runner;
pub mod trigger;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vigil_store::monitoring::LEASE_SILENCE_RELEASE;
use vigil_store::{RolloutStep, StepMode};

use crate::config::duration;

/// The longest `retraining.lease_timeout`: a runner notices it at its next check, which may take
/// two lease checks (`LEASE_CHECK_TIMEOUT` each), well before the database frees its lease.
pub const MAX_LEASE_TIMEOUT: Duration = LEASE_SILENCE_RELEASE.saturating_sub(Duration::from_secs(30));

/// `[retraining]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainingConfig {
    /// Who runs queued jobs: `monitor` (the one holding the alerting lease) or `external`
    /// (`vigil retrain work`, e.g. a Kubernetes Job, on a machine with the training stack).
    pub runner: RunnerPlace,
    /// How often the runner looks for queued jobs.
    #[serde(deserialize_with = "duration")]
    pub poll: Duration,
    /// Where exported datasets go (`<workdir>/datasets/`).
    pub workdir: PathBuf,
    /// The servers' capture store: a job's dataset carries the captured inputs of its rows
    /// (`file:///dir`, a path, or `s3://bucket/prefix`); unset: the rows only.
    pub captures: Option<String>,
    /// The model repository new versions are written to (`<output>/<model>/<version>/`), which
    /// the servers load from or fetch from the control plane; default: the monitor's `models`.
    pub output: Option<PathBuf>,
    /// A job running longer is stopped and failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// A runner whose database does not confirm its lease for this long (a network partition)
    /// stops its job and records it failed: the database may free the lease for another
    /// runner soon after. At most [`MAX_LEASE_TIMEOUT`].
    #[serde(deserialize_with = "duration")]
    pub lease_timeout: Duration,
    /// The most of a recipe's output kept as the job's log (its tail), in bytes.
    pub max_log_bytes: usize,
    /// Each retrainable model: `[retraining.models.<name>]`.
    pub models: BTreeMap<String, ModelRetraining>,
}

impl Default for RetrainingConfig {
    fn default() -> Self {
        Self {
            runner: RunnerPlace::Monitor,
            poll: Duration::from_secs(2),
            workdir: PathBuf::from("retraining"),
            captures: None,
            output: None,
            timeout: Duration::from_secs(3600),
            lease_timeout: Duration::from_secs(30),
            max_log_bytes: 64 * 1024,
            models: BTreeMap::new(),
        }
    }
}

impl RetrainingConfig {
    /// Checks every model's section.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.timeout.is_zero() || self.poll.is_zero() || self.lease_timeout.is_zero() {
            anyhow::bail!("retraining.timeout, retraining.poll and retraining.lease_timeout must be longer than 0s");
        }
        if self.lease_timeout > MAX_LEASE_TIMEOUT {
            anyhow::bail!(
                "retraining.lease_timeout must be at most {}s: the database frees a silent runner's lease after {}s, \
                 and the runner must have stopped its job by then",
                MAX_LEASE_TIMEOUT.as_secs(),
                LEASE_SILENCE_RELEASE.as_secs()
            );
        }
        // The log's tail always holds the last line whole (a line is cut at 2 KiB).
        if self.max_log_bytes < 2 * output::MAX_LINE_BYTES {
            anyhow::bail!(
                "retraining.max_log_bytes must be at least {} (the log's tail keeps whole lines of up to {} bytes)",
                2 * output::MAX_LINE_BYTES,
                output::MAX_LINE_BYTES
            );
        }
        for (name, model) in &self.models {
            let bad = |what: String| anyhow::anyhow!("retraining.models.{name}: {what}");
            if model.recipe.is_empty() {
                return Err(bad("recipe must name a program, e.g. [\"python\", \"-m\", \"my_recipe\"]".into()));
            }
            if model.min_new_labels == 0 {
                return Err(bad("min_new_labels must be at least 1".into()));
            }
            if model.cooldown.is_zero() {
                // A recipe that keeps failing would otherwise be queued again every round.
                return Err(bad("cooldown must be longer than 0s (e.g. \"6h\")".into()));
            }
            let plan = model.rollout.plan(model.gate);
            vigil_store::registry::rollouts::validate_plan(&plan).map_err(|e| bad(format!("rollout: {e}")))?;
        }
        Ok(())
    }
}

/// Where retraining jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerPlace {
    /// In the monitor holding the alerting lease.
    #[default]
    Monitor,
    /// In `vigil retrain work`, started by something else (a Kubernetes Job or CronJob).
    External,
}

/// Whether a retrained candidate may become the primary by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// Promoted when its last step passes.
    #[default]
    Auto,
    /// Its last step, once passed, waits for a person (`vigil rollout promote`, audited).
    Manual,
}

/// `[retraining.models.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRetraining {
    /// The program and its first arguments; the runner adds `--out`, `--version`, `--dataset`.
    pub recipe: Vec<String>,
    /// Where the recipe runs (default: the monitor's working directory).
    pub cwd: Option<PathBuf>,
    /// A job's dataset: the labelled items logged in this trailing window.
    #[serde(default = "default_dataset_window", deserialize_with = "duration")]
    pub dataset_window: Duration,
    /// An alarm starts a job only once this many items logged since the last successful job
    /// have labels.
    #[serde(default = "default_min_new_labels")]
    pub min_new_labels: u64,
    /// An alarm starts at most one job per this long (a flapping alarm cannot start a storm).
    #[serde(default = "default_cooldown", deserialize_with = "duration")]
    pub cooldown: Duration,
    #[serde(default)]
    pub gate: Gate,
    #[serde(default)]
    pub rollout: RolloutPlan,
}

fn default_dataset_window() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_min_new_labels() -> u64 {
    200
}

fn default_cooldown() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// How a retrained candidate is rolled out: a shadow step, then canary steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutPlan {
    /// The shadow step's least duration (0s: no shadow step).
    #[serde(deserialize_with = "duration")]
    pub shadow: Duration,
    /// The canary shares in percent, rising to 100.
    pub steps: Vec<f64>,
    /// Each step's least duration.
    #[serde(deserialize_with = "duration")]
    pub step_duration: Duration,
    /// ... and the candidate's least answers in it.
    pub min_requests: u64,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        Self {
            shadow: Duration::from_secs(1800),
            steps: vec![5.0, 25.0, 100.0],
            step_duration: Duration::from_secs(600),
            min_requests: 500,
        }
    }
}

impl RolloutPlan {
    /// The steps; under a manual gate the last waits for a person.
    pub fn plan(&self, gate: Gate) -> Vec<RolloutStep> {
        let step = |share: f64, mode: StepMode, duration: Duration| RolloutStep {
            share,
            mode,
            min_duration_s: duration.as_secs(),
            min_requests: self.min_requests,
            max_duration_s: None,
            approval: false,
        };
        let mut steps: Vec<RolloutStep> = Vec::new();
        if !self.shadow.is_zero() {
            steps.push(step(1.0, StepMode::Shadow, self.shadow));
        }
        steps.extend(self.steps.iter().map(|p| step(p / 100.0, StepMode::Canary, self.step_duration)));
        if let Some(last) = steps.last_mut() {
            last.approval = gate == Gate::Manual;
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_gate_holds_the_last_step_and_bad_sections_say_why() {
        let plan = RolloutPlan { shadow: Duration::from_secs(60), steps: vec![50.0, 100.0], ..Default::default() };
        let steps = plan.plan(Gate::Manual);
        let shape: Vec<(f64, StepMode, bool)> = steps.iter().map(|s| (s.share, s.mode, s.approval)).collect();
        assert_eq!(
            shape,
            [(1.0, StepMode::Shadow, false), (0.5, StepMode::Canary, false), (1.0, StepMode::Canary, true)]
        );
        assert!(plan.plan(Gate::Auto).iter().all(|s| !s.approval));

        let config = |section: &str| -> anyhow::Result<()> {
            let config: RetrainingConfig = toml::from_str(section)?;
            config.validate()
        };
        assert!(config("[models.m]\nrecipe = [\"python\"]\n").is_ok());
        let empty = config("[models.m]\nrecipe = []\n").unwrap_err().to_string();
        assert!(empty.contains("retraining.models.m: recipe must name a program"), "{empty}");
        let falling = config("[models.m]\nrecipe = [\"x\"]\nrollout = { steps = [50, 10] }\n").unwrap_err().to_string();
        assert!(falling.contains("rollout: canary shares must rise"), "{falling}");
        let short = config("[models.m]\nrecipe = [\"x\"]\nrollout = { steps = [50] }\n").unwrap_err().to_string();
        assert!(short.contains("share 1"), "{short}");
        let eager = config("[models.m]\nrecipe = [\"x\"]\ncooldown = \"0s\"\n").unwrap_err().to_string();
        assert!(eager.contains("retraining.models.m: cooldown must be longer than 0s"), "{eager}");
        assert!(config("lease_timeout = \"60s\"").is_ok());
        let late = config("lease_timeout = \"61s\"").unwrap_err().to_string();
        assert!(
            late.contains("lease_timeout must be at most 60s: the database frees a silent runner's lease after 90s"),
            "{late}"
        );
        assert!(config("lease_timeout = \"0s\"").unwrap_err().to_string().contains("retraining.lease_timeout"));
    }
}
