//! Dynamic batching: requests for one model wait in a bounded queue; worker threads (one per
//! session) take the oldest request and everything queued behind it, run them as one batch,
//! and split the outputs back.
//!
//! Batches are formed continuously: a worker never waits when waiting cannot help. With no other
//! batch running it runs at once with what is queued, so a lone request pays no queue delay and
//! under load each batch is what arrived while the previous one ran. Only while another
//! session's run holds the cores this one would need does a worker wait for its batch to fill,
//! and never longer than the oldest request's `max_queue_delay` (Triton's bound, here an upper
//! limit rather than a fixed cost). Two one-thread instances on two cores therefore run side by
//! side, each with what is queued, while two instances with a thread per core take turns with
//! fuller batches rather than halve each other's speed.
//!
//! A request that finds its model idle (nothing queued or running) and quick (the last run's
//! time per byte of input, times the request's bytes, within `inline_run_limit_us`) runs on the calling thread with
//! an idle session: no hand-off to a worker thread and back, a third of the serving overhead at
//! one client. At most one such inline run at a time per process, so the server's other network
//! threads stay free. Inline runs borrow an idle batching session, or use a session of their own
//! when the model has one (`inline_intra_op_threads`): then a lone request runs on every core
//! while batches under load run on one-thread sessions, which spin no idle thread beside them.
//! That session serves lone traffic only: a request uses it after the model's last
//! [`INLINE_SESSION_AFTER_SOLO_RUNS`] runs each served one request with no request finding
//! another queued or running meanwhile; under concurrent load a request that finds the model
//! idle for a moment still goes to the batching sessions, rather than waking threads that would
//! spin beside the next batch.
//!
//! `max_queue_depth` bounds the requests admitted and not yet running, forming batches included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::InferenceError;
use crate::config::BatchingConfig;
use crate::stats::ModelStats;
use crate::tensor::Tensor;

/// Something that runs a batch: in production an ONNX Runtime session.
pub trait Runner: Send + 'static {
    /// Runs inputs whose first dimension is the batch; returns outputs with the same batch.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError>;

    /// The cores one run keeps busy (its compute threads).
    fn cores(&self) -> usize {
        1
    }
}

impl Runner for crate::session::ModelSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
        crate::session::ModelSession::run(self, inputs)
    }

    fn cores(&self) -> usize {
        crate::session::ModelSession::cores(self)
    }
}

/// The cores this process may use (its CPU affinity and quota), 1 when unknown.
pub fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The outputs of one request and where its time went.
#[derive(Debug)]
pub struct BatchOutput {
    pub outputs: Vec<Tensor>,
    /// From entering the queue to the start of its batch.
    pub queue_time: Duration,
    /// The model run of the batch it joined.
    pub compute_time: Duration,
    /// Items in that batch.
    pub batch_size: usize,
}

struct Job {
    inputs: Vec<Tensor>,
    items: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<BatchOutput, InferenceError>>,
}

/// How often a worker waiting for its batch to fill checks whether the other sessions went idle.
const BUSY_POLL: Duration = Duration::from_micros(50);

/// A session, shared by its worker thread and inline runs; whoever holds the lock runs it.
type Session = Arc<Mutex<dyn Runner>>;

/// A session and the cores its runs keep busy.
#[derive(Clone)]
struct Instance {
    session: Session,
    cores: usize,
}

impl Instance {
    fn new<R: Runner>(runner: R) -> Self {
        let cores = runner.cores().max(1);
        Self { session: Arc::new(Mutex::new(runner)), cores }
    }
}

/// Where a model's runs stand against the machine's cores.
struct Cores {
    /// The cores the model's runs going on keep busy.
    busy: AtomicUsize,
    /// The cores of the machine.
    machine: usize,
}

impl Cores {
    /// Whether a run taking `own` cores would find them free: nothing of this model runs, or
    /// what runs leaves `own` cores idle. Otherwise running now would only share cores with
    /// the runs going on, and waiting for a fuller batch costs nothing.
    fn free_for(&self, own: usize) -> bool {
        let busy = self.busy.load(Ordering::Acquire);
        busy == 0 || busy + own <= self.machine
    }
}

/// Consecutive runs of one request each after which a model's own inline session takes lone
/// requests again.
pub const INLINE_SESSION_AFTER_SOLO_RUNS: usize = 4;

/// Whether an inline run is going on in this process (at most one at a time).
static INLINE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Handle to a model's queue. Cloning shares the queue.
#[derive(Clone)]
pub struct Batcher {
    sender: Sender<Job>,
    config: BatchingConfig,
    model: Arc<str>,
    stats: Arc<ModelStats>,
    sessions: Arc<[Instance]>,
    /// The session inline runs use when the model has one of their own.
    inline_session: Option<Instance>,
    /// What the last run took and held.
    last_run: Arc<LastRun>,
    /// The cores the model's runs keep busy.
    cores: Arc<Cores>,
    /// The count of inline runs going on, shared by every model of the process.
    inline_runs: &'static AtomicUsize,
    /// Most items one request may carry (the model's `max_batch_size`, which may exceed the
    /// batches the batcher forms: such a request runs alone); None when the model has no batch
    /// dimension, so a request is one item whatever its first dimension.
    max_request_items: Option<usize>,
}

impl Batcher {
    /// Starts one worker thread per runner; the workers stop when every `Batcher` clone is dropped.
    pub fn start<R: Runner>(model: &str, config: BatchingConfig, runners: Vec<R>, stats: Arc<ModelStats>) -> Self {
        Self::start_with_inline(model, config, runners, None, stats)
    }

    /// As [`Batcher::start`], with `inline` (when given) as the session of inline runs only.
    pub fn start_with_inline<R: Runner>(
        model: &str,
        config: BatchingConfig,
        runners: Vec<R>,
        inline: Option<R>,
        stats: Arc<ModelStats>,
    ) -> Self {
        Self::start_on(model, config, runners, inline, stats, machine_cores())
    }

    /// As [`Batcher::start_with_inline`], on a machine of `machine_cores` cores.
    fn start_on<R: Runner>(
        model: &str,
        config: BatchingConfig,
        runners: Vec<R>,
        inline: Option<R>,
        stats: Arc<ModelStats>,
        machine_cores: usize,
    ) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(config.max_queue_depth);
        // A job that did not fit the batch being formed goes back here, ahead of the queue, for
        // whichever batching thread is free first (at most one per thread at a time).
        let (put_back, put_back_queue) = crossbeam_channel::unbounded();
        let last_run = Arc::new(LastRun::default());
        let cores = Arc::new(Cores { busy: AtomicUsize::new(0), machine: machine_cores.max(1) });
        let sessions: Arc<[Instance]> = runners.into_iter().map(Instance::new).collect::<Vec<_>>().into();
        for (i, instance) in sessions.iter().enumerate() {
            let worker = Worker {
                instance: instance.clone(),
                receiver: receiver.clone(),
                put_back: put_back.clone(),
                put_back_queue: put_back_queue.clone(),
                config,
                stats: stats.clone(),
                last_run: last_run.clone(),
                cores: cores.clone(),
            };
            std::thread::Builder::new()
                .name(format!("batch-{model}-{i}"))
                .spawn(move || worker.serve())
                .expect("spawning a batching thread");
        }
        let inline_session = inline.map(Instance::new);
        Self {
            sender,
            config,
            model: model.into(),
            stats,
            sessions,
            inline_session,
            last_run,
            cores,
            inline_runs: &INLINE_RUNS,
            max_request_items: Some(config.max_batch_size),
        }
    }

    /// Takes requests of up to `max` items (the model's `max_batch_size`; batches are still
    /// formed up to the batching config's), or, with None, treats every request as one item: the
    /// model has no batch dimension and each request runs by itself.
    pub fn with_max_request_items(mut self, max: Option<usize>) -> Self {
        self.max_request_items = max;
        self
    }

    /// Runs `inputs` once on every session, each batching instance and the inline runs' own,
    /// on this thread, so no real request pays for ONNX Runtime's lazy initialisation (a queued
    /// request reaches whichever instance's thread takes it first: queued warm-ups can all land
    /// on one). Not counted, and not remembered as the model's last runs.
    pub fn warm_up_sessions(&self, inputs: &[Tensor]) -> Result<(), InferenceError> {
        for instance in self.sessions.iter().chain(&self.inline_session) {
            instance.session.lock().run(inputs)?;
        }
        Ok(())
    }

    /// The batching limits in effect.
    pub fn config(&self) -> BatchingConfig {
        self.config
    }

    /// Requests admitted and not yet running.
    pub fn pending(&self) -> usize {
        self.stats.pending.load(Ordering::Relaxed) as usize
    }

    /// Queues `inputs` (each with the batch as first dimension) and waits for the outputs.
    /// Fails at once with [`InferenceError::QueueFull`] when `max_queue_depth` requests are
    /// admitted and not yet running.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<BatchOutput, InferenceError> {
        self.submit(inputs, true).await
    }

    /// As [`Batcher::infer`], but never run on the calling thread: for work no client waits on
    /// (a shadow's copy of a request), which must not hold an async thread or take the inline
    /// slot a client's request could use.
    pub async fn infer_queued(&self, inputs: Vec<Tensor>) -> Result<BatchOutput, InferenceError> {
        self.submit(inputs, false).await
    }

    async fn submit(&self, inputs: Vec<Tensor>, inline: bool) -> Result<BatchOutput, InferenceError> {
        let items = match self.max_request_items {
            None => 1,
            Some(max) => {
                let items = inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(1).max(1) as usize;
                if items > max {
                    return Err(InferenceError::invalid(format!(
                        "batch of {items} exceeds the model's max batch size {max}"
                    )));
                }
                items
            }
        };
        let full = || {
            InferenceError::QueueFull(format!(
                "model '{}' queue is full ({} requests waiting); retry later",
                self.model, self.config.max_queue_depth
            ))
        };
        let pending = &self.stats.pending;
        let ahead = pending.fetch_add(1, Ordering::AcqRel);
        if ahead >= self.config.max_queue_depth as u64 {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(full());
        }
        let enqueued = Instant::now();
        let inputs = if ahead == 0 {
            if !inline {
                inputs
            } else {
                match self.try_inline(inputs, items, enqueued) {
                    Ok(answer) => return answer,
                    Err(inputs) => inputs,
                }
            }
        } else {
            self.last_run.solo_streak.store(0, Ordering::Relaxed);
            inputs
        };
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, items, enqueued, reply };
        if let Err(e) = self.sender.try_send(job) {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                TrySendError::Full(_) => full(),
                TrySendError::Disconnected(_) => {
                    InferenceError::Unavailable(format!("model '{}' is shutting down", self.model))
                }
            });
        }
        answer
            .await
            .map_err(|_| InferenceError::Unavailable(format!("model '{}' stopped before answering", self.model)))?
    }

    /// Runs the request on this thread when the model is idle and quick and no other inline
    /// run is going on; otherwise hands the inputs back for the queue.
    #[allow(clippy::result_large_err)]
    fn try_inline(
        &self,
        inputs: Vec<Tensor>,
        items: usize,
        enqueued: Instant,
    ) -> Result<Result<BatchOutput, InferenceError>, Vec<Tensor>> {
        // Expected from the last run's time per byte of input: a request of 8 items takes about
        // 8 times one, and so does a recording 8 times as long for a model without a batch
        // dimension (whose requests are one item each, of any length).
        let expected_ps = self.last_run.byte_ps.load(Ordering::Relaxed).saturating_mul(input_bytes(&inputs));
        let quick = expected_ps / 1000 <= self.config.inline_run_limit().as_nanos() as u64;
        if !quick {
            return Err(inputs);
        }
        if self.stats.running.load(Ordering::Acquire) != 0 {
            // Another request is running: the model is not serving one client alone, even if
            // each of its runs serves one request.
            self.last_run.solo_streak.store(0, Ordering::Relaxed);
            return Err(inputs);
        }
        // A session of its own (more threads, spinning between runs) is for lone traffic.
        let lone = self.last_run.solo_streak.load(Ordering::Relaxed) >= INLINE_SESSION_AFTER_SOLO_RUNS;
        if self.inline_session.is_some() && !lone {
            return Err(inputs);
        }
        let Some(_slot) = InlineSlot::take(self.inline_runs) else { return Err(inputs) };
        let session = match &self.inline_session {
            Some(own) => own.session.try_lock().map(|s| (s, own.cores)),
            None => self.sessions.iter().find_map(|i| i.session.try_lock().map(|s| (s, i.cores))),
        };
        let Some((mut session, cores)) = session else { return Err(inputs) };
        let _running = Running::start(&self.stats, 1, &self.cores, cores);
        let started = Instant::now();
        let result = run_guarded(&mut *session, &inputs);
        let compute_time = started.elapsed();
        drop(session);
        if result.is_ok() {
            record_run(&self.stats, &self.last_run, items, input_bytes(&inputs), 1, compute_time);
        }
        self.stats.inline_runs.fetch_add(1, Ordering::Relaxed);
        let queue_time = started.saturating_duration_since(enqueued);
        Ok(result.map(|outputs| answered(&self.stats, outputs, queue_time, compute_time, items)))
    }
}

/// A model's last runs, for the next inline decision.
struct LastRun {
    /// Picoseconds per byte of input of the last run; u64::MAX before the first.
    byte_ps: AtomicU64,
    /// Runs in a row, up to the last, that served one request each, with no request finding
    /// another queued or running meanwhile.
    solo_streak: AtomicUsize,
}

impl Default for LastRun {
    fn default() -> Self {
        Self { byte_ps: AtomicU64::new(u64::MAX), solo_streak: AtomicUsize::new(0) }
    }
}

/// The bytes of a request's inputs.
fn input_bytes(inputs: &[Tensor]) -> u64 {
    inputs.iter().map(|t| t.data.len() as u64).sum()
}

/// Counts a model run over `items` items (`bytes` of input) of `requests` requests, and keeps
/// its time per byte and whether it served one request for the next inline decision.
fn record_run(stats: &ModelStats, last: &LastRun, items: usize, bytes: u64, requests: usize, compute_time: Duration) {
    stats.record_execution(items, compute_time);
    let byte_ps = compute_time.as_nanos().saturating_mul(1000) / u128::from(bytes.max(1));
    last.byte_ps.store(u64::try_from(byte_ps).unwrap_or(u64::MAX), Ordering::Relaxed);
    if requests == 1 {
        last.solo_streak.fetch_add(1, Ordering::Relaxed);
    } else {
        last.solo_streak.store(0, Ordering::Relaxed);
    }
}

/// One request's answer, counted in the queue and compute statistics.
fn answered(
    stats: &ModelStats,
    outputs: Vec<Tensor>,
    queue_time: Duration,
    compute_time: Duration,
    batch_size: usize,
) -> BatchOutput {
    stats.queue.record(queue_time);
    stats.compute_infer.record(compute_time);
    BatchOutput { outputs, queue_time, compute_time, batch_size }
}

/// The process's one inline run, held while it lasts.
struct InlineSlot(&'static AtomicUsize);

impl InlineSlot {
    fn take(runs: &'static AtomicUsize) -> Option<Self> {
        runs.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).ok().map(|_| Self(runs))
    }
}

impl Drop for InlineSlot {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Counts a batch as running (its requests as no longer pending, its session's cores as busy)
/// until dropped, even if the run panics.
struct Running<'a> {
    stats: &'a ModelStats,
    cores: &'a Cores,
    own: usize,
}

impl<'a> Running<'a> {
    fn start(stats: &'a ModelStats, requests: usize, cores: &'a Cores, own: usize) -> Self {
        stats.pending.fetch_sub(requests as u64, Ordering::AcqRel);
        stats.running.fetch_add(1, Ordering::AcqRel);
        cores.busy.fetch_add(own, Ordering::AcqRel);
        Self { stats, cores, own }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.cores.busy.fetch_sub(self.own, Ordering::AcqRel);
        self.stats.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A batching thread: forms batches from the queue and runs them on its session.
struct Worker {
    instance: Instance,
    receiver: Receiver<Job>,
    /// Jobs taken from the queue that did not fit a batch, oldest first: every thread looks
    /// here before the queue, so another thread runs such a job while this one runs its batch.
    put_back: Sender<Job>,
    put_back_queue: Receiver<Job>,
    config: BatchingConfig,
    stats: Arc<ModelStats>,
    last_run: Arc<LastRun>,
    cores: Arc<Cores>,
}

impl Worker {
    fn serve(self) {
        let Self { instance, receiver, put_back, put_back_queue, config, stats, last_run, cores } = self;
        let abandon = |stats: &ModelStats| stats.pending.fetch_sub(1, Ordering::AcqRel);
        loop {
            let first = match put_back_queue.try_recv() {
                Ok(job) => job,
                Err(_) => crossbeam_channel::select_biased! {
                    recv(put_back_queue) -> job => job.expect("every thread holds the put-back queue's sender"),
                    recv(receiver) -> job => match job {
                        Ok(job) => job,
                        // The model is unloading: what another thread put back is still run.
                        Err(_) => match put_back_queue.try_recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        },
                    },
                },
            };
            if first.reply.is_closed() {
                abandon(&stats);
                continue;
            }
            let deadline = first.enqueued + config.max_queue_delay();
            let mut items = first.items;
            let mut jobs = vec![first];
            while items < config.max_batch_size {
                // Everything already queued joins at once; beyond that, wait only while other
                // runs hold the cores this one needs (it would share them, not add to them).
                let next = match receiver.try_recv() {
                    Ok(job) => job,
                    Err(_) if cores.free_for(instance.cores) => break,
                    Err(_) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match receiver.recv_deadline(deadline.min(now + BUSY_POLL)) {
                            Ok(job) => job,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                if next.reply.is_closed() {
                    abandon(&stats);
                    continue;
                }
                if items + next.items > config.max_batch_size || !same_item_shapes(&jobs[0], &next) {
                    put_back.send(next).expect("this thread holds the put-back queue");
                    break;
                }
                items += next.items;
                jobs.push(next);
            }
            let running = Running::start(&stats, jobs.len(), &cores, instance.cores);
            let mut session = instance.session.lock();
            let ran = run_batch(&mut *session, &jobs, items, &stats, &last_run);
            let answers = if jobs.len() > 1 && ran.run_failed {
                // One request's values (an index past a table, say) fail the whole batch: each
                // runs alone, so that only the request at fault gets the error.
                tracing::warn!(requests = jobs.len(), "a batch failed: running its requests one by one");
                jobs.into_iter()
                    .map(|job| {
                        let alone = run_batch(&mut *session, std::slice::from_ref(&job), job.items, &stats, &last_run);
                        let items = job.items;
                        (vec![job], alone, items)
                    })
                    .collect()
            } else {
                vec![(jobs, ran, items)]
            };
            drop(session);
            drop(running);
            // Answered once the session is free again, so a caller's next request may run inline.
            for (jobs, ran, items) in answers {
                answer(jobs, ran, items, &stats);
            }
        }
    }
}

fn same_item_shapes(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| x.datatype == y.datatype && x.shape.get(1..) == y.shape.get(1..))
}

/// A batch that ran: when, for how long, and each request's outputs.
struct Ran {
    started: Instant,
    compute_time: Duration,
    outputs: Result<Vec<Vec<Tensor>>, InferenceError>,
    /// The model failed while running (not in splitting its outputs): the inputs may be at fault.
    run_failed: bool,
}

/// Runs one batch of `items` items on `runner`.
fn run_batch(runner: &mut dyn Runner, jobs: &[Job], items: usize, stats: &ModelStats, last_run: &LastRun) -> Ran {
    let started = Instant::now();
    let inputs = if jobs.len() == 1 { None } else { Some(concat_inputs(jobs, items)) };
    let result = run_guarded(runner, inputs.as_deref().unwrap_or(&jobs[0].inputs));
    let compute_time = started.elapsed();
    // Statistics count executions that ran (as Triton's do); a failed run's time is not the
    // model's either, for the next inline decision.
    if result.is_ok() {
        let bytes = jobs.iter().map(|job| input_bytes(&job.inputs)).sum();
        record_run(stats, last_run, items, bytes, jobs.len(), compute_time);
    }
    let run_failed = matches!(result, Err(InferenceError::Runtime(_)));
    Ran { started, compute_time, outputs: result.and_then(|outputs| split_outputs(outputs, jobs, items)), run_failed }
}

/// Runs `inputs` on `runner`; a panic in the run (a bug in a library below) becomes the run's
/// error, so the batching thread goes on serving and the callers get an answer.
fn run_guarded(runner: &mut dyn Runner, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run(inputs))).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        tracing::error!(why, "a model run panicked");
        Err(InferenceError::Runtime(format!("the run panicked: {why}")))
    })
}

/// Sends each request of a batch that ran its answer.
fn answer(jobs: Vec<Job>, ran: Ran, items: usize, stats: &ModelStats) {
    let Ran { started, compute_time, outputs, .. } = ran;
    match outputs {
        Ok(per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job) {
                let queue_time = started.saturating_duration_since(job.enqueued);
                let _ = job.reply.send(Ok(answered(stats, outputs, queue_time, compute_time, items)));
            }
        }
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

fn concat_inputs(jobs: &[Job], items: usize) -> Vec<Tensor> {
    (0..jobs[0].inputs.len())
        .map(|i| {
            let first = &jobs[0].inputs[i];
            let mut shape = first.shape.clone();
            if let Some(batch) = shape.first_mut() {
                *batch = items as i64;
            }
            let mut data = Vec::with_capacity(first.data.len() * items / jobs[0].items.max(1));
            for job in jobs {
                data.extend_from_slice(&job.inputs[i].data);
            }
            Tensor { datatype: first.datatype, shape, data: data.into() }
        })
        .collect()
}

fn split_outputs(outputs: Vec<Tensor>, jobs: &[Job], items: usize) -> Result<Vec<Vec<Tensor>>, InferenceError> {
    if jobs.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_job: Vec<Vec<Tensor>> = jobs.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first().copied() != Some(items as i64) {
            return Err(InferenceError::Runtime(format!(
                "output batch dimension {:?} does not match the batch of {items}",
                output.shape.first()
            )));
        }
        let item_lengths = item_byte_lengths(&output, items)?;
        let mut offset = 0;
        let mut item = 0;
        for (job, slot) in jobs.iter().zip(per_job.iter_mut()) {
            let len: usize = item_lengths[item..item + job.items].iter().sum();
            let mut shape = output.shape.clone();
            shape[0] = job.items as i64;
            // A view of the batch's output, not a copy.
            slot.push(Tensor { datatype: output.datatype, shape, data: output.data.slice(offset..offset + len) });
            offset += len;
            item += job.items;
        }
    }
    Ok(per_job)
}

/// The bytes each of a batch output's `items` takes: equal shares for fixed-size types, the
/// sum of its elements' length-prefixed sizes for `BYTES`.
fn item_byte_lengths(output: &Tensor, items: usize) -> Result<Vec<usize>, InferenceError> {
    if output.datatype.element_size().is_some() {
        return Ok(vec![output.data.len() / items; items]);
    }
    let elements = output.bytes_elements()?;
    if elements.is_empty() {
        return Ok(vec![0; items]);
    }
    let per_item = elements.len() / items;
    if per_item * items != elements.len() {
        return Err(InferenceError::Runtime(format!(
            "{} BYTES elements do not split into {items} items",
            elements.len()
        )));
    }
    Ok(elements.chunks(per_item).map(|chunk| chunk.iter().map(|e| 4 + e.len()).sum()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    /// Doubles its single FP32 input and records the batch sizes it saw.
    struct Doubler {
        seen: Arc<parking_lot::Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl Runner for Doubler {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
            std::thread::sleep(self.delay);
            self.seen.lock().push(inputs[0].shape[0] as usize);
            // A negative value stands for input only the model can refuse (an index past its table).
            if inputs[0].to_f32()?.iter().any(|v| *v < 0.0) {
                return Err(InferenceError::Runtime("index out of range".into()));
            }
            let values: Vec<f32> = inputs[0].to_f32()?.iter().map(|v| v * 2.0).collect();
            Ok(vec![Tensor::from_f32(inputs[0].shape.clone(), &values)])
        }
    }

    fn batcher(
        max_batch: usize,
        delay_us: u64,
        depth: usize,
        run_delay: Duration,
    ) -> (Batcher, Arc<parking_lot::Mutex<Vec<usize>>>) {
        sessions(1, 1, max_batch, delay_us, depth, run_delay)
    }

    /// `instances` one-core sessions on a machine of `machine_cores`.
    fn sessions(
        instances: usize,
        machine_cores: usize,
        max_batch: usize,
        delay_us: u64,
        depth: usize,
        run_delay: Duration,
    ) -> (Batcher, Arc<parking_lot::Mutex<Vec<usize>>>) {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let config = BatchingConfig {
            max_batch_size: max_batch,
            max_queue_delay_us: delay_us,
            max_queue_depth: depth,
            inline_run_limit_us: crate::config::DEFAULT_INLINE_RUN_LIMIT_US,
        };
        let runners = (0..instances).map(|_| Doubler { seen: seen.clone(), delay: run_delay }).collect();
        let b = Batcher::start_on("m", config, runners, None, Arc::new(ModelStats::default()), machine_cores);
        (b, seen)
    }

    #[test]
    fn bytes_outputs_split_by_their_elements() {
        let out = Tensor::from_bytes_elements(vec![3, 2], &["a", "", "spam", "ham", "x", "yz"]);
        assert_eq!(item_byte_lengths(&out, 3).unwrap(), [4 + 1 + 4, 4 + 4 + 4 + 3, 4 + 1 + 4 + 2]);
        assert_eq!(item_byte_lengths(&Tensor::from_f32(vec![2, 3], &[0.0; 6]), 2).unwrap(), [12, 12]);
        assert!(item_byte_lengths(&out, 4).is_err());
        let empty = Tensor::from_bytes_elements::<&str>(vec![2, 0], &[]);
        assert_eq!(item_byte_lengths(&empty, 2).unwrap(), [0, 0]);
    }

    fn one() -> Vec<Tensor> {
        vec![Tensor::from_f32(vec![1, 1], &[1.0])]
    }

    fn rows(n: usize) -> Vec<Tensor> {
        vec![Tensor::from_f32(vec![n as i64, 1], &(0..n).map(|i| i as f32).collect::<Vec<_>>())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_larger_than_the_batches_formed_runs_alone_up_to_the_models_limit() {
        // Batches of up to 4, a model taking requests of up to 8 items (Triton's max_batch_size).
        let (b, seen) = batcher(4, 0, 16, Duration::ZERO);
        let b = b.with_max_request_items(Some(8));
        let out = b.infer(rows(6)).await.unwrap();
        assert_eq!(out.outputs[0].to_f32().unwrap(), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(*seen.lock(), [6]);
        let e = b.infer(rows(9)).await.unwrap_err();
        assert!(
            matches!(&e, InferenceError::InvalidInput(m) if m.contains("batch of 9 exceeds the model's max batch size 8")),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_without_a_batch_dimension_runs_each_request_whole() {
        // max_batch_size = 0: the first dimension is the model's own (a VAD's frames), not a batch.
        let (b, seen) = batcher(1, 0, 16, Duration::from_millis(5));
        let b = b.with_max_request_items(None);
        let answers: Vec<_> = [4, 3, 4].map(|n| spawn_infer(&b, rows(n))).into_iter().collect();
        for (answer, n) in answers.into_iter().zip([4, 3, 4]) {
            let out = answer.await.unwrap().unwrap();
            assert_eq!(out.outputs[0].shape, [n as i64, 1]);
            assert_eq!(out.batch_size, 1, "each request is one item");
        }
        let mut ran = seen.lock().clone();
        ran.sort();
        assert_eq!(ran, [3, 4, 4], "every request ran by itself");
    }

    /// `b.infer(inputs)` in a task of its own.
    fn spawn_infer(b: &Batcher, inputs: Vec<Tensor>) -> tokio::task::JoinHandle<Result<BatchOutput, InferenceError>> {
        let b = b.clone();
        tokio::spawn(async move { b.infer(inputs).await })
    }

    /// Waits until `check` holds on the batcher's counters (they change on the worker thread);
    /// fails after 30 s rather than hanging.
    async fn until(b: &Batcher, check: impl Fn(&ModelStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check(&b.stats) {
            assert!(Instant::now() < deadline, "the batcher's counters never got there");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_does_not_wait_for_the_queue_delay() {
        // A 60 s queue delay: a batcher that waited it would hang this test.
        let (b, seen) = batcher(8, 60_000_000, 8, Duration::ZERO);
        for _ in 0..3 {
            let out = b.infer(one()).await.unwrap();
            assert_eq!(out.batch_size, 1);
        }
        assert_eq!(*seen.lock(), vec![1, 1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_arrive_during_a_run_form_the_next_batch() {
        let (b, seen) = batcher(8, 60_000_000, 64, Duration::from_secs(1));
        let first = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let rest: Vec<_> = (0..5).map(|_| spawn_infer(&b, one())).collect();
        until(&b, |s| s.pending.load(Ordering::Acquire) == 5).await;
        assert_eq!(first.await.unwrap().unwrap().batch_size, 1);
        for r in rest {
            assert_eq!(r.await.unwrap().unwrap().batch_size, 5);
        }
        assert_eq!(*seen.lock(), vec![1, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_fails_its_batch_fails_alone() {
        let (b, seen) = batcher(8, 60_000_000, 64, Duration::from_secs(1));
        let first = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let value = |v: f32| vec![Tensor::from_f32(vec![1, 1], &[v])];
        let rest: Vec<_> = [3.0, -1.0, 5.0].map(|v| spawn_infer(&b, value(v))).into_iter().collect();
        until(&b, |s| s.pending.load(Ordering::Acquire) == 3).await;
        first.await.unwrap().unwrap();
        let mut rest = rest.into_iter();
        let (good, bad, other) = (rest.next().unwrap(), rest.next().unwrap(), rest.next().unwrap());
        assert_eq!(good.await.unwrap().unwrap().outputs[0].to_f32().unwrap(), [6.0]);
        let e = bad.await.unwrap().unwrap_err();
        assert!(matches!(&e, InferenceError::Runtime(m) if m.contains("index out of range")), "{e}");
        assert_eq!(other.await.unwrap().unwrap().outputs[0].to_f32().unwrap(), [10.0]);
        assert_eq!(*seen.lock(), [1, 3, 1, 1, 1], "the failed batch of 3, then each request alone");
        // The executions that ran: the first and the two good requests alone, not the failed
        // batch of 3 nor the failed request.
        assert_eq!(b.stats.execution_count.load(Ordering::Relaxed), 3);
        assert_eq!(b.stats.inference_count.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_another_session_holds_the_cores_a_batch_fills_up_to_its_size() {
        // Two sessions on one core: while one runs, the other waits (up to the 60 s delay) for a
        // full batch of 3.
        let (b, seen) = sessions(2, 1, 3, 60_000_000, 64, Duration::from_secs(1));
        let first = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let mut rest = Vec::new();
        for _ in 0..3 {
            rest.push(spawn_infer(&b, one()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for r in rest {
            assert_eq!(r.await.unwrap().unwrap().batch_size, 3);
        }
        assert_eq!(first.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(*seen.lock(), vec![1, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_with_a_core_of_its_own_runs_beside_the_busy_one_at_once() {
        // Two one-core sessions on two cores: while one runs, the other takes each request at
        // once (a worker that waited for the 60 s delay or a full batch would hang this test).
        let (b, seen) = sessions(2, 2, 3, 60_000_000, 64, Duration::from_secs(1));
        let first = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let second = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 2).await;
        assert_eq!(second.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(first.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(*seen.lock(), vec![1, 1]);
        // Both cores busy: a third session would wait to fill its batch, as on one core.
        let (b, seen) = sessions(3, 2, 2, 60_000_000, 64, Duration::from_secs(1));
        let mut running = Vec::new();
        for busy in 1..=2 {
            running.push(spawn_infer(&b, one()));
            until(&b, |s| s.running.load(Ordering::Acquire) == busy).await;
        }
        let rest: Vec<_> = (0..2).map(|_| spawn_infer(&b, one())).collect();
        for r in rest.into_iter().chain(running) {
            r.await.unwrap().unwrap();
        }
        let mut seen = seen.lock().clone();
        seen.sort();
        assert_eq!(seen, vec![1, 1, 2], "the third session waited for a batch of 2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_get_their_own_outputs() {
        let (b, seen) = batcher(8, 20_000, 64, Duration::from_millis(20));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let out = b.infer(vec![Tensor::from_f32(vec![1, 2], &[i as f32, 1.0])]).await.unwrap();
                    (i, out)
                })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out.outputs[0].to_f32().unwrap(), vec![2.0 * i as f32, 2.0]);
            assert_eq!(out.outputs[0].shape, vec![1, 2]);
        }
        let seen = seen.lock();
        assert_eq!(seen.iter().sum::<usize>(), 16);
        assert!(seen.iter().all(|&n| n <= 8), "{seen:?}");
        assert!(seen.len() < 16, "requests were never batched: {seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_depth_counts_requests_not_yet_running() {
        let (b, _) = batcher(8, 0, 2, Duration::from_secs(1));
        let running = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1 && s.pending.load(Ordering::Acquire) == 0).await;
        let waiting: Vec<_> = (0..2).map(|_| spawn_infer(&b, one())).collect();
        until(&b, |s| s.pending.load(Ordering::Acquire) == 2).await;
        // One runs, two wait: the queue (depth 2) is full now, and refuses at once.
        let refused = b.infer(one()).await.unwrap_err();
        assert!(matches!(refused, InferenceError::QueueFull(_)), "{refused}");
        assert!(refused.to_string().contains("queue is full (2 requests waiting)"), "{refused}");
        assert_eq!(b.pending(), 2, "a refused request leaves no trace in the count");
        assert!(running.await.unwrap().is_ok());
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().batch_size, 2);
        }
        assert_eq!(b.pending(), 0);
        assert!(b.infer(one()).await.is_ok(), "room again once they ran");
    }

    /// Each run of a session, by the session's name and the thread that ran it.
    type Runs = Arc<parking_lot::Mutex<Vec<(&'static str, String)>>>;

    /// Records each run in `runs`; each run waits for a permit from `gate`, then `delay`.
    struct Gated {
        name: &'static str,
        runs: Runs,
        gate: crossbeam_channel::Receiver<()>,
        delay: Duration,
    }

    impl Runner for Gated {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
            self.gate.recv().expect("gate open");
            std::thread::sleep(self.delay);
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            self.runs.lock().push((self.name, thread));
            Ok(inputs.to_vec())
        }
    }

    /// The threads that made the runs, in order.
    fn threads(runs: &Runs) -> Vec<String> {
        runs.lock().iter().map(|(_, thread)| thread.clone()).collect()
    }

    /// Which session made each run and whether on a batching thread.
    fn sessions_used(runs: &Runs) -> Vec<(&'static str, bool)> {
        runs.lock().iter().map(|(name, thread)| (*name, thread.starts_with("batch-"))).collect()
    }

    /// An inline run limit no run of these tests comes near, however busy the machine: for tests
    /// of who runs where, not of the limit.
    const AMPLE_INLINE_LIMIT_US: u64 = 1_000_000;

    fn gated(inline_run_limit_us: u64) -> (Batcher, Runs, crossbeam_channel::Sender<()>) {
        gated_with(inline_run_limit_us, Duration::ZERO)
    }

    fn gated_with(inline_run_limit_us: u64, delay: Duration) -> (Batcher, Runs, crossbeam_channel::Sender<()>) {
        let runs = Runs::default();
        let (open, gate) = crossbeam_channel::unbounded();
        let config = BatchingConfig {
            max_batch_size: 8,
            max_queue_delay_us: 60_000_000,
            max_queue_depth: 8,
            inline_run_limit_us,
        };
        let runner = Gated { name: "batching", runs: runs.clone(), gate, delay };
        // One core: a run going on holds it.
        let mut b = Batcher::start_on("gated", config, vec![runner], None, Arc::new(ModelStats::default()), 1);
        // A slot of its own: tests running in parallel cannot hold it.
        b.inline_runs = Box::leak(Box::new(AtomicUsize::new(0)));
        (b, runs, open)
    }

    fn items(n: usize) -> Vec<Tensor> {
        vec![Tensor::from_f32(vec![n as i64, 1], &vec![1.0; n])]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_quick_request_runs_on_the_calling_thread() {
        let (b, runs, open) = gated(AMPLE_INLINE_LIMIT_US);
        for _ in 0..6 {
            open.send(()).unwrap();
            let out = b.infer(one()).await.unwrap();
            assert_eq!(out.outputs[0].to_f32().unwrap(), vec![1.0]);
        }
        let threads = threads(&runs);
        // The first run has no duration to go by; it runs on the batching thread.
        assert_eq!(threads[0], "batch-gated-0");
        assert!(threads[1..].iter().all(|t| !t.starts_with("batch-")), "the rest run inline: {threads:?}");
        assert_eq!(b.stats.running.load(Ordering::Acquire), 0);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.stats.execution_count.load(Ordering::Relaxed), 6, "inline runs are counted as runs");
        assert_eq!(b.stats.inline_runs.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_models_and_a_zero_limit_never_run_inline() {
        // 5 ms runs are over the 2 ms limit; a limit of 0 turns inline runs off.
        let limit = crate::config::DEFAULT_INLINE_RUN_LIMIT_US;
        let (slow, slow_runs, slow_open) = gated_with(limit, Duration::from_millis(5));
        let (off, off_runs, open) = gated(0);
        for _ in 0..4 {
            slow_open.send(()).unwrap();
            assert_eq!(slow.infer(one()).await.unwrap().batch_size, 1);
            open.send(()).unwrap();
            off.infer(one()).await.unwrap();
        }
        for runs in [slow_runs, off_runs] {
            let threads = threads(&runs);
            assert_eq!(threads.len(), 4);
            assert!(threads.iter().all(|t| t == "batch-gated-0"), "{threads:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_of_many_items_is_judged_by_the_time_per_item() {
        // 30 ms per run against a 200 ms limit: one item runs inline, eight would take 240 ms
        // (a sleep is never shorter) and go to the batching thread; that run's time per item
        // (3.75 ms) then lets eight run inline. The margins hold on a busy machine.
        let (b, runs, open) = gated_with(200_000, Duration::from_millis(30));
        for n in [1, 1, 1, 8, 8] {
            open.send(()).unwrap();
            assert_eq!(b.infer(items(n)).await.unwrap().batch_size, n);
        }
        let threads = threads(&runs);
        let inline: Vec<bool> = threads.iter().map(|t| !t.starts_with("batch-")).collect();
        assert_eq!(inline, [false, true, true, false, true], "{threads:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_request_to_a_model_without_a_batch_dimension_is_judged_by_its_size() {
        // Each request is one item of any length (a recording, say): one eight times as long as
        // the last run's would take 240 ms against the 200 ms limit and goes to the batching
        // thread, not a network thread, however quick the short ones were.
        let (b, runs, open) = gated_with(200_000, Duration::from_millis(30));
        let b = b.with_max_request_items(None);
        let samples = |n: usize| vec![Tensor::from_f32(vec![n as i64], &vec![1.0; n])];
        for n in [100, 100, 100, 800, 800] {
            open.send(()).unwrap();
            assert_eq!(b.infer(samples(n)).await.unwrap().outputs[0].shape, [n as i64]);
        }
        let threads = threads(&runs);
        let inline: Vec<bool> = threads.iter().map(|t| !t.starts_with("batch-")).collect();
        assert_eq!(inline, [false, true, true, false, true], "{threads:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_arriving_during_an_inline_run_waits_for_the_session() {
        let (b, runs, open) = gated(AMPLE_INLINE_LIMIT_US);
        open.send(()).unwrap();
        b.infer(one()).await.unwrap();
        // An inline run held on its gate.
        let first = spawn_infer(&b, vec![Tensor::from_f32(vec![1, 1], &[3.0])]);
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let second = spawn_infer(&b, vec![Tensor::from_f32(vec![1, 1], &[4.0])]);
        // The second finds the session busy: it queues (the 60 s queue delay is not waited out).
        until(&b, |s| s.pending.load(Ordering::Acquire) == 1).await;
        open.send(()).unwrap();
        open.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().outputs[0].to_f32().unwrap(), vec![3.0]);
        let second = second.await.unwrap().unwrap();
        assert_eq!(second.outputs[0].to_f32().unwrap(), vec![4.0]);
        assert_eq!(second.batch_size, 1);
        let threads = threads(&runs);
        let n = threads.len();
        assert!(!threads[n - 2].starts_with("batch-"), "{threads:?}");
        assert_eq!(threads[n - 1], "batch-gated-0", "{threads:?}");
        assert_eq!(b.pending(), 0);
    }

    /// Signals each run's start (its session's name), then waits for its session's own gate.
    struct Signalled {
        name: &'static str,
        started: crossbeam_channel::Sender<&'static str>,
        gate: crossbeam_channel::Receiver<()>,
    }

    impl Runner for Signalled {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
            self.started.send(self.name).unwrap();
            self.gate.recv().expect("gate open");
            Ok(inputs.to_vec())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_does_not_fit_a_batch_runs_on_the_next_free_instance() {
        let (started_tx, started) = crossbeam_channel::unbounded();
        let mut gates = std::collections::HashMap::new();
        let sessions: Vec<Signalled> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let (open, gate) = crossbeam_channel::unbounded();
                gates.insert(name, open);
                Signalled { name, started: started_tx.clone(), gate }
            })
            .collect();
        let config = BatchingConfig {
            max_batch_size: 4,
            max_queue_delay_us: 60_000_000,
            max_queue_depth: 8,
            inline_run_limit_us: 0,
        };
        let b = Batcher::start_on("split", config, sessions, None, Arc::new(ModelStats::default()), 2);
        let next_start = || started.recv_timeout(Duration::from_secs(10));
        // Both instances busy, each with a lone request held on its gate.
        let first_lone = spawn_infer(&b, items(1));
        let first = next_start().expect("a lone request runs");
        let second_lone = spawn_infer(&b, items(1));
        let second = next_start().expect("the other instance runs the second");
        assert_ne!(first, second);
        // Three items and two queue: the instance free first takes one, the other does not fit.
        let three = spawn_infer(&b, items(3));
        let two = spawn_infer(&b, items(2));
        until(&b, |s| s.pending.load(Ordering::Acquire) == 2).await;
        gates[first].send(()).unwrap();
        assert_eq!(first_lone.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(next_start(), Ok(first));
        // The other instance, once free, runs the request that did not fit, while the first's
        // run still holds.
        gates[second].send(()).unwrap();
        assert_eq!(second_lone.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(next_start(), Ok(second), "the request put back runs on the instance free next");
        gates[first].send(()).unwrap();
        gates[second].send(()).unwrap();
        let sizes = [three.await.unwrap().unwrap().batch_size, two.await.unwrap().unwrap().batch_size];
        assert_eq!(sizes, [3, 2], "each ran alone");
        assert_eq!(b.pending(), 0);
    }

    /// A batcher with one batching session and one inline session of its own, both gated.
    fn own_inline_session() -> (Batcher, Runs, crossbeam_channel::Sender<()>) {
        own_inline_session_beside(&["batching"])
    }

    /// A batcher with gated batching sessions named `instances` and a gated inline session of
    /// its own.
    fn own_inline_session_beside(instances: &[&'static str]) -> (Batcher, Runs, crossbeam_channel::Sender<()>) {
        let runs = Runs::default();
        let (open, gate) = crossbeam_channel::unbounded();
        let session = |name| Gated { name, runs: runs.clone(), gate: gate.clone(), delay: Duration::ZERO };
        let config = BatchingConfig {
            max_batch_size: 8,
            max_queue_delay_us: 60_000_000,
            max_queue_depth: 8,
            inline_run_limit_us: AMPLE_INLINE_LIMIT_US,
        };
        // One core: a run going on holds it, as an inline session with a thread per core would.
        let mut b = Batcher::start_on(
            "own",
            config,
            instances.iter().map(|&name| session(name)).collect(),
            Some(session("inline")),
            Arc::new(ModelStats::default()),
            1,
        );
        b.inline_runs = Box::leak(Box::new(AtomicUsize::new(0)));
        (b, runs, open)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_session_of_its_own_takes_lone_requests_only() {
        let (b, runs, open) = own_inline_session();
        open.send(()).unwrap();
        open.send(()).unwrap();
        b.warm_up_sessions(&one()).unwrap();
        assert_eq!(b.stats.execution_count.load(Ordering::Relaxed), 0, "the warm-up is not counted");
        // Lone requests use the inline session once the model's last runs each served one.
        for _ in 0..INLINE_SESSION_AFTER_SOLO_RUNS + 2 {
            open.send(()).unwrap();
            b.infer(one()).await.unwrap();
        }
        // An inline run held on its gate; two requests arriving meanwhile queue and run together
        // on the batching session.
        let held = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let queued: Vec<_> = (0..2).map(|_| spawn_infer(&b, one())).collect();
        until(&b, |s| s.pending.load(Ordering::Acquire) == 2).await;
        open.send(()).unwrap();
        held.await.unwrap().unwrap();
        open.send(()).unwrap();
        for q in queued {
            assert_eq!(q.await.unwrap().unwrap().batch_size, 2);
        }
        // The model just served two requests at once: the next lone ones go to the batching
        // session until it has again run one request at a time often enough.
        for _ in 0..INLINE_SESSION_AFTER_SOLO_RUNS + 1 {
            open.send(()).unwrap();
            b.infer(one()).await.unwrap();
        }
        let solo = INLINE_SESSION_AFTER_SOLO_RUNS;
        let mut expected = vec![("batching", false), ("inline", false)]; // the warm-up, on this thread
        expected.extend([("batching", true)].repeat(solo)); // the first without a run time, then too few solo runs
        expected.extend([("inline", false)].repeat(2)); // lone and quick: the inline session
        expected.push(("inline", false)); // held while two more arrive
        expected.push(("batching", true)); // those two, as one batch
        expected.extend([("batching", true)].repeat(solo)); // lone again, after a batch of two
        expected.push(("inline", false));
        assert_eq!(sessions_used(&runs), expected);
    }

    #[test]
    fn the_warm_up_runs_every_instance_and_the_inline_session_once() {
        let (b, runs, open) = own_inline_session_beside(&["first", "second", "third"]);
        for _ in 0..4 {
            open.send(()).unwrap();
        }
        b.warm_up_sessions(&one()).unwrap();
        let expected = [("first", false), ("second", false), ("third", false), ("inline", false)];
        assert_eq!(sessions_used(&runs), expected, "each session once, on this thread");
        assert_eq!(b.stats.execution_count.load(Ordering::Relaxed), 0, "the warm-up is not counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_clients_taking_turns_are_not_lone_traffic() {
        let (b, runs, open) = own_inline_session();
        for _ in 0..=INLINE_SESSION_AFTER_SOLO_RUNS {
            open.send(()).unwrap();
            b.infer(one()).await.unwrap();
        }
        // A runs inline; B arrives meanwhile and waits for the batching session, alone: every
        // run still serves one request, but two clients are being served.
        let a = spawn_infer(&b, one());
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let second = spawn_infer(&b, one());
        until(&b, |s| s.pending.load(Ordering::Acquire) == 1).await;
        open.send(()).unwrap();
        a.await.unwrap().unwrap();
        open.send(()).unwrap();
        assert_eq!(second.await.unwrap().unwrap().batch_size, 1);
        open.send(()).unwrap();
        b.infer(one()).await.unwrap();
        let mut expected = [("batching", true)].repeat(INLINE_SESSION_AFTER_SOLO_RUNS);
        expected.push(("inline", false)); // lone at last
        expected.push(("inline", false)); // A
        expected.push(("batching", true)); // B, alone in its batch
        expected.push(("batching", true)); // the next is not lone yet
        assert_eq!(sessions_used(&runs), expected);
    }

    #[tokio::test]
    async fn a_failed_run_answers_with_its_own_error() {
        struct Failing;
        impl Runner for Failing {
            fn run(&mut self, _: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
                Err(InferenceError::Runtime("out of memory".into()))
            }
        }
        let config =
            BatchingConfig { max_batch_size: 4, max_queue_delay_us: 0, max_queue_depth: 4, inline_run_limit_us: 0 };
        let b = Batcher::start("failing", config, vec![Failing], Arc::new(ModelStats::default()));
        let err = b.infer(one()).await.unwrap_err();
        assert_eq!(err.to_string(), "model execution failed: out of memory");
        assert_eq!(b.stats.running.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_run_that_panics_answers_with_an_error_and_the_model_serves_on() {
        struct Panicking(u32);
        impl Runner for Panicking {
            fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
                self.0 += 1;
                if self.0 == 1 {
                    panic!("index out of bounds");
                }
                Ok(inputs.to_vec())
            }
        }
        let config =
            BatchingConfig { max_batch_size: 4, max_queue_delay_us: 0, max_queue_depth: 4, inline_run_limit_us: 0 };
        let b = Batcher::start("panicking", config, vec![Panicking(0)], Arc::new(ModelStats::default()));
        let err = b.infer(one()).await.unwrap_err();
        assert_eq!(err.to_string(), "model execution failed: the run panicked: index out of bounds");
        assert!(b.infer(one()).await.is_ok(), "the batching thread lives on");
        assert_eq!(b.stats.running.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn oversized_requests_and_mismatched_shapes() {
        let (b, _) = batcher(4, 0, 8, Duration::ZERO);
        let err = b.infer(vec![Tensor::from_f32(vec![5, 1], &[0.0; 5])]).await.unwrap_err();
        assert!(err.to_string().contains("max batch size 4"), "{err}");
        let t = Tensor { datatype: DataType::Fp32, shape: vec![2, 3], data: vec![0; 24].into() };
        let out = b.infer(vec![t]).await.unwrap();
        assert_eq!(out.outputs[0].shape, vec![2, 3]);
        assert_eq!(out.batch_size, 2);
    }
}
