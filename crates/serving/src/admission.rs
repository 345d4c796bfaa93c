//! A tower layer in front of every gRPC service: sheds load beyond a concurrency limit with
//! RESOURCE_EXHAUSTED (instead of queueing without bound) and ends requests that outlive
//! their deadline (the server's, or the caller's `grpc-timeout` when shorter) with
//! DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

use crate::metrics::{Api, ServingMetrics};

/// Admission limits.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Requests handled at once (stream openings count while the stream's head is produced).
    pub max_concurrent_requests: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

/// When the admission layer ends a request: put in the request's extensions for handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Layer applying [`AdmissionLimits`]; clones share one concurrency budget.
#[derive(Clone)]
pub struct AdmissionLayer {
    limits: AdmissionLimits,
    permits: Arc<Semaphore>,
    metrics: Option<ServingMetrics>,
}

impl AdmissionLayer {
    /// A layer with its own concurrency budget.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self { limits, permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)), metrics: None }
    }

    /// Counts the requests it sheds in `metrics`.
    pub fn with_metrics(mut self, metrics: ServingMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_concurrent_requests - self.permits.available_permits()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, limits: self.limits, permits: self.permits.clone(), metrics: self.metrics.clone() }
    }
}

/// The service made by [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    limits: AdmissionLimits,
    permits: Arc<Semaphore>,
    metrics: Option<ServingMetrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Admission<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // Health checks and reflection are never shed.
        let path = request.uri().path();
        let exempt = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let permit = if exempt {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if let (Some(metrics), Some(api)) = (&self.metrics, Api::from_path(path)) {
                        metrics.shed(api);
                    }
                    let status = Status::resource_exhausted(format!(
                        "server busy: {} requests in flight (limit max_concurrent_requests); retry with backoff",
                        self.limits.max_concurrent_requests
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let timeout =
            grpc_timeout(request.headers()).map_or(self.limits.request_timeout, |t| t.min(self.limits.request_timeout));
        // This layer enforces the caller's deadline itself and answers DEADLINE_EXCEEDED;
        // left in place, tonic's own handling would answer CANCELLED first.
        request.headers_mut().remove("grpc-timeout");
        request.extensions_mut().insert(Deadline(Instant::now() + timeout));
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "request exceeded its deadline of {} ms",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// Parses the `grpc-timeout` header (e.g. `100m`, `5S`).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
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
        h.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None);
        h.insert("grpc-timeout", "10q".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None);
    }
}
