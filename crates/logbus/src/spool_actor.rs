//! The spool's owner: one thread holds the [`Spool`] and serves appends, peeks, acknowledgements
//! and the close over a channel. No disk write or fsync runs on a request's thread or on an
//! async worker; request handlers only `try_send`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::emitter::{EmitterStats, Envelope};
use crate::spool::{Appended, Position, Spool};

/// Records peeked from the spool, each with its position.
pub(crate) type Peeked = Vec<(Envelope, Position)>;

enum Command {
    Append(Envelope),
    Peek { max: usize, max_bytes: u64, reply: oneshot::Sender<io::Result<Peeked>> },
    Ack { to: Position, count: u64, reply: oneshot::Sender<io::Result<()>> },
    Close { reply: oneshot::Sender<()> },
}

/// What the actor shares with its handles without a round trip.
struct Shared {
    /// Records on disk now (0 once closed).
    len: AtomicU64,
    /// While set, new records go to the spool (behind the ones waiting) to keep their order.
    /// Written only under `appending`, read without it.
    active: AtomicBool,
    /// Appends handed to the actor and not yet stored: the actor clears `active` only when
    /// none is on its way, decided under this lock so that an append cannot slip past it.
    appending: parking_lot::Mutex<u64>,
    stats: Arc<EmitterStats>,
}

impl Shared {
    /// An append is on its way: records go to the spool from now on.
    fn announce(&self) {
        let mut appending = self.appending.lock();
        *appending += 1;
        self.active.store(true, Ordering::SeqCst);
    }

    /// An announced append was stored, or never sent.
    fn settled(&self) {
        let mut appending = self.appending.lock();
        *appending = appending.saturating_sub(1);
    }

    /// Records may go straight to the sink again when nothing waits on disk and no append is
    /// on its way.
    fn quiet_if(&self, spool_empty: bool) {
        let appending = self.appending.lock();
        if spool_empty && *appending == 0 {
            self.active.store(false, Ordering::SeqCst);
        }
    }
}

/// A handle on the spool thread. Clones share it; the thread ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct SpoolActor {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// The spool thread has ended (closed, or it failed to start).
#[derive(Debug)]
pub(crate) struct SpoolClosed;

impl SpoolActor {
    /// Moves `spool` onto its own thread; at most `queue_capacity` commands wait for it.
    pub(crate) fn start(spool: Spool, queue_capacity: usize, stats: Arc<EmitterStats>) -> io::Result<Self> {
        let (commands, receiver) = mpsc::channel(queue_capacity.max(1));
        let shared = Arc::new(Shared {
            len: AtomicU64::new(spool.len()),
            active: AtomicBool::new(!spool.is_empty()),
            appending: parking_lot::Mutex::new(0),
            stats,
        });
        let owner = shared.clone();
        std::thread::Builder::new().name("vigil-spool".into()).spawn(move || serve(spool, receiver, &owner))?;
        Ok(Self { commands, shared })
    }

    /// Whether new records must go to the spool to stay behind the ones waiting there.
    pub(crate) fn active(&self) -> bool {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Records waiting on disk now (0 once closed).
    pub(crate) fn len(&self) -> u64 {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Hands a record to the spool without waiting (a request's thread). When the spool's own
    /// queue is full the record is lost and counted as dropped.
    pub(crate) fn try_append(&self, envelope: Envelope) {
        self.shared.announce();
        match self.commands.try_send(Command::Append(envelope)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.settled();
                // Counted as spooled-then-dropped so that the accounting settles.
                let stats = &self.shared.stats;
                stats.spooled.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("spool queue full: record dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.settled();
                lost_after_close(&self.shared.stats)
            }
        }
    }

    /// Hands a record to the spool, waiting for room in its queue (the forwarding task).
    pub(crate) async fn append(&self, envelope: Envelope) {
        self.shared.announce();
        if self.commands.send(Command::Append(envelope)).await.is_err() {
            self.shared.settled();
            lost_after_close(&self.shared.stats);
        }
    }

    /// The oldest records, in order: at most `max`, and no more than `max_bytes` of them once
    /// the first is taken.
    pub(crate) async fn peek(&self, max: usize, max_bytes: u64) -> Result<io::Result<Peeked>, SpoolClosed> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Peek { max, max_bytes, reply }).await.map_err(|_| SpoolClosed)?;
        answer.await.map_err(|_| SpoolClosed)
    }

    /// Acknowledges `count` records up to and including `to`.
    pub(crate) async fn ack(&self, to: Position, count: u64) -> Result<io::Result<()>, SpoolClosed> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Ack { to, count, reply }).await.map_err(|_| SpoolClosed)?;
        answer.await.map_err(|_| SpoolClosed)
    }

    /// Closes the spool once the commands queued before are done, releasing its directory.
    pub(crate) async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = answer.await;
        }
    }
}

fn lost_after_close(stats: &EmitterStats) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!("record emitted after shutdown closed the spool: record lost");
}

fn serve(spool: Spool, mut commands: mpsc::Receiver<Command>, shared: &Shared) {
    let mut spool = Some(spool);
    let stats = &shared.stats;
    while let Some(command) = commands.blocking_recv() {
        match command {
            Command::Append(envelope) => {
                let Some(s) = spool.as_mut() else {
                    shared.settled();
                    lost_after_close(stats);
                    continue;
                };
                store(s, &envelope, stats);
                shared.settled();
            }
            // Once closed, peeks and acknowledgements get no answer: the caller sees SpoolClosed.
            Command::Peek { max, max_bytes, reply } => {
                let Some(s) = spool.as_mut() else { continue };
                let peeked = s.peek_within(max, max_bytes);
                // Nothing waits on disk or on its way: records may go straight to the sink.
                shared.quiet_if(s.is_empty());
                let _ = reply.send(peeked);
            }
            Command::Ack { to, count, reply } => {
                let Some(s) = spool.as_mut() else { continue };
                let acked = s.ack(to, count);
                // The length is published before the answer, so the caller never reads it stale.
                shared.len.store(s.len(), Ordering::Relaxed);
                let _ = reply.send(acked);
            }
            Command::Close { reply } => {
                spool = None;
                shared.len.store(0, Ordering::Relaxed);
                let _ = reply.send(());
            }
        }
        shared.len.store(spool.as_ref().map_or(0, Spool::len), Ordering::Relaxed);
    }
}

fn store(spool: &mut Spool, envelope: &Envelope, stats: &EmitterStats) {
    match spool.append(envelope) {
        Ok(Appended::Stored) => {
            stats.spooled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Appended::StoredDroppingOldest(n)) => {
            stats.spooled.fetch_add(1, Ordering::Relaxed);
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(dropped = n, "spool full: dropped the oldest records");
        }
        Ok(Appended::Rejected) => {
            // Counted as spooled-then-dropped so that the accounting settles.
            stats.spooled.fetch_add(1, Ordering::Relaxed);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("spool full: record rejected");
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot write to the spool: record lost");
        }
    }
}
