//! A tower layer that counts and times every gRPC call: `vigil_requests_total` and
//! `vigil_request_duration_seconds` by model, version, variant, API and status, with no list of
//! paths: the API is the method's name in snake case (`/vigil.v1.Inspection/Inspect` ->
//! `inspect`), and the model version and variant are what the handler put in the call's
//! [`ServedBy`] slot once it routed the request (a slot in the request's extensions rather than
//! the response's, so that calls failing after routing still carry their model). The status
//! is read from the response: its headers for an immediate error, else its trailers. Calls
//! shed or ended by the admission layer (which runs inside this one) are counted with their
//! status too; a call the client abandons counts as `Cancelled`.
//!
//! Health checks and reflection are not counted. The items of a stream are counted by the
//! stream's handler (see [`ServingMetrics::start`]); the stream itself is counted here once,
//! under its own method name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};
use vigil_inference::config::ModelConfig;
use vigil_proto::vigil::v1::Variant;

use crate::metrics::{ServedLabels, ServingMetrics};

/// Where a handler says which model version, as which variant, answers its call.
#[derive(Clone, Default, Debug)]
pub struct ServedBy(Arc<OnceLock<ServedLabels>>);

impl ServedBy {
    /// The slot of a call, when the metrics layer counts it.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<ServedBy> {
        request.extensions().get::<ServedBy>().cloned()
    }

    /// Records that `config` answers as `variant` (the first call wins).
    pub fn set(&self, config: &ModelConfig, variant: Variant) {
        let _ = self.0.set(ServedLabels::of(config, variant));
    }

    fn labels(&self) -> ServedLabels {
        self.0.get().cloned().unwrap_or_default()
    }
}

/// The `api` label of a gRPC path: its method name in snake case.
pub fn api_label(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or_default();
    let mut label = String::with_capacity(method.len() + 4);
    for (i, c) in method.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                label.push('_');
            }
            label.push(c.to_ascii_lowercase());
        } else {
            label.push(c);
        }
    }
    label
}

/// Counts and times every call (see the module documentation).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: ServingMetrics,
    /// The `api` label of each served method, made once; empty: derived per call.
    labels: Arc<HashMap<String, Arc<str>>>,
}

impl RequestMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: ServingMetrics) -> Self {
        Self { metrics, labels: Arc::default() }
    }

    /// Labels only these method paths (see [`grpc_methods`](crate::admission::grpc_methods));
    /// calls to any other path count as `api="unknown"`, so that stray paths cannot grow the
    /// metric's label set without bound.
    pub fn with_methods(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        self.labels = Arc::new(
            paths
                .into_iter()
                .map(|path| {
                    let label = api_label(&path).into();
                    (path, label)
                })
                .collect(),
        );
        self
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner, metrics: self.metrics.clone(), labels: self.labels.clone() }
    }
}

/// The service made by [`RequestMetricsLayer`].
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: ServingMetrics,
    labels: Arc<HashMap<String, Arc<str>>>,
}

/// One call being counted: recorded once, with `Cancelled` when dropped unfinished.
struct Meter {
    metrics: ServingMetrics,
    api: Arc<str>,
    served: ServedBy,
    started: Instant,
    done: bool,
}

impl Meter {
    fn record(&mut self, code: Code) {
        if !std::mem::replace(&mut self.done, true) {
            self.metrics.count_call(&self.api, self.served.labels(), code, self.started.elapsed());
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// The gRPC status in a header map (response headers or trailers), when there is one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(value.to_str().ok().and_then(|v| v.parse::<i32>().ok()).map_or(Code::Unknown, Code::from))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            return Box::pin(async move {
                Ok(inner.call(request).await?.map(|body| MeteredBody { inner: body, meter: None }))
            });
        }
        let api: Arc<str> = match self.labels.get(path) {
            Some(label) => label.clone(),
            None if self.labels.is_empty() => api_label(path).into(),
            None => Arc::from("unknown"),
        };
        let served = ServedBy::default();
        request.extensions_mut().insert(served.clone());
        let mut meter = Meter { metrics: self.metrics.clone(), api, served, started: Instant::now(), done: false };
        Box::pin(async move {
            let response = inner.call(request).await?;
            if let Some(code) = status_in(response.headers()) {
                meter.record(code);
            }
            Ok(response.map(|body| MeteredBody { inner: body, meter: (!meter.done).then_some(meter) }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status when the trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        meter: Option<Meter>,
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(meter) = this.meter.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(status_in) {
                        meter.record(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => meter.record(Code::Internal),
                // Ended without a status: the client sees it as unknown.
                Poll::Ready(None) => meter.record(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default> Default for MeteredBody<B> {
    fn default() -> Self {
        Self { inner: B::default(), meter: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_labels_are_method_names_in_snake_case() {
        assert_eq!(api_label("/vigil.v1.Inspection/Inspect"), "inspect");
        assert_eq!(api_label("/inference.GRPCInferenceService/ModelInfer"), "model_infer");
        assert_eq!(api_label("/inference.GRPCInferenceService/ModelStreamInfer"), "model_stream_infer");
        assert_eq!(api_label("/vigil.v1.Inspection/InspectStream"), "inspect_stream");
        assert_eq!(api_label("/inference.GRPCInferenceService/RepositoryModelLoad"), "repository_model_load");
    }
}
