//! A tower layer in front of every gRPC service: sheds load beyond a concurrency limit with
//! RESOURCE_EXHAUSTED (instead of queueing without bound) and ends requests that outlive
//! their deadline (the server's, or the caller's `grpc-timeout` when shorter) with
//! DEADLINE_EXCEEDED.
//!
//! A call is admitted for its whole life, response body included: a stream holds its permit
//! until it ends, its deadline covers every message, and a stream idle for
//! `stream_idle_timeout` (the client sent nothing, no answer went out, no message is being
//! answered) is ended. A call whose client stopped reading its answer gives its admission back
//! a second past its deadline (`holdings`). At the end of a server's drain, the calls still
//! running end with UNAVAILABLE ([`AdmissionLayer::with_closing`]). Streaming methods are told
//! apart by the services' own descriptors ([`streaming_methods`]), and get `stream_timeout`
//! instead of `request_timeout`; health watches and reflection streams last as long as their
//! clients want, until the drain starts ([`AdmissionLayer::with_draining`]).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tower::{Layer, Service};

mod holdings;
use holdings::{Holding, Holdings};

/// Admission limits.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Calls handled at once; a stream counts until it ends.
    pub max_concurrent_requests: usize,
    /// Longest a unary call may take.
    pub request_timeout: Duration,
    /// Longest a streaming call may stay open.
    pub stream_timeout: Duration,
    /// A stream that sends no message for this long is ended.
    pub stream_idle_timeout: Duration,
    /// Most messages a client may send on one stream; the next ends it with RESOURCE_EXHAUSTED.
    pub max_stream_messages: u64,
    /// Largest message a client may send, in bytes: a longer declared length is refused with
    /// RESOURCE_EXHAUSTED before the message is read (gRPC's code for a message over the limit).
    pub max_message_bytes: usize,
    /// Memory budget of the calls in flight, in bytes: each call is charged
    /// [`BYTES_CHARGED_PER_BYTE`] times the length its first message declares, before that
    /// message is buffered, and is shed when the budget cannot cover it; a stream is charged
    /// each later message as it starts (see [`MessageCharges`] for how long a charge lasts),
    /// and ended when it cannot be covered.
    pub max_request_bytes_in_flight: usize,
}

/// What a request's bytes cost the server while it runs: the received message, the decoded
/// tensor, and its share of the batch the batcher concatenates.
pub const BYTES_CHARGED_PER_BYTE: usize = 3;

/// Calls that change what is loaded: timed by `stream_timeout` (see [`Admission`]).
const REPOSITORY_CHANGES: [&str; 2] =
    ["/inference.GRPCInferenceService/RepositoryModelLoad", "/inference.GRPCInferenceService/RepositoryModelUnload"];

/// Streams that last as long as their client's connection, which are never shed: health
/// watches (clients that check health themselves keep one open), reflection, and the servers'
/// watches of the control plane's deployments. They get no deadline of the server's (the
/// client's own holds) and no idle timeout, and end when the server starts to drain, once it
/// has said NOT_SERVING.
const LASTING_STREAMS: [&str; 4] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/vigil.v1.Control/WatchDeployments",
];

/// Largest request message of a lasting stream (a service name, a server id): they are not
/// charged to the memory budget.
pub const LASTING_MESSAGE_BYTES: usize = 64 << 10;

/// The paths (`/package.Service/Method`) of every method in an encoded `FileDescriptorSet`, each
/// with whether it streams (client or server side).
pub fn grpc_methods(descriptor_set: &[u8]) -> Vec<(String, bool)> {
    let Ok(set) = <prost_types::FileDescriptorSet as prost::Message>::decode(descriptor_set) else {
        return Vec::new();
    };
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                methods.push((path, method.client_streaming() || method.server_streaming()));
            }
        }
    }
    methods
}

/// The paths of every client- or server-streaming method in an encoded `FileDescriptorSet`.
pub fn streaming_methods(descriptor_set: &[u8]) -> HashSet<String> {
    grpc_methods(descriptor_set).into_iter().filter(|(_, streams)| *streams).map(|(path, _)| path).collect()
}

/// The charges against the memory budget that a call's messages hold, oldest first. Shared by
/// the request body (which charges each message as it starts), the handler (see
/// [`MessageCharges::hold_until_answered`]) and the response body (which releases them all
/// when the call ends). A unary call holds its one message's charge until it ends.
///
/// By default a stream holds the charge of its latest message only, each replacing the one
/// before. A handler that answers message for message and runs several at once calls
/// [`MessageCharges::hold_until_answered`] before it reads the stream, then takes each
/// message's charge with [`MessageCharges::take`] and drops it with the answer: every message
/// in its pipeline stays charged. A message of such a stream that finds no room waits, instead
/// of ending the stream, while the stream's own unanswered messages hold at least as much as
/// it needs: their answers give it back.
#[derive(Clone, Default)]
pub struct MessageCharges(Arc<SharedCharges>);

#[derive(Default)]
struct SharedCharges {
    charges: parking_lot::Mutex<Charges>,
    /// Bytes of the charges the handler took and has not dropped yet.
    taken_bytes: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Charges {
    /// One entry per message charged and not yet taken (`None` for an empty message).
    held: std::collections::VecDeque<Option<OwnedSemaphorePermit>>,
    until_answered: bool,
    /// The request body waiting for room, woken as the handler's charges are dropped.
    waiting: Option<std::task::Waker>,
    /// What a message took once decoded beyond its charge, where no charge was left to add it
    /// to: held until another such excess takes its place, or the call ends.
    decoded: Option<OwnedSemaphorePermit>,
}

impl SharedCharges {
    /// Bytes this call holds: charged and not yet taken, or taken and not yet dropped.
    fn held_bytes(&self, charges: &Charges) -> usize {
        let queued: usize = charges.held.iter().flatten().map(|p| p.num_permits()).sum();
        queued + self.taken_bytes.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One message's charge against the memory budget, released when dropped.
#[must_use = "the charge is released when dropped"]
pub struct MessageCharge {
    permit: Option<OwnedSemaphorePermit>,
    owner: Option<Arc<SharedCharges>>,
}

impl MessageCharge {
    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for MessageCharge {
    fn drop(&mut self) {
        let bytes = self.bytes();
        // The bytes go back first, then the body waiting for them is told.
        drop(self.permit.take());
        if let Some(owner) = &self.owner {
            owner.taken_bytes.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
            let waiting = owner.charges.lock().waiting.take();
            if let Some(waker) = waiting {
                waker.wake();
            }
        }
    }
}

impl MessageCharges {
    /// Keeps each message's charge until [`Self::take`] hands it out, instead of releasing it
    /// when the next message starts. Call before reading the stream.
    pub fn hold_until_answered(&self) {
        self.0.charges.lock().until_answered = true;
    }

    /// The charge of the oldest message not yet taken (an empty charge when there is none,
    /// as for a call this layer did not admit). Take one per message received, in order.
    pub fn take(&self) -> MessageCharge {
        let mut charges = self.0.charges.lock();
        match charges.held.pop_front().flatten() {
            Some(permit) => {
                self.0.taken_bytes.fetch_add(permit.num_permits(), std::sync::atomic::Ordering::AcqRel);
                MessageCharge { permit: Some(permit), owner: Some(self.0.clone()) }
            }
            None => MessageCharge { permit: None, owner: None },
        }
    }

    /// Adds what a message takes once decoded, beyond its charge, to the oldest charge not yet
    /// taken: the message being decoded, as the handler takes each message's charge once it
    /// has received it.
    fn add_decoded(&self, extra: OwnedSemaphorePermit) {
        let mut charges = self.0.charges.lock();
        match charges.held.front_mut() {
            Some(Some(charge)) => charge.merge(extra),
            _ => charges.decoded = Some(extra),
        }
    }

    /// Whether the handler holds a message's charge now: a message it is still answering.
    fn answering(&self) -> bool {
        self.0.taken_bytes.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Releases every charge the call holds.
    fn release(&self) {
        let mut charges = self.0.charges.lock();
        charges.held.clear();
        charges.decoded = None;
    }
}

/// The call's [`MessageCharges`] (empty when no admission layer is in front), set to be held
/// until answered: for a handler that answers a stream message for message.
pub fn held_until_answered<T>(request: &tonic::Request<T>) -> MessageCharges {
    let charges = request.extensions().get::<MessageCharges>().cloned().unwrap_or_default();
    charges.hold_until_answered();
    charges
}

/// The memory budget, as a call's request body charges it message by message.
struct StreamBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    charges: MessageCharges,
    /// Counts the messages that wait.
    waits: Arc<std::sync::atomic::AtomicU64>,
}

/// What charging a message came to.
enum Charged {
    Done,
    /// No room now, but the stream's own unanswered messages hold at least this many bytes:
    /// wait for their answers to give them back (see [`StreamBudget::retry`]).
    Wait(u32),
    /// No room: the status that ends the call.
    Refused(Status),
}

impl StreamBudget {
    /// Charges a new message of `declared` bytes (in place of the previous one unless the
    /// handler holds charges until answered).
    fn charge(&self, declared: usize) -> Charged {
        let mut charges = self.charges.0.charges.lock();
        if !charges.until_answered {
            charges.held.clear();
        }
        let charge = declared.saturating_mul(BYTES_CHARGED_PER_BYTE);
        if charge == 0 {
            charges.held.push_back(None);
            return Charged::Done;
        }
        let Some(n) = u32::try_from(charge).ok().filter(|&n| n as usize <= self.total) else {
            return Charged::Refused(budget_exhausted(self.total, declared));
        };
        // Read before trying: a charge dropped meanwhile gives its bytes back before it stops
        // counting, so a failed try after this read means there was no room.
        let held = self.charges.0.held_bytes(&charges);
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            charges.held.push_back(Some(permit));
            return Charged::Done;
        }
        // Waiting makes sense only where the stream's own answers will give back enough: a
        // stream holding less is refused, as a unary call is shed.
        if !charges.until_answered || held < n as usize {
            return Charged::Refused(budget_exhausted(self.total, declared));
        }
        self.waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Charged::Wait(n)
    }

    /// Tries again to charge a waiting message of `n` bytes: done; still waiting (woken when one
    /// of the stream's own charges is dropped); or refused once the stream holds less than `n`
    /// (others took the room its answers gave back). It never queues on the semaphore, so a
    /// waiting stream holds no one else back.
    fn retry(&self, n: u32, waker: &std::task::Waker) -> Poll<Result<(), Status>> {
        let mut charges = self.charges.0.charges.lock();
        charges.waiting = Some(waker.clone());
        // Read before trying, as in `charge`.
        let held = self.charges.0.held_bytes(&charges);
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            charges.waiting = None;
            charges.held.push_back(Some(permit));
            return Poll::Ready(Ok(()));
        }
        if held < n as usize {
            charges.waiting = None;
            return Poll::Ready(Err(budget_exhausted(self.total, n as usize / BYTES_CHARGED_PER_BYTE)));
        }
        Poll::Pending
    }
}

/// Extra memory a message may take once decoded that is not charged: a page, so that small
/// messages (a name, a few parameters) cost nothing more.
const DECODED_SLACK: usize = 4096;

/// Covers what a call's messages take once decoded (see [`vigil_proto::codec`]): the budget
/// charges a message [`BYTES_CHARGED_PER_BYTE`] times its size as it arrives, which covers a
/// message of raw tensor contents (the received bytes, the decoded tensor, its share of a
/// batch). One whose decoding may allocate more than twice its size (typed contents of small
/// integers, many empty strings or submessages) is charged the difference before it is
/// decoded, with its own charge, or refused: at once, as the decoder cannot wait, so a stream
/// message whose excess finds no room ends its stream even where the stream's own answers
/// would make room (as they do for the charge of its size).
struct DecodedCharges {
    bytes: Arc<Semaphore>,
    total: usize,
    charges: MessageCharges,
}

impl vigil_proto::codec::DecodeBudget for DecodedCharges {
    fn cover(&self, wire_bytes: usize, decoded_bytes: usize) -> Result<(), Status> {
        let needed = wire_bytes.saturating_add(decoded_bytes);
        let extra = needed.saturating_sub(wire_bytes.saturating_mul(BYTES_CHARGED_PER_BYTE));
        if extra <= DECODED_SLACK {
            return Ok(());
        }
        let Some(n) = u32::try_from(extra).ok().filter(|_| needed <= self.total) else {
            return Err(Status::resource_exhausted(format!(
                "this message of {wire_bytes} bytes takes up to {decoded_bytes} bytes once decoded (typed tensor \
                 contents or many small fields), more than the memory budget of {} bytes \
                 (limits.max_request_bytes_in_flight): send tensors as raw_input_contents",
                self.total
            )));
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                self.charges.add_decoded(permit);
                Ok(())
            }
            Err(_) => Err(Status::resource_exhausted(format!(
                "server busy: this message of {wire_bytes} bytes takes up to {decoded_bytes} bytes once decoded \
                 and the calls in flight leave no room for them in the memory budget of {} bytes \
                 (limits.max_request_bytes_in_flight); retry with backoff, or send tensors as raw_input_contents",
                self.total
            ))),
        }
    }
}

/// When the admission layer ends a request: put in the request's extensions for handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Layer applying [`AdmissionLimits`]; clones share one concurrency budget.
#[derive(Clone)]
pub struct AdmissionLayer {
    limits: AdmissionLimits,
    permits: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    waits: Arc<std::sync::atomic::AtomicU64>,
    streaming: Arc<HashSet<String>>,
    closing: CancellationToken,
    draining: CancellationToken,
    holdings: Holdings,
}

impl AdmissionLayer {
    /// A layer with its own concurrency budget.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            bytes: Arc::new(Semaphore::new(limits.max_request_bytes_in_flight.min(Semaphore::MAX_PERMITS))),
            waits: Arc::default(),
            streaming: Arc::default(),
            closing: CancellationToken::new(),
            draining: CancellationToken::new(),
            holdings: Holdings::default(),
        }
    }

    /// Ends the health watches and reflection streams once `draining` is cancelled (a server
    /// that starts to drain, having told its watchers NOT_SERVING), so that the drain does not
    /// wait on them: each gets UNAVAILABLE in its trailers.
    pub fn with_draining(mut self, draining: CancellationToken) -> Self {
        self.draining = draining;
        self
    }

    /// Ends every call still running once `closing` is cancelled (a server that stops waiting
    /// for them at the end of its drain): each gets UNAVAILABLE, a stream in its trailers.
    pub fn with_closing(mut self, closing: CancellationToken) -> Self {
        self.closing = closing;
        self
    }

    /// The token that ends the calls still running ([`AdmissionLayer::with_closing`]).
    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Treats these paths as streams (see [`streaming_methods`]).
    pub fn with_streaming_methods(mut self, paths: HashSet<String>) -> Self {
        self.streaming = Arc::new(paths);
        self
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_concurrent_requests - self.permits.available_permits()
    }

    /// Stream messages that have waited for room in the memory budget (while their stream's
    /// earlier messages were being answered).
    pub fn budget_waits(&self) -> u64 {
        self.waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls past their deadline whose client stopped reading the answer (its HTTP/2 window
    /// stayed shut), their permit and charges given back (see `holdings`).
    pub fn unread_answers(&self) -> u64 {
        self.holdings.released()
    }

    /// Bytes of the memory budget charged to the calls in flight now.
    pub fn bytes_in_flight(&self) -> usize {
        self.limits.max_request_bytes_in_flight.min(Semaphore::MAX_PERMITS) - self.bytes.available_permits()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            limits: self.limits,
            permits: self.permits.clone(),
            bytes: self.bytes.clone(),
            waits: self.waits.clone(),
            streaming: self.streaming.clone(),
            closing: self.closing.clone(),
            draining: self.draining.clone(),
            holdings: self.holdings.clone(),
        }
    }
}

/// The service made by [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    limits: AdmissionLimits,
    permits: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    waits: Arc<std::sync::atomic::AtomicU64>,
    streaming: Arc<HashSet<String>>,
    closing: CancellationToken,
    draining: CancellationToken,
    holdings: Holdings,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for Admission<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Default + Send + 'static,
{
    type Response = http::Response<AdmittedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        // Health checks, reflection and the lasting streams are never shed.
        let path = request.uri().path();
        let lasting = LASTING_STREAMS.contains(&path);
        // Nor charged to the memory budget, which they would hold for their whole life: their
        // one small request is bounded by LASTING_MESSAGE_BYTES instead.
        let exempt = lasting || path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let permit = if exempt {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let status = Status::resource_exhausted(format!(
                        "server busy: {} requests in flight (limit max_concurrent_requests); retry with backoff",
                        self.limits.max_concurrent_requests
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let stream = lasting || self.streaming.contains(path);
        // Loading a model takes as long as building and warming its sessions, unloading as
        // long as its requests in flight: they get the streams' limit, not a unary call's, so
        // a change that goes through is not reported as DEADLINE_EXCEEDED (and retried).
        let slow = REPOSITORY_CHANGES.contains(&path);
        let limit = match (lasting, stream || slow) {
            (true, _) => None,
            (false, true) => Some(self.limits.stream_timeout),
            (false, false) => Some(self.limits.request_timeout),
        };
        let timeout = match (grpc_timeout(request.headers()), limit) {
            (Some(asked), Some(limit)) => Some(asked.min(limit)),
            (asked, limit) => asked.or(limit),
        };
        // A stream is idle when neither side sent anything for the idle timeout: its request
        // messages count as activity as much as its answers. A health watch is quiet by nature.
        let idle = (stream && !lasting).then(|| (self.limits.stream_idle_timeout, Arc::new(Activity::new())));
        let activity = idle.as_ref().map(|(_, activity)| activity.clone());
        // A unary call carries one message: a second is refused before it is buffered. Health
        // and reflection (whose descriptors are not ours) are not counted.
        let max_messages = match (stream, exempt) {
            (true, _) => Some(self.limits.max_stream_messages),
            (false, false) => Some(1),
            (false, true) => None,
        };
        let max_message_bytes = if lasting {
            self.limits.max_message_bytes.min(LASTING_MESSAGE_BYTES)
        } else {
            self.limits.max_message_bytes
        };
        // This layer enforces the caller's deadline itself and answers DEADLINE_EXCEEDED;
        // left in place, tonic's own handling would answer CANCELLED first.
        request.headers_mut().remove("grpc-timeout");
        // Checked: a deadline past what the clock holds is none.
        let deadline = timeout.and_then(|timeout| Some((tokio::time::Instant::now().checked_add(timeout)?, timeout)));
        if let Some((deadline, _)) = deadline {
            request.extensions_mut().insert(Deadline(deadline.into_std()));
        }
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (bytes, budget, waits) = (self.bytes.clone(), self.limits.max_request_bytes_in_flight, self.waits.clone());
        // A stream runs on after its handler answered: its body watches for the end of the
        // calls (a lasting stream's, for the start of the drain too).
        let draining = lasting.then(|| self.draining.clone());
        let closing = self.closing.clone();
        let holdings = self.holdings.clone();
        Box::pin(async move {
            let admitted = async move {
                // Charge the budget from the declared length, before the message is buffered.
                // A stream is handed to its handler at once (it may be waiting for its first
                // message, or bound its own wait) and charged message by message as each starts.
                let (parts, body) = request.into_parts();
                let (mut body, declared) = match stream {
                    true => (Replay::new(body), None),
                    false => read_declared_length(body).await,
                };
                if let Some(declared) = declared.filter(|&n| n as usize > max_message_bytes) {
                    return Ok(Err(message_too_large(declared as usize, max_message_bytes, lasting)));
                }
                body.activity = activity;
                body.messages.limit = max_messages;
                body.messages.unary = !stream;
                body.messages.max_message_bytes = max_message_bytes;
                body.messages.lasting = lasting;
                let reserved = MessageCharges::default();
                let decoded = (!exempt).then(|| DecodedCharges {
                    bytes: bytes.clone(),
                    total: budget,
                    charges: reserved.clone(),
                });
                if !exempt {
                    let budget = StreamBudget { bytes, total: budget, charges: reserved.clone(), waits };
                    if stream {
                        body.messages.budget = Some(budget);
                    } else if let Charged::Refused(status) = budget.charge(declared.map_or(0, |n| n as usize)) {
                        return Ok(Err(status));
                    }
                }
                let mut request = http::Request::from_parts(parts, tonic::body::Body::new(body));
                if stream {
                    // For a handler that holds its messages' charges until answered.
                    request.extensions_mut().insert(reserved.clone());
                }
                let call = inner.call(request);
                let answered = match decoded {
                    Some(decoded) => vigil_proto::codec::with_decode_budget(Arc::new(decoded), call).await,
                    None => call.await,
                };
                answered.map(|response| Ok((response, reserved)))
            };
            let timed = async move {
                match deadline {
                    Some((at, timeout)) => tokio::time::timeout_at(at, admitted).await.map_err(|_| timeout),
                    None => Ok(admitted.await),
                }
            };
            let answered = tokio::select! {
                // The call first: the close is looked at (and waited on) only while it runs.
                biased;
                answered = timed => answered,
                () = closing.cancelled() => return Ok(shutting_down().into_http()),
            };
            match answered {
                Ok(Ok(Ok((response, reserved)))) => {
                    let watch = stream.then(|| StreamWatch {
                        idle,
                        closing: Box::pin(closing.cancelled_owned()),
                        draining: draining.map(|draining| Box::pin(draining.cancelled_owned())),
                    });
                    let held = holdings.hold(permit, reserved, deadline.map(|(at, _)| at));
                    Ok(response.map(|body| AdmittedBody::new(body, held, deadline, watch)))
                }
                Ok(Ok(Err(shed))) => Ok(shed.into_http()),
                Ok(Err(e)) => Err(e),
                Err(timeout) => Ok(deadline_exceeded(timeout).into_http()),
            }
        })
    }
}

/// `lasting`: the limit is a lasting stream's ([`LASTING_MESSAGE_BYTES`]), not the configured one.
fn message_too_large(declared: usize, max: usize, lasting: bool) -> Status {
    let key = if lasting { "the limit of a watch's request" } else { "limits.max_message_bytes" };
    Status::resource_exhausted(format!(
        "the message is {declared} bytes; the limit is {max} ({key}): send smaller requests"
    ))
}

fn budget_exhausted(budget: usize, declared: usize) -> Status {
    Status::resource_exhausted(format!(
        "server busy: the calls in flight use the memory budget of {budget} bytes \
         (limits.max_request_bytes_in_flight) and this message declares {declared}; retry with backoff"
    ))
}

/// Reads the body until the gRPC length prefix of its first message (5 bytes: a compression
/// flag and a big-endian length) is in hand; returns a body that yields everything again and
/// the declared length (None for an empty body).
async fn read_declared_length(mut body: tonic::body::Body) -> (Replay, Option<u32>) {
    use http_body_util::BodyExt;
    let mut frames = std::collections::VecDeque::new();
    let mut prefix = Vec::with_capacity(5);
    let mut error = None;
    while prefix.len() < 5 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    prefix.extend(data.iter().take(5 - prefix.len()));
                }
                let trailers = frame.is_trailers();
                frames.push_back(frame);
                if trailers {
                    break;
                }
            }
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
            None => break,
        }
    }
    let declared = (prefix.len() == 5).then(|| u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]));
    let replay =
        Replay { frames, error, rest: body, messages: MessageCounter::default(), waiting: None, activity: None };
    (replay, declared)
}

impl Replay {
    /// `body` with nothing read ahead.
    fn new(body: tonic::body::Body) -> Self {
        Self {
            frames: Default::default(),
            error: None,
            rest: body,
            messages: MessageCounter::default(),
            waiting: None,
            activity: None,
        }
    }
}

/// When a stream's client last sent something, for its idle timeout.
struct Activity {
    started: tokio::time::Instant,
    /// Milliseconds from `started` to the last data frame received.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { started: tokio::time::Instant::now(), last_ms: Default::default() }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.started + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a stream's response body watches besides its deadline.
struct StreamWatch {
    /// The idle timeout, and when either side last sent something.
    idle: Option<(Duration, Arc<Activity>)>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// For the streams that end when the drain starts (health watches).
    draining: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// A request body with its first frames read ahead (see [`read_declared_length`]); for
/// streams it also counts the messages and fails the body past the limit.
struct Replay {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    error: Option<Status>,
    rest: tonic::body::Body,
    messages: MessageCounter,
    /// A message waiting for room in the memory budget (the bytes it waits for), and the bytes
    /// of its frame after its length prefix, held back until it is charged.
    waiting: Option<(u32, Bytes)>,
    /// A stream's: touched by every data frame the client sends.
    activity: Option<Arc<Activity>>,
}

/// Counts gRPC messages across data frames from their 5-byte length prefixes.
#[derive(Default)]
struct MessageCounter {
    limit: Option<u64>,
    /// The call is unary: the limit is its one message.
    unary: bool,
    /// Largest message length accepted (0: not checked).
    max_message_bytes: usize,
    /// The limit is a lasting stream's (for the refusal's words).
    lasting: bool,
    seen: u64,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// A length prefix split across frames.
    prefix: Vec<u8>,
    exceeded: bool,
    /// Charges each message of a stream as it starts.
    budget: Option<StreamBudget>,
}

/// Why [`MessageCounter::past_limit`] stopped.
enum Stop {
    /// The stream ends with this status.
    End(Status),
    /// The message waits for this many bytes of the budget.
    Wait(u32),
}

impl MessageCounter {
    /// Counts (and charges) the messages that start in `data`. Stops at a message past the
    /// message limit or the memory budget, with the offset in `data` where it starts (0 when
    /// its length prefix began in an earlier frame) and the status that ends the stream; or at
    /// one that must wait for room in the budget, with the offset just after its length prefix
    /// and the bytes to wait for.
    fn past_limit(&mut self, data: &[u8]) -> Option<(usize, Stop)> {
        if self.limit.is_none() && self.budget.is_none() {
            return None;
        }
        let mut at = 0;
        while at < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - at);
                self.remaining -= n;
                at += n;
                continue;
            }
            let starts = at.saturating_sub(self.prefix.len());
            let n = (5 - self.prefix.len()).min(data.len() - at);
            self.prefix.extend_from_slice(&data[at..at + n]);
            at += n;
            if self.prefix.len() == 5 {
                self.seen += 1;
                self.remaining =
                    u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                self.prefix.clear();
                if let Some(limit) = self.limit.filter(|&limit| self.seen > limit) {
                    let status = if self.unary {
                        Status::invalid_argument("a unary call carries one request message; this one sent more")
                    } else {
                        Status::resource_exhausted(format!(
                            "the stream sent more than {limit} messages (limits.max_stream_messages); open a new one"
                        ))
                    };
                    return Some((starts, Stop::End(status)));
                }
                if self.max_message_bytes > 0 && self.remaining > self.max_message_bytes {
                    let status = message_too_large(self.remaining, self.max_message_bytes, self.lasting);
                    return Some((starts, Stop::End(status)));
                }
                match self.budget.as_ref().map(|b| b.charge(self.remaining)) {
                    Some(Charged::Refused(status)) => return Some((starts, Stop::End(status))),
                    Some(Charged::Wait(bytes)) => return Some((at, Stop::Wait(bytes))),
                    Some(Charged::Done) | None => {}
                }
            }
        }
        None
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.messages.exceeded {
                return Poll::Ready(self.error.take().map(Err));
            }
            // A message that waited for room goes on, charged, with the rest of its frame.
            let data = if let Some((bytes, _)) = self.waiting {
                let budget = self.messages.budget.as_ref().expect("only a budget waits");
                if let Err(status) = std::task::ready!(budget.retry(bytes, cx.waker())) {
                    self.waiting = None;
                    self.messages.exceeded = true;
                    return Poll::Ready(Some(Err(status)));
                }
                let (_, rest) = self.waiting.take().expect("waiting");
                if rest.is_empty() {
                    continue;
                }
                rest
            } else {
                let polled = if let Some(frame) = self.frames.pop_front() {
                    Poll::Ready(Some(Ok(frame)))
                } else if let Some(e) = self.error.take() {
                    return Poll::Ready(Some(Err(e)));
                } else {
                    Pin::new(&mut self.rest).poll_frame(cx)
                };
                let Poll::Ready(Some(Ok(frame))) = polled else { return polled };
                if let Some(activity) = &self.activity {
                    activity.touch();
                }
                match frame.data_ref().cloned() {
                    Some(data) => data,
                    None => return Poll::Ready(Some(Ok(frame))),
                }
            };
            match self.messages.past_limit(&data) {
                None => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some((offset, Stop::End(error))) => {
                    // The messages before the one past the limit still go through; then the error.
                    self.messages.exceeded = true;
                    if offset == 0 {
                        return Poll::Ready(Some(Err(error)));
                    }
                    self.error = Some(error);
                    return Poll::Ready(Some(Ok(Frame::data(data.slice(..offset)))));
                }
                Some((offset, Stop::Wait(bytes))) => {
                    // What came before goes on (the decoder holds the prefix until the rest
                    // comes); the rest waits with the message.
                    self.waiting = Some((bytes, data.slice(offset..)));
                    if offset > 0 {
                        return Poll::Ready(Some(Ok(Frame::data(data.slice(..offset)))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.messages.exceeded
            || (self.waiting.is_none() && self.frames.is_empty() && self.error.is_none() && self.rest.is_end_stream())
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down and stopped waiting for this call: retry it on another instance")
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("request exceeded its deadline of {} ms", timeout.as_millis()))
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's admission until it ends: the permit is held,
    /// and the call is ended with DEADLINE_EXCEEDED in its trailers when the deadline passes
    /// or (streams) when no message came for the idle timeout, with UNAVAILABLE when the
    /// server closes the calls it stopped waiting for.
    pub struct AdmittedBody<B> {
        #[pin]
        inner: B,
        held: Option<Arc<Holding>>,
        deadline: Option<(Pin<Box<Sleep>>, Duration)>,
        idle: Option<(Pin<Box<Sleep>>, Duration, Arc<Activity>)>,
        closing: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        draining: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        ended: bool,
    }
}

impl<B> AdmittedBody<B> {
    fn new(
        inner: B,
        held: Arc<Holding>,
        deadline: Option<(tokio::time::Instant, Duration)>,
        stream: Option<StreamWatch>,
    ) -> Self {
        let (idle, closing, draining) = match stream {
            Some(StreamWatch { idle, closing, draining }) => (
                idle.map(|(idle, activity)| (Box::pin(tokio::time::sleep(idle)), idle, activity)),
                Some(closing),
                draining,
            ),
            None => (None, None, None),
        };
        Self {
            inner,
            held: Some(held),
            deadline: deadline.map(|(at, timeout)| (Box::pin(tokio::time::sleep_until(at)), timeout)),
            idle,
            closing,
            draining,
            ended: false,
        }
    }
}

impl<B: Default> Default for AdmittedBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            held: None,
            deadline: None,
            idle: None,
            closing: None,
            draining: None,
            ended: false,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for AdmittedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                this.held.take().map(|held| held.release());
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => {
                if let Some((sleep, idle, _)) = this.idle.as_mut() {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                return Poll::Ready(Some(frame));
            }
            Poll::Pending => {}
        }
        let past_deadline = this
            .deadline
            .as_mut()
            .and_then(|(sleep, timeout)| sleep.as_mut().poll(cx).is_ready().then(|| deadline_exceeded(*timeout)));
        let ending = |end: &mut Option<Pin<Box<WaitForCancellationFutureOwned>>>, cx: &mut Context<'_>| {
            end.as_mut().is_some_and(|end| end.as_mut().poll(cx).is_ready())
        };
        let closed = (ending(this.closing, cx) | ending(this.draining, cx)).then(shutting_down);
        let expired = closed.or(past_deadline).or_else(|| {
            let (sleep, idle, activity) = this.idle.as_mut()?;
            while sleep.as_mut().poll(cx).is_ready() {
                // Answers reset the timer as they go out; the client's messages are seen here, and
                // a message still being answered (its charge held) keeps the stream busy.
                let now = tokio::time::Instant::now();
                let answering = this.held.as_ref().is_some_and(|held| held.charges.answering());
                let until = if answering { now + *idle } else { activity.last() + *idle };
                if until <= now {
                    return Some(Status::deadline_exceeded(format!(
                        "stream sent nothing for {} ms (limits.stream_idle_timeout_ms)",
                        idle.as_millis()
                    )));
                }
                sleep.as_mut().reset(until);
            }
            None
        });
        let Some(status) = expired else { return Poll::Pending };
        // The call ends here: its handler (and what it waits on) is dropped with `inner`.
        *this.ended = true;
        this.held.take().map(|held| held.release());
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

/// Parses the `grpc-timeout` header (e.g. `100m`, `5S`): at most 8 digits and a unit, as the
/// gRPC spec has it; anything else is no timeout.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if !(2..=9).contains(&value.len()) || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_frames() {
        let message = |len: u32| -> Vec<u8> {
            let mut m = vec![0];
            m.extend(len.to_be_bytes());
            m.extend(vec![7; len as usize]);
            m
        };
        let stream: Vec<u8> = [message(3), message(0), message(10), message(1)].concat();
        // Any split into frames counts the same: four messages, the fourth past a limit of 3.
        // The fourth message starts at byte 8 + 5 + 15 = 28.
        for chunk in [1, 2, 5, 7, stream.len()] {
            let mut counter = MessageCounter { limit: Some(3), ..Default::default() };
            let mut passed = 0;
            let mut cut = None;
            for c in stream.chunks(chunk) {
                if let Some((offset, _)) = counter.past_limit(c) {
                    cut = Some(passed + offset);
                    break;
                }
                passed += c.len();
            }
            assert_eq!(counter.seen, 4, "chunk {chunk}");
            // At the fourth message's prefix when it starts in the frame; at the start of the
            // frame that completes it when it began in an earlier one.
            let cut = cut.expect("the limit is crossed");
            assert!(cut == 28 || (cut > 28 && cut < 28 + 5 && cut % chunk == 0), "chunk {chunk}: cut at {cut}");
            let mut counter = MessageCounter { limit: Some(4), ..Default::default() };
            assert!(stream.chunks(chunk).all(|c| counter.past_limit(c).is_none()), "chunk {chunk}");
            assert_eq!((counter.seen, counter.remaining), (4, 0));
        }
    }

    #[test]
    fn what_a_message_takes_once_decoded_is_charged_with_it() {
        use vigil_proto::codec::DecodeBudget;
        let total = 100_000;
        let bytes = Arc::new(Semaphore::new(total));
        let charges = MessageCharges::default();
        let budget = StreamBudget { bytes: bytes.clone(), total, charges: charges.clone(), waits: Arc::default() };
        let decoded = DecodedCharges { bytes: bytes.clone(), total, charges: charges.clone() };
        // A message of 1,000 bytes, charged 3,000 as it arrives.
        assert!(matches!(budget.charge(1_000), Charged::Done));
        assert_eq!(bytes.available_permits(), 97_000);
        // Raw contents (decoded within twice their size) and small excesses add nothing.
        decoded.cover(1_000, 2_000).unwrap();
        decoded.cover(1_000, 2_000 + DECODED_SLACK).unwrap();
        assert_eq!(bytes.available_permits(), 97_000);
        // Typed contents decoding to 40,000 bytes: 41,000 needed, 38,000 more charged, and
        // held with the message's own charge until the handler's charge is dropped.
        decoded.cover(1_000, 40_000).unwrap();
        assert_eq!(bytes.available_permits(), 59_000);
        charges.hold_until_answered();
        let charge = charges.take();
        assert_eq!(charge.bytes(), 41_000);
        drop(charge);
        assert_eq!(bytes.available_permits(), total);
        // With no charge left to add it to, the excess is held until the call ends.
        decoded.cover(1_000, 40_000).unwrap();
        assert_eq!(bytes.available_permits(), 62_000);
        // No room for another: refused, naming the budget; more than the whole budget: refused
        // whatever is free, saying to send raw contents.
        let busy = decoded.cover(1_000, 70_000).unwrap_err();
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
        assert!(busy.message().starts_with("server busy"), "{}", busy.message());
        assert_eq!(bytes.available_permits(), 62_000, "nothing held after the refusal");
        charges.release();
        assert_eq!(bytes.available_permits(), total);
        let never = decoded.cover(1_000, total).unwrap_err();
        assert_eq!(never.code(), tonic::Code::ResourceExhausted);
        assert!(never.message().contains("more than the memory budget of 100000 bytes"), "{}", never.message());
        assert!(never.message().contains("raw_input_contents"), "{}", never.message());
    }

    #[test]
    fn each_message_of_a_stream_is_charged_in_place_of_the_previous_one() {
        let message = |len: u32| {
            let mut m = vec![0];
            m.extend(len.to_be_bytes());
            m.extend(vec![7; len as usize]);
            m
        };
        let stream: Vec<u8> = [message(3), message(0), message(10), message(1)].concat();
        let counter_with = |budget: usize| {
            let bytes = Arc::new(Semaphore::new(budget));
            let held = MessageCharges::default();
            let budget =
                StreamBudget { bytes: bytes.clone(), total: budget, charges: held.clone(), waits: Arc::default() };
            (MessageCounter { budget: Some(budget), ..Default::default() }, bytes, held)
        };
        // 10 bytes are charged 30: a budget of 30 covers the third message, and the fourth
        // (1 byte, charged 3) replaces its charge.
        let (mut counter, bytes, held) = counter_with(30);
        for c in stream.chunks(4) {
            assert!(counter.past_limit(c).is_none());
            if counter.seen == 3 && counter.remaining > 0 {
                assert_eq!(bytes.available_permits(), 0, "the third message holds the whole budget");
            }
        }
        assert_eq!(bytes.available_permits(), 27, "the last message's charge is held");
        held.release();
        assert_eq!(bytes.available_permits(), 30, "released when the call ends");
        // With 29, the third message (starting at byte 13) ends the stream, naming the budget.
        let (mut counter, bytes, _held) = counter_with(29);
        let Some((offset, Stop::End(status))) = counter.past_limit(&stream) else { panic!("over the budget") };
        assert_eq!(offset, 13);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("memory budget of 29 bytes"), "{}", status.message());
        assert!(status.message().contains("limits.max_request_bytes_in_flight"), "{}", status.message());
        assert_eq!(bytes.available_permits(), 29, "nothing held after the refusal");
    }

    #[test]
    fn a_handler_holding_charges_until_answered_keeps_every_message_in_its_pipeline_charged() {
        let message = |len: u32| {
            let mut m = vec![0];
            m.extend(len.to_be_bytes());
            m.extend(vec![7; len as usize]);
            m
        };
        let bytes = Arc::new(Semaphore::new(40));
        let charges = MessageCharges::default();
        charges.hold_until_answered();
        let budget = StreamBudget { bytes: bytes.clone(), total: 40, charges: charges.clone(), waits: Arc::default() };
        let mut counter = MessageCounter { budget: Some(budget), ..Default::default() };
        // Three messages received before any is answered: 1 + 0 + 10 bytes, charged 33.
        for m in [message(1), message(0), message(10)] {
            assert!(counter.past_limit(&m).is_none());
        }
        assert_eq!(bytes.available_permits(), 7, "all three charged at once");
        // Taken in order, one per message, each released with its answer.
        let first = charges.take();
        assert_eq!(first.bytes(), 3);
        let (second, third) = (charges.take(), charges.take());
        assert_eq!((second.bytes(), third.bytes()), (0, 30));
        assert_eq!(charges.take().bytes(), 0, "none left to take");
        drop(first);
        assert_eq!(bytes.available_permits(), 10);
        // A fourth message the budget cannot cover while the third is unanswered waits for
        // room, from just after its length prefix.
        assert!(matches!(counter.past_limit(&message(4)), Some((5, Stop::Wait(12)))));
        // A stream that holds nothing is refused instead: no answer of its own would make room.
        let idle = MessageCharges::default();
        idle.hold_until_answered();
        let mut other = MessageCounter {
            budget: Some(StreamBudget { bytes: bytes.clone(), total: 40, charges: idle, waits: Arc::default() }),
            ..Default::default()
        };
        let Some((0, Stop::End(status))) = other.past_limit(&message(4)) else { panic!("refused") };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        drop(third);
        assert_eq!(bytes.available_permits(), 40);
        drop(second);
        // Charges never taken are released when the call ends.
        let mut counter = MessageCounter {
            budget: Some(StreamBudget {
                bytes: bytes.clone(),
                total: 40,
                charges: charges.clone(),
                waits: Arc::default(),
            }),
            ..Default::default()
        };
        assert!(counter.past_limit(&message(5)).is_none());
        assert_eq!(bytes.available_permits(), 25);
        charges.release();
        assert_eq!(bytes.available_permits(), 40);
        drop(counter);
    }

    #[tokio::test]
    async fn a_stream_waits_for_its_own_answers_to_make_room_and_then_goes_on() {
        use http_body_util::BodyExt;
        let message = |len: u32| {
            let mut m = vec![0];
            m.extend(len.to_be_bytes());
            m.extend(vec![7; len as usize]);
            m
        };
        let frames: Vec<Result<Frame<Bytes>, Status>> = [message(10), message(2), [message(1), message(3)].concat()]
            .into_iter()
            .map(|m| Ok(Frame::data(Bytes::from(m))))
            .collect();
        let sent: usize = frames.iter().map(|f| f.as_ref().unwrap().data_ref().unwrap().len()).sum();
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
        let bytes = Arc::new(Semaphore::new(40));
        let charges = MessageCharges::default();
        charges.hold_until_answered();
        let mut replay = Replay::new(body);
        replay.messages.budget =
            Some(StreamBudget { bytes: bytes.clone(), total: 40, charges: charges.clone(), waits: Arc::default() });
        let mut received = 0;
        let mut next_len = |frame: Option<Result<Frame<Bytes>, Status>>| {
            let n = frame.expect("a frame").expect("no error").into_data().expect("data").len();
            received += n;
            n
        };
        // 10 bytes, charged 30; the handler takes the charge and runs the message.
        assert_eq!(next_len(replay.frame().await), 15);
        let first = charges.take();
        // 2 bytes (charged 6), then 1 (3): 39 of 40 charged.
        assert_eq!(next_len(replay.frame().await), 7);
        // The third frame's second message needs 9: it waits, its prefix gone ahead.
        assert_eq!(next_len(replay.frame().await), 6 + 5);
        assert_eq!(bytes.available_permits(), 1);
        {
            let mut next = std::pin::pin!(replay.frame());
            assert!(futures::poll!(next.as_mut()).is_pending(), "waits while the first is unanswered");
            drop(first);
            assert_eq!(next_len(next.await), 3, "the rest of the message, once charged");
        }
        assert_eq!(bytes.available_permits(), 40 - 6 - 3 - 9);
        assert!(replay.frame().await.is_none());
        assert_eq!(received, sent, "every byte once, in order");
    }

    #[test]
    fn streaming_methods_come_from_the_descriptors() {
        let streams = streaming_methods(vigil_proto::FILE_DESCRIPTOR_SET);
        assert!(streams.contains("/vigil.v1.Inspection/InspectStream"), "{streams:?}");
        assert!(streams.contains("/inference.GRPCInferenceService/ModelStreamInfer"), "{streams:?}");
        assert!(!streams.contains("/vigil.v1.Inspection/Inspect"));
        assert!(!streams.contains("/inference.GRPCInferenceService/ModelInfer"));
        assert!(streaming_methods(b"not a descriptor set").is_empty());
    }

    #[test]
    fn parses_grpc_timeouts() {
        let mut h = http::HeaderMap::new();
        for (v, d) in [
            ("100m", Duration::from_millis(100)),
            ("5S", Duration::from_secs(5)),
            ("2M", Duration::from_secs(120)),
            ("7u", Duration::from_micros(7)),
        ] {
            h.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&h), Some(d));
        }
        h.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(99_999_999 * 3600)));
        for malformed in ["x", "123456789S", "9999999999999999999S", "+5S", "S"] {
            h.insert("grpc-timeout", malformed.parse().unwrap());
            assert_eq!(grpc_timeout(&h), None, "{malformed}");
        }
        h.insert("grpc-timeout", "10q".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None);
    }
}
