//! The serving core every API adapts to: a [`Router`] picks the model version (and any shadow
//! versions) for a request, [`Infer`] runs the request through the chosen version's batcher
//! with statistics recorded, and copies through the shadows in a bounded lane of their own.
//!
//! The protocol handlers (OIP `ModelInfer`, `Inspect`) resolve a [`Route`], prepare their
//! tensors, call [`Infer::run`], turn the [`Inferred`] outputs into their own answers and
//! [`Infer::account`] for the request; the route's variant and deployment go into the
//! prediction records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use vigil_inference::InferenceError;
use vigil_inference::batcher::BatchOutput;
use vigil_inference::config::ModelConfig;
use vigil_inference::repository::{LoadedModel, ModelRepository};
use vigil_inference::tensor::Tensor;
use vigil_proto::vigil::v1::Variant;

use crate::decision::Automation;
use crate::metrics::{ServedLabels, ServingMetrics};
use crate::records::DEADLINE_SLACK;

/// Where one request goes.
#[derive(Clone)]
pub struct Route {
    /// The version that answers.
    pub primary: Arc<LoadedModel>,
    /// Versions that get a copy of the request; their answers are recorded, never returned.
    pub shadows: Vec<Arc<LoadedModel>>,
    /// What the primary is in its deployment (primary, canary, ...).
    pub variant: Variant,
    /// The deployment the route belongs to; empty outside one.
    pub deployment: String,
    /// Who decides the request's items (the model's degree of automation).
    pub automation: Automation,
    /// The least share of the request's inputs captured (raised by the deployment while an
    /// alarm asks for more data; 0: the capture policy alone).
    pub capture_rate: f64,
}

/// Chooses the route of each request.
pub trait Router: Send + Sync + 'static {
    /// The route for a request naming `model` and, when not empty, `version`; `key` (a
    /// station, user or session id; may be empty) keeps one caller on one version.
    fn route(&self, model: &str, version: &str, key: &str) -> Result<Route, InferenceError>;

    /// The version that answers `model`'s requests naming none, as they would find it, where it
    /// is not the model's default (a deployment's primary); what metadata calls naming no
    /// version describe. None: the model's default version.
    fn primary(&self, _model: &str) -> Option<Result<Arc<LoadedModel>, InferenceError>> {
        None
    }
}

/// The version a request names, else the model's default version; no shadows.
pub struct StaticRouter {
    repository: Arc<ModelRepository>,
}

impl StaticRouter {
    /// Routes within `repository`.
    pub fn new(repository: Arc<ModelRepository>) -> Self {
        Self { repository }
    }
}

impl Router for StaticRouter {
    fn route(&self, model: &str, version: &str, _key: &str) -> Result<Route, InferenceError> {
        Ok(Route {
            primary: self.repository.get(model, version)?,
            shadows: Vec::new(),
            variant: Variant::Primary,
            deployment: String::new(),
            automation: Automation::default(),
            capture_rate: 0.0,
        })
    }
}

/// What a shadow run produced, for whoever records it.
pub struct ShadowRun {
    /// The shadow version that ran.
    pub model: Arc<LoadedModel>,
    pub deployment: String,
    pub result: Result<BatchOutput, InferenceError>,
}

/// Receives each finished shadow run of one request (e.g. to log it as a `SHADOW` prediction
/// record beside the primary's, with the same trace id). Called on a runtime thread once the
/// shadow answered; never awaited by the request.
pub type ShadowObserver = Arc<dyn Fn(ShadowRun) + Send + Sync>;

/// What a shadow's copy of the request runs on.
pub enum ShadowPlan {
    /// The primary's tensors.
    Primary,
    /// Tensors of its own (a shadow that prepares images differently), made by this work on a
    /// blocking thread inside the shadow's task, off the primary's path. The work holds whatever
    /// memory it reserved and frees it when done.
    Own(Box<dyn FnOnce() -> Result<Vec<Tensor>, InferenceError> + Send>),
    /// No copy this time: preparing its own inputs would take memory the requests need now.
    /// Counted as skipped, like a copy that finds the lane full.
    Skip,
}

/// Plans each shadow's inputs for one request; called on the request's path when the copy is
/// about to start (it must not block: reserving memory is a try, preparing is left to the plan).
pub type ShadowInputs = Arc<dyn Fn(&LoadedModel) -> ShadowPlan + Send + Sync>;

/// Shadow copies run here, at most `capacity` at once; a copy that finds the lane full is
/// skipped and counted, so shadows never queue up behind or in front of real traffic. The lane
/// tracks its copies, so that a server can let them finish (and record) before it stops.
#[derive(Debug)]
pub struct ShadowLane {
    permits: Arc<Semaphore>,
    running: TaskTracker,
    skipped: AtomicU64,
    started: AtomicU64,
    failed: AtomicU64,
}

impl ShadowLane {
    /// A lane running at most `capacity` shadow copies at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            running: TaskTracker::new(),
            skipped: AtomicU64::new(0),
            started: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Copies running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Waits up to `timeout` for the copies running now, and those started meanwhile, to end
    /// (their observers called); false when some still run. For a server's shutdown, once no
    /// request can start a copy.
    pub async fn settle(&self, timeout: std::time::Duration) -> bool {
        self.running.close();
        let settled = tokio::time::timeout(timeout, self.running.wait()).await.is_ok();
        self.running.reopen();
        settled
    }

    /// Copies skipped because the lane was full or their inputs could not be prepared now.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Copies started.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Copies started whose run failed (the batcher refused or the model failed).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Shadow copies run at once by default.
pub const DEFAULT_SHADOW_LANE: usize = 4;

/// The core: routing, the batcher, statistics, shadows.
#[derive(Clone)]
pub struct Infer {
    router: Arc<dyn Router>,
    lane: Arc<ShadowLane>,
    metrics: ServingMetrics,
}

/// The primary's answer to one request.
pub struct Inferred {
    pub output: BatchOutput,
    pub model: Arc<LoadedModel>,
}

impl Infer {
    /// A core over `router`, with a default shadow lane.
    pub fn new(router: Arc<dyn Router>) -> Self {
        Self { router, lane: Arc::new(ShadowLane::new(DEFAULT_SHADOW_LANE)), metrics: ServingMetrics::default() }
    }

    /// The static router over `repository`.
    pub fn over(repository: Arc<ModelRepository>) -> Self {
        Self::new(Arc::new(StaticRouter::new(repository)))
    }

    /// Runs shadow copies in `lane`.
    pub fn with_shadow_lane(mut self, lane: Arc<ShadowLane>) -> Self {
        self.lane = lane;
        self
    }

    /// Observes each run's queue and compute time in `metrics`.
    pub fn with_metrics(mut self, metrics: ServingMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The shadow lane (its counters).
    pub fn shadow_lane(&self) -> &ShadowLane {
        &self.lane
    }

    /// Starts `work`, a shadow's copy of a request that is more than one run (a whole spoken
    /// query recognised again, say), in the shadow lane when it has room, not awaited; counted
    /// as the lane's copies are: skipped when the lane is full (false), failed when `work`
    /// ends false. The work must run its models through their queues, never inline.
    pub fn start_shadow_work(&self, work: impl Future<Output = bool> + Send + 'static) -> bool {
        let Ok(permit) = self.lane.permits.clone().try_acquire_owned() else {
            self.lane.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.lane.started.fetch_add(1, Ordering::Relaxed);
        let lane = self.lane.clone();
        self.lane.running.spawn(async move {
            let done = work.await;
            drop(permit);
            if !done {
                lane.failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        true
    }

    /// The version answering `model`'s requests that name none, where it is not the model's
    /// default (see [`Router::primary`]).
    pub fn primary(&self, model: &str) -> Option<Result<Arc<LoadedModel>, InferenceError>> {
        self.router.primary(model)
    }

    /// Resolves a request to its route (`key`: its routing key, may be empty).
    pub fn route(&self, model: &str, version: &str, key: &str) -> Result<Route, InferenceError> {
        self.router.route(model, version, key)
    }

    /// Runs `inputs` on the route's primary and, once it has answered, starts a copy on each
    /// shadow when the lane has room (not awaited); each shadow's result goes to `on_shadow`.
    pub async fn run(
        &self,
        route: &Route,
        inputs: Vec<Tensor>,
        on_shadow: Option<ShadowObserver>,
    ) -> Result<Inferred, InferenceError> {
        self.run_with(route, inputs, on_shadow, None).await
    }

    /// As [`Infer::run`], each shadow taking its inputs from `shadow_inputs` where it gives them.
    pub async fn run_with(
        &self,
        route: &Route,
        inputs: Vec<Tensor>,
        on_shadow: Option<ShadowObserver>,
        shadow_inputs: Option<ShadowInputs>,
    ) -> Result<Inferred, InferenceError> {
        // The shadows get a copy (views of the same bytes) once the primary has answered: a
        // request the primary refuses (a full queue, too many items) or fails costs no shadow run.
        let copy = (!route.shadows.is_empty()).then(|| inputs.clone());
        let model = route.primary.clone();
        let output = model.batcher.infer(inputs).await?;
        if let Some(copy) = copy {
            self.start_shadows(route, &copy, on_shadow, shadow_inputs);
        }
        self.metrics.batched(&ServedLabels::of(&model.config, route.variant), &output);
        Ok(Inferred { output, model })
    }

    /// Counts a whole request (preparation included) in the primary's statistics, as a success
    /// or a failure, with the time since `started`.
    pub fn account<T, E>(&self, route: &Route, started: Instant, result: &Result<T, E>) {
        Accounting { model: Some(route.primary.clone()), started, deadline: None }.finish(result);
    }

    /// Starts accounting a request on `route` now: [`Accounting::finish`] counts it as
    /// [`Infer::account`] does; dropped unfinished once `deadline` has passed (the admission
    /// layer ended the request there), it counts as a failure, as its record does. A call the
    /// server ends at the end of its drain is not counted (the statistics end with the process);
    /// one its client left before the deadline neither.
    pub fn accounting(&self, route: &Route, deadline: Option<Instant>) -> Accounting {
        Accounting { model: Some(route.primary.clone()), started: Instant::now(), deadline }
    }

    fn start_shadows(
        &self,
        route: &Route,
        inputs: &[Tensor],
        on_shadow: Option<ShadowObserver>,
        shadow_inputs: Option<ShadowInputs>,
    ) {
        for shadow in &route.shadows {
            let Ok(permit) = self.lane.permits.clone().try_acquire_owned() else {
                self.lane.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let plan = shadow_inputs.as_ref().map_or(ShadowPlan::Primary, |plan| plan(shadow));
            if let ShadowPlan::Skip = plan {
                self.lane.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.lane.started.fetch_add(1, Ordering::Relaxed);
            let (shadow, inputs, observer) = (shadow.clone(), inputs.to_vec(), on_shadow.clone());
            let (deployment, metrics, lane) = (route.deployment.clone(), self.metrics.clone(), self.lane.clone());
            let primary = route.primary.clone();
            self.lane.running.spawn(async move {
                let own = match plan {
                    ShadowPlan::Own(prepare) => {
                        Some(tokio::task::spawn_blocking(prepare).await.unwrap_or_else(|e| {
                            Err(InferenceError::Runtime(format!("shadow preparation failed: {e}")))
                        }))
                    }
                    ShadowPlan::Primary | ShadowPlan::Skip => None,
                };
                // Through the shadow's queue, never inline on this async thread.
                let result = match own {
                    Some(Ok(own)) => shadow.batcher.infer_queued(own).await,
                    Some(Err(e)) => Err(e),
                    // The primary's tensors go by position: only to a candidate that takes the
                    // same inputs (else its answers would be to other, or swapped, inputs).
                    None if !takes_the_same_inputs(&primary.config, &shadow.config) => {
                        Err(InferenceError::InvalidInput(format!(
                            "version {} takes other inputs than the primary's version {} (names, types or dims): \
                         its copy of the request was not run",
                            shadow.config.version, primary.config.version
                        )))
                    }
                    None => shadow.batcher.infer_queued(inputs).await,
                };
                drop(permit);
                // Timed under variant="shadow"; the version's request statistics count only
                // the requests it answered.
                match &result {
                    Ok(output) => metrics.batched(&ServedLabels::of(&shadow.config, Variant::Shadow), output),
                    Err(_) => drop(lane.failed.fetch_add(1, Ordering::Relaxed)),
                }
                if let Some(observer) = observer {
                    observer(ShadowRun { model: shadow, deployment, result });
                }
            });
        }
    }
}

/// One request's place in its version's statistics, from [`Infer::accounting`].
pub struct Accounting {
    model: Option<Arc<LoadedModel>>,
    started: Instant,
    deadline: Option<Instant>,
}

impl Accounting {
    /// Counts the request as a success or a failure, with the time since it started.
    pub fn finish<T, E>(mut self, result: &Result<T, E>) {
        let Some(model) = self.model.take() else { return };
        match result {
            Ok(_) => model.stats.success.record(self.started.elapsed()),
            Err(_) => model.stats.fail.record(self.started.elapsed()),
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let Some(model) = self.model.take() else { return };
        let timed_out = self.deadline.is_some_and(|deadline| Instant::now() + DEADLINE_SLACK >= deadline);
        if timed_out {
            model.stats.fail.record(self.started.elapsed());
        }
    }
}

/// Whether `shadow` declares the inputs `primary` does, in the same order, and batches them the
/// same way (declared dims leave the batch dimension out when a model batches): a request decoded
/// for the primary then means the same to it.
fn takes_the_same_inputs(primary: &ModelConfig, shadow: &ModelConfig) -> bool {
    (primary.max_batch_size > 0) == (shadow.max_batch_size > 0)
        && primary.inputs.len() == shadow.inputs.len()
        && primary
            .inputs
            .iter()
            .zip(&shadow.inputs)
            .all(|(p, s)| p.name == s.name && p.datatype == s.datatype && p.dims == s.dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_is_sent_the_primarys_tensors_only_when_it_takes_the_same_inputs() {
        let config = |inputs: &str| -> ModelConfig {
            toml::from_str(&format!(
                "name = \"m\"\nversion = 1\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = 0\n{inputs}\
                 [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n"
            ))
            .unwrap()
        };
        let input =
            |name: &str, dims: &str| format!("[[inputs]]\nname = \"{name}\"\ndatatype = \"FP32\"\ndims = {dims}\n");
        let primary = config(&(input("a", "[3]") + &input("b", "[3]")));
        assert!(takes_the_same_inputs(&primary, &config(&(input("a", "[3]") + &input("b", "[3]")))));
        assert!(!takes_the_same_inputs(&primary, &config(&(input("b", "[3]") + &input("a", "[3]")))), "swapped");
        assert!(!takes_the_same_inputs(&primary, &config(&(input("a", "[3]") + &input("b", "[4]")))), "resized");
        assert!(!takes_the_same_inputs(&primary, &config(&input("a", "[3]"))), "one fewer");
        // The same dims mean [3] to a model that does not batch and [N, 3] to one that does.
        let mut batching = config(&(input("a", "[3]") + &input("b", "[3]")));
        batching.max_batch_size = 8;
        assert!(!takes_the_same_inputs(&primary, &batching), "batched along a first dimension the primary lacks");
        let mut smaller = batching.clone();
        smaller.max_batch_size = 4;
        assert!(takes_the_same_inputs(&batching, &smaller), "both batch: the sizes may differ");
    }
}
