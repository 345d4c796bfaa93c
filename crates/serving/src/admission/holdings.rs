//! What an admitted call holds until its response ends (its concurrency permit and its memory
//! charges), and the sweep that gives back the holdings of calls whose client stopped reading.
//!
//! hyper polls a response body only while the client's HTTP/2 flow-control window has room:
//! a client that stops reading (a stalled process, or one that never opens its window) leaves
//! its calls' bodies unpolled, so neither their end nor their deadline, both seen by the body,
//! would ever come, and their permits would be held for as long as the connection lives. The
//! sweep frees what such calls hold once their deadline has passed. Their streams stay open
//! until the client resets them or its connection closes; `limits.max_streams_per_connection`
//! bounds how many one connection keeps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::MessageCharges;

/// How often the sweep looks, and how long past its deadline a call is left to its body.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An admitted call's permit and charges, given back by whichever comes first: its response
/// body ending, or the sweep.
pub(crate) struct Holding {
    permit: parking_lot::Mutex<Option<OwnedSemaphorePermit>>,
    pub(crate) charges: MessageCharges,
    deadline: Instant,
}

impl Holding {
    /// Gives everything back; true when a permit was still held.
    pub(crate) fn release(&self) -> bool {
        let held = self.permit.lock().take().is_some();
        self.charges.release();
        held
    }
}

/// The holdings of a layer's calls with a deadline, for the sweep.
#[derive(Clone)]
pub(crate) struct Holdings(Arc<Shared>);

struct Shared {
    /// Each call watched, handed to the sweep without a lock on the request's path.
    calls: mpsc::Sender<Weak<Holding>>,
    /// The other end, until the sweep starts (with the first call watched) and takes it.
    queue: parking_lot::Mutex<Option<mpsc::Receiver<Weak<Holding>>>>,
    sweeping: AtomicBool,
    /// Calls whose holdings the sweep gave back.
    released: AtomicU64,
}

impl Default for Holdings {
    fn default() -> Self {
        let (calls, queue) = mpsc::channel();
        Self(Arc::new(Shared {
            calls,
            queue: parking_lot::Mutex::new(Some(queue)),
            sweeping: AtomicBool::new(false),
            released: AtomicU64::new(0),
        }))
    }
}

impl Holdings {
    /// The holding of a call answered by its handler; one with a permit and a deadline is
    /// watched by the sweep (started with the first, on the caller's runtime).
    pub(crate) fn hold(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        charges: MessageCharges,
        deadline: Option<Instant>,
    ) -> Arc<Holding> {
        let watched = permit.is_some() && deadline.is_some();
        let deadline = deadline.unwrap_or_else(Instant::now);
        let holding = Arc::new(Holding { permit: parking_lot::Mutex::new(permit), charges, deadline });
        if watched {
            let _ = self.0.calls.send(Arc::downgrade(&holding));
            if !self.0.sweeping.load(Ordering::Relaxed)
                && !self.0.sweeping.swap(true, Ordering::AcqRel)
                && let Some(queue) = self.0.queue.lock().take()
            {
                tokio::spawn(sweep(Arc::downgrade(&self.0), queue));
            }
        }
        holding
    }

    /// Calls past their deadline whose answer was not taken, their holdings given back.
    pub(crate) fn released(&self) -> u64 {
        self.0.released.load(Ordering::Relaxed)
    }
}

/// Every [`SWEEP_EVERY`], forgets the calls that ended and frees those past their deadline by
/// as much; ends with the layer.
async fn sweep(shared: Weak<Shared>, queue: mpsc::Receiver<Weak<Holding>>) {
    let mut calls: Vec<Weak<Holding>> = Vec::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(shared) = shared.upgrade() else { return };
        calls.extend(queue.try_iter());
        let now = Instant::now();
        let mut released = 0;
        calls.retain(|call| {
            let Some(call) = call.upgrade() else { return false };
            if call.deadline + SWEEP_EVERY > now {
                return true;
            }
            released += u64::from(call.release());
            false
        });
        if calls.capacity() > 4 * calls.len().max(1024) {
            calls.shrink_to_fit();
        }
        if released > 0 {
            shared.released.fetch_add(released, Ordering::Relaxed);
            tracing::warn!(
                calls = released,
                "calls past their deadline whose client stopped reading the answer: their admission given back"
            );
        }
    }
}
