//! Deployments through the router seam: per model, a primary version and optionally a
//! candidate, in a mode. **Shadow**: the primary answers and a share of requests is mirrored to
//! the candidate in the shadow lane. **Canary**: the candidate answers a share of routing keys
//! (station, user, session), sticky by a stable hash, so one key sees one version and raising
//! the share only moves keys towards the candidate. **Single**: the primary alone; a blue-green
//! switch is a new primary, with the previous one kept as the candidate to roll back to.
//!
//! A request that names a version gets that version; a model without a deployment gets its
//! default version.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use vigil_inference::InferenceError;
use vigil_inference::repository::{LoadedModel, ModelRepository};
use vigil_proto::vigil::v1::Variant;

use crate::decision::Automation;
use crate::infer::{Route, Router};

/// Canary shares are set in steps of 0.1%: keys fall into this many buckets.
pub const CANARY_BUCKETS: u32 = 1000;

/// How a deployment splits a model's traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// The primary alone.
    Single,
    /// The primary answers; this share (0 to 1) of requests is mirrored to the candidate.
    Shadow { share: f64 },
    /// The candidate answers this share (0 to 1) of routing keys.
    Canary { share: f64 },
}

/// One model's deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Recorded with every prediction it routes.
    pub id: String,
    pub model: String,
    pub primary: String,
    pub candidate: Option<String>,
    pub mode: Mode,
    /// Who decides each item.
    pub automation: Automation,
    /// The least share of inputs captured now (0: the server's own policy).
    pub capture_rate: f64,
    /// The registered sha256 of each version it names: a version whose load here has another
    /// (its file replaced and reloaded since the deployment was checked) is not routed to.
    /// A version left out is not checked.
    pub artifacts: HashMap<String, String>,
}

/// The bucket (0 to [`CANARY_BUCKETS`] - 1) of a routing key: FNV-1a, the same in every process
/// and release, so a key keeps its version across restarts and servers.
pub fn canary_bucket(key: &str) -> u32 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    (hasher.finish() % CANARY_BUCKETS as u64) as u32
}

/// Whether a key in `bucket` goes to a canary taking `share` of the keys.
fn in_canary(bucket: u32, share: f64) -> bool {
    (bucket as f64) < (share * CANARY_BUCKETS as f64).round()
}

/// Routes by the current deployments (swapped in whole by [`DeploymentRouter::set`]).
pub struct DeploymentRouter {
    repository: Arc<ModelRepository>,
    deployments: ArcSwap<HashMap<String, Deployed>>,
}

/// A model's deployment and its own request counters.
#[derive(Clone)]
struct Deployed {
    deployment: Arc<Deployment>,
    counters: Arc<Counters>,
}

/// One model's requests, counted for its deployment's exact shares; they outlive a change of
/// deployment, so a small share still mirrors while deployments are set again and again.
#[derive(Default)]
struct Counters {
    /// Requests routed in shadow mode, for an exact mirrored share.
    mirrored: AtomicU64,
    /// Requests without a routing key, spread over the buckets in turn.
    keyless: AtomicU64,
}

impl Counters {
    fn mirror(&self, share: f64) -> bool {
        // Exactly `share` of the model's requests, spread evenly: mirror when the running total
        // of shares crosses a whole number.
        let n = self.mirrored.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * share).floor() > (n * share).floor()
    }
}

impl DeploymentRouter {
    /// No deployments yet: every model answers from its default version.
    pub fn new(repository: Arc<ModelRepository>) -> Self {
        Self { repository, deployments: ArcSwap::default() }
    }

    /// Replaces every deployment at once.
    pub fn set(&self, deployments: impl IntoIterator<Item = Deployment>) {
        let before = self.deployments.load();
        let map = deployments
            .into_iter()
            .map(|d| {
                let counters = before.get(&d.model).map(|old| old.counters.clone()).unwrap_or_default();
                (d.model.clone(), Deployed { deployment: Arc::new(d), counters })
            })
            .collect();
        self.deployments.store(Arc::new(map));
    }

    /// The deployment of `model`, if any.
    pub fn deployment(&self, model: &str) -> Option<Arc<Deployment>> {
        self.deployments.load().get(model).map(|d| d.deployment.clone())
    }
}

impl DeploymentRouter {
    /// `version` of `d`'s model as loaded now, if it is the artifact the deployment was checked
    /// with (a version the deployment does not name is not checked).
    fn registered(&self, d: &Deployment, version: &str) -> Result<Arc<LoadedModel>, InferenceError> {
        let loaded = self.repository.get(&d.model, version)?;
        match d.artifacts.get(version) {
            Some(sha256) if *sha256 != loaded.sha256 => Err(InferenceError::Unavailable(format!(
                "model '{}' version {version} loaded here (sha256 {}) is not the registered artifact ({sha256}): \
                 its deployment does not serve it",
                d.model, loaded.sha256
            ))),
            _ => Ok(loaded),
        }
    }
}

impl Router for DeploymentRouter {
    fn primary(&self, model: &str) -> Option<Result<Arc<LoadedModel>, InferenceError>> {
        let d = self.deployment(model)?;
        Some(self.registered(&d, &d.primary))
    }

    fn route(&self, model: &str, version: &str, key: &str) -> Result<Route, InferenceError> {
        let Some(Deployed { deployment: d, counters }) = self.deployments.load().get(model).cloned() else {
            let primary = self.repository.get(model, version)?;
            return Ok(Route {
                primary,
                shadows: Vec::new(),
                variant: Variant::Primary,
                deployment: String::new(),
                automation: Automation::default(),
                capture_rate: 0.0,
            });
        };
        let primary = || self.registered(&d, &d.primary);
        let candidate = || d.candidate.as_deref().map(|v| self.registered(&d, v)).transpose();
        let route = |primary, shadows, variant| Route {
            primary,
            shadows,
            variant,
            deployment: d.id.clone(),
            automation: d.automation,
            capture_rate: d.capture_rate,
        };
        if !version.is_empty() {
            // A version asked for by name is served as asked, but the deployment still says who
            // decides its items and what is captured. Its records are no variant's: outside the
            // deployment's split (a client pinned to a version is no random sample), a rollout
            // compares the primary's and the canary's routed traffic alone. One of the
            // deployment's versions is checked against its registered artifact as well.
            return Ok(route(self.registered(&d, version)?, Vec::new(), Variant::Unspecified));
        }
        Ok(match d.mode {
            Mode::Single => route(primary()?, Vec::new(), Variant::Primary),
            Mode::Shadow { share } => {
                // A candidate not loaded (any more) is not mirrored to: shadows never cost an answer.
                let shadows =
                    if counters.mirror(share) { candidate().ok().flatten().into_iter().collect() } else { Vec::new() };
                route(primary()?, shadows, Variant::Primary)
            }
            Mode::Canary { share } => {
                let bucket = if key.is_empty() {
                    (counters.keyless.fetch_add(1, Ordering::Relaxed) % CANARY_BUCKETS as u64) as u32
                } else {
                    canary_bucket(key)
                };
                // Either version missing (unloaded, or not loaded yet) sends its keys to the other
                // one rather than failing them; the record's variant says which one answered.
                match (in_canary(bucket, share), candidate().ok().flatten()) {
                    (true, Some(candidate)) => route(candidate, Vec::new(), Variant::Canary),
                    (false, Some(candidate)) => match primary() {
                        Ok(primary) => route(primary, Vec::new(), Variant::Primary),
                        Err(_) => route(candidate, Vec::new(), Variant::Canary),
                    },
                    (_, None) => route(primary()?, Vec::new(), Variant::Primary),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread_evenly() {
        // 64-bit FNV-1a of "line-1", computed independently (Python): fixed forever, so a key
        // keeps its version across processes and releases.
        assert_eq!(canary_bucket("line-1"), (0xab65_ecc5_ec19_a29d_u64 % 1000) as u32);
        let mut counts = [0u32; 10];
        for i in 0..100_000 {
            counts[(canary_bucket(&format!("user-{i}")) / 100) as usize] += 1;
        }
        // Each tenth of the buckets gets 10,000 keys give or take 4 binomial sigmas (~380).
        assert!(counts.iter().all(|&c| c.abs_diff(10_000) < 380), "{counts:?}");
    }

    #[test]
    fn each_model_mirrors_its_own_share_whatever_the_others_traffic() {
        // Two models in shadow at one half, their requests interleaved: each mirrors half of
        // its own (one counter for both would mirror all of one model's and none of the other's).
        let counters = [Counters::default(), Counters::default()];
        let mut mirrored = [0, 0];
        for i in 0..1000 {
            mirrored[i % 2] += usize::from(counters[i % 2].mirror(0.5));
        }
        assert_eq!(mirrored, [250, 250]);
    }

    #[test]
    fn raising_the_share_only_moves_keys_to_the_candidate() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("station-{i}")).collect();
        let mut before: Vec<bool> = keys.iter().map(|k| in_canary(canary_bucket(k), 0.0)).collect();
        assert!(before.iter().all(|c| !c));
        for share in [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0] {
            let now: Vec<bool> = keys.iter().map(|k| in_canary(canary_bucket(k), share)).collect();
            assert!(before.iter().zip(&now).all(|(was, is)| !was || *is), "a key left the canary at {share}");
            let fraction = now.iter().filter(|c| **c).count() as f64 / keys.len() as f64;
            let sigma = (share * (1.0 - share) / keys.len() as f64).sqrt();
            assert!((fraction - share).abs() <= 4.0 * sigma + 1e-9, "{fraction} at {share}");
            before = now;
        }
    }
}
