//! The in-process bus of the embedded default: records go from the emitter to a consumer in the
//! same process through a bounded channel, in place of Kafka.

use std::future::Future;

use tokio::sync::mpsc;

use crate::emitter::{Envelope, Sink, SinkError};

/// The sending side, a [`Sink`] for the emitter.
#[derive(Clone)]
pub struct InProcessSink {
    sender: mpsc::Sender<Envelope>,
}

/// A bus holding at most `capacity` records in flight; returns the sink and the consumer's end.
pub fn channel(capacity: usize) -> (InProcessSink, mpsc::Receiver<Envelope>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (InProcessSink { sender }, receiver)
}

impl Sink for InProcessSink {
    fn send(&self, envelope: Envelope) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        // Taken now, in call order; only a full channel waits (and may then reorder).
        let waiting = match self.sender.try_send(envelope) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(envelope)) => Some((self.sender.clone(), envelope)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return futures::future::Either::Left(async {
                    Err(SinkError::transient("the in-process consumer stopped"))
                });
            }
        };
        futures::future::Either::Right(async move {
            match waiting {
                None => Ok(()),
                Some((sender, envelope)) => {
                    sender.send(envelope).await.map_err(|_| SinkError::transient("the in-process consumer stopped"))
                }
            }
        })
    }
}
