//! The edge server's Prometheus endpoint over real HTTP on loopback: request counts by status,
//! latency and batch size histograms, records by outcome, process metrics.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use vigil_logbus::Emitter;
use vigil_proto::vigil::v1::InspectRequest;
use vigil_serving::RecordEmitter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_batches_records_and_the_process_are_scraped() {
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = Emitter::start(sink, 1_000, 100);
    let server = vigil_edge::start_with(config(), false, Some(RecordEmitter::new(emitter.clone(), "test")))
        .await
        .expect("edge server starts");
    let metrics = server.metrics_addr.expect("metrics are served by default");
    let (mut inspect, mut oip) = clients(&server).await;
    const VALID: usize = 3;
    for (_, image) in samples("normal").into_iter().take(VALID) {
        inspect.inspect(InspectRequest { image, ..Default::default() }).await.unwrap();
    }
    let invalid = inspect.inspect(InspectRequest { image: b"not an image".to_vec(), ..Default::default() }).await;
    assert_eq!(invalid.unwrap_err().code(), Code::InvalidArgument);
    let unknown = InspectRequest { image: vec![1], model_name: "no-such-model".into(), ..Default::default() };
    assert_eq!(inspect.inspect(unknown).await.unwrap_err().code(), Code::NotFound);
    // A batch of two through ModelInfer.
    oip.model_infer(black_images_request("", 2)).await.unwrap();
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let mut records = 0;
    while bus.try_recv().is_ok() {
        records += 1;
    }
    assert_eq!(
        records,
        VALID + 1 + 2,
        "answered and refused inspections and each ModelInfer item are logged; unknown models are not"
    );

    let (content_type, text) = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let version = server.repository.entry(MODEL).unwrap().default_version.to_string();
    let model = [("model", MODEL), ("version", version.as_str())];
    let requests = |api: &str, status: &str, model: &[(&str, &str)]| {
        let labels: Vec<(&str, &str)> = model.iter().copied().chain([("api", api), ("status", status)]).collect();
        sample(&text, "vigil_requests_total", &labels)
    };
    assert_eq!(requests("inspect", "Ok", &model), Some(VALID as f64), "{text}");
    assert_eq!(requests("inspect", "InvalidArgument", &model), Some(1.0), "{text}");
    assert_eq!(requests("inspect", "NotFound", &[("model", ""), ("version", "")]), Some(1.0), "{text}");
    assert_eq!(requests("model_infer", "Ok", &model), Some(1.0), "{text}");
    assert_eq!(sample(&text, "vigil_requests_total", &[]), Some(VALID as f64 + 3.0), "{text}");

    // Every request of the model is timed; those that reached the batcher have queue and compute times.
    let count = |name: &str| sample(&text, name, &model);
    assert_eq!(count("vigil_request_duration_seconds_count"), Some(VALID as f64 + 2.0), "{text}");
    assert_eq!(
        sample(&text, "vigil_request_duration_seconds_bucket", &[model[0], model[1], ("le", "+Inf")]),
        Some(VALID as f64 + 2.0)
    );
    assert!(count("vigil_request_duration_seconds_sum").unwrap() > 0.0);
    assert_eq!(count("vigil_queue_duration_seconds_count"), Some(VALID as f64 + 1.0), "{text}");
    assert_eq!(count("vigil_compute_duration_seconds_count"), Some(VALID as f64 + 1.0), "{text}");
    // Batches: every item inferred once (three singles and one pair).
    assert_eq!(count("vigil_batch_size_sum"), Some(VALID as f64 + 2.0), "{text}");
    let batches = count("vigil_batch_size_count").unwrap();
    assert!((1.0..=VALID as f64 + 1.0).contains(&batches), "{text}");
    assert_eq!(sample(&text, "vigil_batch_size_bucket", &[model[0], model[1], ("le", "+Inf")]), Some(batches));
    assert!(text.contains("# TYPE vigil_batch_size histogram"), "{text}");

    assert_eq!(sample(&text, "vigil_inflight_requests", &[]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "vigil_records_total", &[("outcome", "produced")]), Some(records as f64), "{text}");
    for outcome in ["spooled", "replayed", "dropped", "failed", "spool_refused"] {
        assert_eq!(sample(&text, "vigil_records_total", &[("outcome", outcome)]), Some(0.0), "{outcome}");
    }
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0, "{text}");
    assert!(sample(&text, "process_cpu_seconds_total", &[]).is_some(), "{text}");

    // The endpoint stops with the gRPC server.
    server.shutdown().await.unwrap();
    assert!(std::net::TcpStream::connect(metrics).is_err(), "metrics server stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let mut config = config();
    config.metrics.enabled = false;
    let server = start(config).await;
    assert_eq!(server.metrics_addr, None);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_is_counted_by_its_method_with_the_version_and_variant_that_answered() {
    let server = start(config()).await;
    let metrics = server.metrics_addr.expect("metrics are served by default");
    let (mut inspect, mut oip) = clients(&server).await;
    let metadata = vigil_proto::inference::ModelMetadataRequest { name: MODEL.into(), version: String::new() };
    oip.model_metadata(metadata).await.unwrap();
    let items: Vec<InspectRequest> = samples("normal")
        .into_iter()
        .take(2)
        .map(|(_, image)| InspectRequest { image, ..Default::default() })
        .collect();
    let mut stream = inspect.inspect_stream(tokio_stream::iter(items)).await.unwrap().into_inner();
    while let Some(item) = futures::StreamExt::next(&mut stream).await {
        assert!(item.unwrap().result.is_some());
    }
    // A path no service serves counts as "unknown": stray paths cannot grow the label set.
    let mut raw = tonic::client::Grpc::new(channel(&server).await);
    raw.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static("/vigil.v1.Inspection/NoSuchMethod");
    let status = raw.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // The stream's trailers reach the client after the layer has counted them.
    let (_, text) = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let version = server.repository.entry(MODEL).unwrap().default_version.to_string();
    let served = [("model", MODEL), ("version", version.as_str()), ("variant", "primary")];
    let count = |labels: &[(&str, &str)]| sample(&text, "vigil_requests_total", labels);
    let with = |api: &'static str| -> Vec<(&str, &str)> {
        served.iter().copied().chain([("api", api), ("status", "Ok")]).collect()
    };
    // ModelMetadata names no version it ran: counted without one.
    assert_eq!(count(&[("api", "model_metadata"), ("status", "Ok")]), Some(1.0), "{text}");
    assert_eq!(count(&[("api", "unknown"), ("status", "Unimplemented")]), Some(1.0), "{text}");
    assert!(!text.contains("no_such_method"), "{text}");
    assert_eq!(count(&with("inspect")), Some(2.0), "each stream item, with its model version: {text}");
    assert_eq!(count(&[("api", "inspect_stream"), ("status", "Ok")]), Some(1.0), "the stream itself, once: {text}");
    assert_eq!(
        sample(&text, "vigil_queue_duration_seconds_count", &served),
        Some(2.0),
        "the core times every run with the version and variant: {text}"
    );
    server.shutdown().await.unwrap();
}
