//! The emitter: request handlers hand records to a bounded queue and move on; a background
//! task forwards them to a [`Sink`] with bounded concurrency. A full queue never blocks a
//! request: the record is counted as dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// One record on its way to a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub topic: String,
    /// Partitioning key: records with one key keep their order.
    pub key: String,
    pub payload: Vec<u8>,
}

/// A sink failed to deliver a record.
#[derive(Debug, thiserror::Error)]
#[error("record not delivered: {0}")]
pub struct SinkError(pub String);

/// Where records go: Kafka in production, an in-process bus in the embedded default.
pub trait Sink: Send + Sync + 'static {
    /// Starts delivering a record; the future resolves on acknowledgement. Records started
    /// in order are delivered in order per key.
    fn send(&self, envelope: Envelope) -> impl Future<Output = Result<(), SinkError>> + Send + 'static;
}

/// Counters of an emitter.
#[derive(Debug, Default)]
pub struct EmitterStats {
    /// Records handed over by request handlers.
    pub emitted: AtomicU64,
    /// Records acknowledged by the sink.
    pub delivered: AtomicU64,
    /// Records the sink failed to deliver.
    pub failed: AtomicU64,
    /// Records refused because the queue was full.
    pub dropped: AtomicU64,
}

impl EmitterStats {
    /// (emitted, delivered, failed, dropped).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.emitted.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// Handle given to request handlers. Cloning shares the queue.
#[derive(Clone)]
pub struct Emitter {
    sender: mpsc::Sender<Envelope>,
    stats: Arc<EmitterStats>,
}

impl Emitter {
    /// Starts the forwarding task: at most `queue_capacity` records wait, at most
    /// `max_in_flight` are being delivered at once.
    pub fn start<S: Sink>(sink: S, queue_capacity: usize, max_in_flight: usize) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(queue_capacity.max(1));
        let stats = Arc::new(EmitterStats::default());
        let task = tokio::spawn(forward(Arc::new(sink), receiver, stats.clone(), max_in_flight.max(1)));
        (Self { sender, stats }, task)
    }

    /// Queues a record without waiting; returns false (and counts it) when the queue is full.
    pub fn emit(&self, envelope: Envelope) -> bool {
        self.stats.emitted.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(envelope) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits until every record emitted so far is delivered, failed or dropped; false when
    /// `timeout` passes first.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (emitted, delivered, failed, dropped) = self.stats.snapshot();
            if delivered + failed + dropped >= emitted {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<EmitterStats> {
        &self.stats
    }
}

async fn forward<S: Sink>(
    sink: Arc<S>,
    mut receiver: mpsc::Receiver<Envelope>,
    stats: Arc<EmitterStats>,
    max_in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    while let Some(envelope) = receiver.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let stats = stats.clone();
        let topic = envelope.topic.clone();
        let delivery = sink.send(envelope);
        tokio::spawn(async move {
            let _permit = permit;
            match delivery.await {
                Ok(()) => stats.delivered.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "record not delivered");
                    stats.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
    // Wait for deliveries in flight before reporting done.
    let _ = permits.acquire_many(max_in_flight as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Collect {
        seen: Arc<std::sync::Mutex<Vec<Envelope>>>,
        delay: Duration,
        fail: bool,
    }

    impl Sink for Collect {
        fn send(&self, envelope: Envelope) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
            let this = self.clone();
            async move {
                tokio::time::sleep(this.delay).await;
                if this.fail {
                    return Err(SinkError("broker down".into()));
                }
                this.seen.lock().unwrap().push(envelope);
                Ok(())
            }
        }
    }

    fn env(i: usize) -> Envelope {
        Envelope { topic: "t".into(), key: "k".into(), payload: vec![i as u8] }
    }

    #[tokio::test]
    async fn delivers_everything_then_finishes() {
        let sink = Collect::default();
        let (emitter, task) = Emitter::start(sink.clone(), 100, 4);
        for i in 0..50 {
            assert!(emitter.emit(env(i)));
        }
        let stats = emitter.stats().clone();
        drop(emitter);
        task.await.unwrap();
        assert_eq!(sink.seen.lock().unwrap().len(), 50);
        assert_eq!(stats.snapshot(), (50, 50, 0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let sink = Collect { delay: Duration::from_millis(200), ..Default::default() };
        let (emitter, _task) = Emitter::start(sink, 2, 1);
        let accepted = (0..10).filter(|&i| emitter.emit(env(i))).count();
        assert!((2..10).contains(&accepted), "{accepted}");
        let (emitted, _, _, dropped) = emitter.stats().snapshot();
        assert_eq!((emitted, dropped), (10, (10 - accepted) as u64));
    }

    #[tokio::test]
    async fn failures_are_counted() {
        let sink = Collect { fail: true, ..Default::default() };
        let (emitter, task) = Emitter::start(sink, 10, 2);
        emitter.emit(env(1));
        let stats = emitter.stats().clone();
        drop(emitter);
        task.await.unwrap();
        assert_eq!(stats.snapshot(), (1, 0, 1, 0));
    }
}
