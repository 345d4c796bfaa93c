//! Dynamic batching: requests for one model wait in a bounded queue; worker threads (one per
//! session) take the oldest request and everything queued behind it, run them as one batch,
//! and split the outputs back.
//!
//! Batches are formed continuously: a worker never waits when waiting cannot help. With no other
//! batch running it runs at once with what is queued, so a lone request pays no queue delay and
//! under load each batch is what arrived while the previous one ran. Only while another
//! session is busy does a worker wait for its batch to fill, and never longer than the oldest
//! request's `max_queue_delay` (Triton's bound, here an upper limit rather than a fixed cost).
//!
//! `max_queue_depth` bounds the requests admitted and not yet running, forming batches included.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::InferenceError;
use crate::config::BatchingConfig;
use crate::stats::ModelStats;
use crate::tensor::Tensor;

/// Something that runs a batch: in production an ONNX Runtime session.
pub trait Runner: Send + 'static {
    /// Runs inputs whose first dimension is the batch; returns outputs with the same batch.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError>;
}

impl Runner for crate::session::ModelSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
        crate::session::ModelSession::run(self, inputs)
    }
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

/// Handle to a model's queue. Cloning shares the queue.
#[derive(Clone)]
pub struct Batcher {
    sender: Sender<Job>,
    config: BatchingConfig,
    model: Arc<str>,
    stats: Arc<ModelStats>,
}

impl Batcher {
    /// Starts one worker thread per runner; the workers stop when every `Batcher` clone is dropped.
    pub fn start<R: Runner>(model: &str, config: BatchingConfig, runners: Vec<R>, stats: Arc<ModelStats>) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(config.max_queue_depth);
        for (i, runner) in runners.into_iter().enumerate() {
            let receiver = receiver.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("batch-{model}-{i}"))
                .spawn(move || worker(runner, receiver, config, stats))
                .expect("spawning a batching thread");
        }
        Self { sender, config, model: model.into(), stats }
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
        let items = inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(1).max(1) as usize;
        if items > self.config.max_batch_size {
            return Err(InferenceError::invalid(format!(
                "batch of {items} exceeds the model's max batch size {}",
                self.config.max_batch_size
            )));
        }
        let full = || {
            InferenceError::QueueFull(format!(
                "model '{}' queue is full ({} requests waiting); retry later",
                self.model, self.config.max_queue_depth
            ))
        };
        let pending = &self.stats.pending;
        if pending.fetch_add(1, Ordering::AcqRel) >= self.config.max_queue_depth as u64 {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(full());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, items, enqueued: Instant::now(), reply };
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
}

fn worker<R: Runner>(mut runner: R, receiver: Receiver<Job>, config: BatchingConfig, stats: Arc<ModelStats>) {
    let mut carried: Option<Job> = None;
    let abandon = |stats: &ModelStats| stats.pending.fetch_sub(1, Ordering::AcqRel);
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
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
            // Everything already queued joins at once; beyond that, wait only while another
            // session is busy (its batch would hold these requests up anyway).
            let next = match receiver.try_recv() {
                Ok(job) => job,
                Err(_) if stats.running.load(Ordering::Acquire) == 0 => break,
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
                carried = Some(next);
                break;
            }
            items += next.items;
            jobs.push(next);
        }
        stats.pending.fetch_sub(jobs.len() as u64, Ordering::AcqRel);
        stats.running.fetch_add(1, Ordering::AcqRel);
        run_batch(&mut runner, jobs, items, &stats);
        stats.running.fetch_sub(1, Ordering::AcqRel);
    }
}

fn same_item_shapes(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| x.datatype == y.datatype && x.shape.get(1..) == y.shape.get(1..))
}

fn run_batch<R: Runner>(runner: &mut R, jobs: Vec<Job>, items: usize, stats: &ModelStats) {
    let started = Instant::now();
    let inputs = if jobs.len() == 1 { None } else { Some(concat_inputs(&jobs, items)) };
    let result = runner.run(inputs.as_deref().unwrap_or(&jobs[0].inputs));
    let compute_time = started.elapsed();
    stats.record_execution(items, compute_time);
    match result.and_then(|outputs| split_outputs(outputs, &jobs, items)) {
        Ok(per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job) {
                let queue_time = started.saturating_duration_since(job.enqueued);
                stats.queue.record(queue_time);
                stats.compute_infer.record(compute_time);
                let _ = job.reply.send(Ok(BatchOutput { outputs, queue_time, compute_time, batch_size: items }));
            }
        }
        Err(error) => {
            let message = error.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(InferenceError::Runtime(message.clone())));
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
            Tensor { datatype: first.datatype, shape, data }
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
            slot.push(Tensor { datatype: output.datatype, shape, data: output.data[offset..offset + len].to_vec() });
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
        sessions(1, max_batch, delay_us, depth, run_delay)
    }

    fn sessions(
        instances: usize,
        max_batch: usize,
        delay_us: u64,
        depth: usize,
        run_delay: Duration,
    ) -> (Batcher, Arc<parking_lot::Mutex<Vec<usize>>>) {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let config = BatchingConfig { max_batch_size: max_batch, max_queue_delay_us: delay_us, max_queue_depth: depth };
        let runners = (0..instances).map(|_| Doubler { seen: seen.clone(), delay: run_delay }).collect();
        let b = Batcher::start("m", config, runners, Arc::new(ModelStats::default()));
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

    /// Waits until `check` holds on the batcher's counters (they change on the worker thread).
    async fn until(b: &Batcher, check: impl Fn(&ModelStats) -> bool) {
        while !check(&b.stats) {
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
        let (b, seen) = batcher(8, 60_000_000, 64, Duration::from_millis(300));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.infer(one()).await }
        });
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let rest: Vec<_> = (0..5)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.infer(one()).await })
            })
            .collect();
        until(&b, |s| s.pending.load(Ordering::Acquire) == 5).await;
        assert_eq!(first.await.unwrap().unwrap().batch_size, 1);
        for r in rest {
            assert_eq!(r.await.unwrap().unwrap().batch_size, 5);
        }
        assert_eq!(*seen.lock(), vec![1, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_another_session_runs_a_batch_fills_up_to_its_size() {
        // Two sessions: while one runs, the other waits (up to the 60 s delay) for a full batch of 3.
        let (b, seen) = sessions(2, 3, 60_000_000, 64, Duration::from_millis(300));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.infer(one()).await }
        });
        until(&b, |s| s.running.load(Ordering::Acquire) == 1).await;
        let mut rest = Vec::new();
        for _ in 0..3 {
            let b = b.clone();
            rest.push(tokio::spawn(async move { b.infer(one()).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for r in rest {
            assert_eq!(r.await.unwrap().unwrap().batch_size, 3);
        }
        assert_eq!(first.await.unwrap().unwrap().batch_size, 1);
        assert_eq!(*seen.lock(), vec![1, 3]);
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
        let (b, _) = batcher(8, 0, 2, Duration::from_millis(300));
        let running = tokio::spawn({
            let b = b.clone();
            async move { b.infer(one()).await }
        });
        until(&b, |s| s.running.load(Ordering::Acquire) == 1 && s.pending.load(Ordering::Acquire) == 0).await;
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.infer(one()).await })
            })
            .collect();
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

    #[tokio::test]
    async fn oversized_requests_and_mismatched_shapes() {
        let (b, _) = batcher(4, 0, 8, Duration::ZERO);
        let err = b.infer(vec![Tensor::from_f32(vec![5, 1], &[0.0; 5])]).await.unwrap_err();
        assert!(err.to_string().contains("max batch size 4"), "{err}");
        let t = Tensor { datatype: DataType::Fp32, shape: vec![2, 3], data: vec![0; 24] };
        let out = b.infer(vec![t]).await.unwrap();
        assert_eq!(out.outputs[0].shape, vec![2, 3]);
        assert_eq!(out.batch_size, 2);
    }
}
