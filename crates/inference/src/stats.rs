//! Per-model counters in the shape of Triton's model statistics: successes, failures,
//! queue time and compute time, and per-batch-size execution counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A count and a total duration in nanoseconds.
#[derive(Debug, Default)]
pub struct Duration64 {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration64 {
    /// Adds one observation.
    pub fn record(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Back to zero.
    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.ns.store(0, Ordering::Relaxed);
    }

    /// (count, total nanoseconds).
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// Counters of one model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Requests answered successfully, end to end.
    pub success: Duration64,
    /// Requests that failed (any cause after the model was found).
    pub fail: Duration64,
    /// Time requests waited in the batching queue.
    pub queue: Duration64,
    /// Time requests spent in the model run.
    pub compute_infer: Duration64,
    /// Items inferred (a batch of 8 counts 8).
    pub inference_count: AtomicU64,
    /// Model runs (a batch of 8 counts 1).
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last run.
    pub last_inference_ms: AtomicU64,
    /// Runs and total compute time per batch size.
    pub batches: Mutex<BTreeMap<usize, (u64, u64)>>,
    /// Requests admitted to the batching queue and not yet running (queued or in a forming batch).
    pub pending: AtomicU64,
    /// Batches running now.
    pub running: AtomicU64,
    /// Model runs made inline, on the thread that received the request (counted in
    /// `execution_count` too).
    pub inline_runs: AtomicU64,
}

impl ModelStats {
    /// Forgets every count and time (after a warm-up); the queue gauges are left alone.
    pub fn reset(&self) {
        for d in [&self.success, &self.fail, &self.queue, &self.compute_infer] {
            d.reset();
        }
        self.inference_count.store(0, Ordering::Relaxed);
        self.execution_count.store(0, Ordering::Relaxed);
        self.inline_runs.store(0, Ordering::Relaxed);
        self.last_inference_ms.store(0, Ordering::Relaxed);
        self.batches.lock().clear();
    }

    /// Records one model run over `items` items.
    pub fn record_execution(&self, items: usize, compute: Duration) {
        self.inference_count.fetch_add(items as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms.store(now.as_millis() as u64, Ordering::Relaxed);
        let mut batches = self.batches.lock();
        let entry = batches.entry(items).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += compute.as_nanos() as u64;
    }
}
