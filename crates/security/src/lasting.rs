//! Lasting calls (streams a client may keep open for hours: a line's `InspectStream`, a
//! server's `WatchDeployments`) are authorised again while they last: a token taken out of the
//! tokens file, or a JWT past its expiry, ends the stream with UNAUTHENTICATED (or
//! PERMISSION_DENIED, its scope taken away) within a re-check interval, instead of serving it
//! until the client reconnects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::auth::{Access, AuthMetrics, Authenticator};

/// The gRPC methods whose calls can last: every client-, server- or bidirectional stream that
/// needs a token (health `Watch` is open to all; reflection's streams are discovery only).
pub fn is_lasting(path: &str) -> bool {
    matches!(
        path,
        "/inference.GRPCInferenceService/ModelStreamInfer"
            | "/vigil.v1.Inspection/InspectStream"
            | "/vigil.v1.VoiceSearch/Search"
            | "/vigil.v1.Control/WatchDeployments"
            | "/vigil.v1.Control/FetchArtifact"
    )
}

/// What a lasting call is checked again with.
pub(crate) struct Recheck {
    pub auth: Arc<Authenticator>,
    pub metrics: AuthMetrics,
    /// The call's `authorization` header only.
    pub headers: HeaderMap,
    pub access: Access,
    pub every: Duration,
}

pin_project_lite::pin_project! {
    /// A response body passed through as it is, or, for a lasting call, ended with the refusal's
    /// status in its trailers once its token is refused.
    pub struct AuthBody<B> {
        #[pin]
        inner: B,
        recheck: Option<Box<Rechecking>>,
    }
}

pub(crate) struct Rechecking {
    check: Recheck,
    /// Created at the first poll (inside the runtime).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl<B> AuthBody<B> {
    /// `inner` unchanged.
    pub fn plain(inner: B) -> Self {
        Self { inner, recheck: None }
    }

    pub(crate) fn rechecked(inner: B, check: Recheck) -> Self {
        Self { inner, recheck: Some(Box::new(Rechecking { check, timer: None, ended: false })) }
    }
}

impl<B: Default> Default for AuthBody<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl Rechecking {
    /// The status to end the call with, once the timer is due and the token no longer passes.
    fn refused(&mut self, cx: &mut Context<'_>) -> Option<tonic::Status> {
        let every = self.check.every;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        while timer.as_mut().poll(cx).is_ready() {
            if let Err(refusal) = self.check.auth.authorize(&self.check.headers, self.check.access) {
                // Counted apart from calls refused at their start.
                self.check
                    .metrics
                    .count(&crate::auth::Refusal { reason: "revoked", ..refusal.clone() }, self.check.access);
                tracing::info!(reason = refusal.reason, "a lasting call's token no longer passes; ending it");
                let message = format!("{} (checked again while the call lasted)", refusal.message);
                return Some(match refusal.denied {
                    true => tonic::Status::permission_denied(message),
                    false => tonic::Status::unauthenticated(message),
                });
            }
            timer.as_mut().reset(tokio::time::Instant::now() + every);
        }
        None
    }
}

impl<B: Body> Body for AuthBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(r) = this.recheck.as_deref_mut() {
            if r.ended {
                return Poll::Ready(None);
            }
            if let Some(status) = r.refused(cx) {
                r.ended = true;
                let mut trailers = HeaderMap::new();
                if status.add_header(&mut trailers).is_ok() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(None);
            }
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.recheck {
            Some(r) if r.ended => true,
            _ => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.recheck {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}
