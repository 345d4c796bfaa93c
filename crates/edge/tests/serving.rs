//! The edge server end to end over real gRPC on loopback: inspection, OIP v2, streaming,
//! health, reflection, load shedding, deadlines and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use tonic::Code;
use vigil_inference::image::{ImageLimits, prepare};
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::*;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::{Decision, InspectRequest, Verdict};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_answers_with_ids_verdicts_decisions_and_features() {
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let config = model_config();
    let t = config.thresholds.unwrap();
    let mut ids = std::collections::HashSet::new();
    for (name, bytes) in samples("normal") {
        let r = inspect
            .inspect(InspectRequest {
                image: bytes.clone(),
                station_id: "line-1".into(),
                part_id: name.clone(),
                request_id: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = uuid::Uuid::parse_str(&r.prediction_id).expect("prediction id is a UUID");
        assert_eq!(id.get_version_num(), 7, "UUIDv7");
        assert!(ids.insert(r.prediction_id.clone()));
        assert_eq!(
            (r.station_id.as_str(), r.part_id.as_str(), r.request_id.as_str()),
            ("line-1", name.as_str(), name.as_str())
        );
        assert_eq!(r.model_name, "scratch-detector");
        assert_eq!(r.model_version, config.version.to_string());
        let expected_verdict = if r.defect_probability >= t.defect { Verdict::Defect } else { Verdict::Ok };
        assert_eq!(r.verdict, expected_verdict as i32);
        let expected_decision = if r.defect_probability < t.accept_below {
            Decision::Accept
        } else if r.defect_probability >= t.reject_at {
            Decision::Reject
        } else {
            Decision::HumanReview
        };
        assert_eq!(r.decision, expected_decision as i32);
        // The same preprocessed tensor through ModelInfer gives the same score.
        let prepared = prepare(&bytes, config.preprocess.as_ref().unwrap(), &ImageLimits::default()).unwrap();
        let f = r.features.unwrap();
        assert_eq!((f.width, f.height), (prepared.width, prepared.height));
        assert!((f.brightness - prepared.features.brightness).abs() < 1e-9);
        assert!((f.sharpness - prepared.features.sharpness).abs() < 1e-9);
        let out = oip
            .model_infer(ModelInferRequest {
                model_name: MODEL.into(),
                inputs: vec![InferInputTensor {
                    name: "image".into(),
                    datatype: "FP32".into(),
                    shape: prepared.tensor.shape.clone(),
                    ..Default::default()
                }],
                raw_input_contents: vec![prepared.tensor.data.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!((f32s(&out.raw_output_contents[0])[0] - r.defect_probability).abs() < 1e-6);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_equals_its_items_and_typed_equals_raw() {
    let server = start(config()).await;
    let (_, mut oip) = clients(&server).await;
    let config = model_config();
    let tensors = prepared_samples("drifted", 4);
    let mut singles = Vec::new();
    for t in &tensors {
        let typed = ModelInferRequest {
            model_name: MODEL.into(),
            id: "typed".into(),
            inputs: vec![InferInputTensor {
                name: "image".into(),
                datatype: "FP32".into(),
                shape: t.shape.clone(),
                contents: Some(InferTensorContents { fp32_contents: t.to_f32().unwrap(), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = oip.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(r.id, "typed", "id echoed");
        assert_eq!(r.outputs[0].name, "defect_probability");
        assert_eq!(r.outputs[0].shape, vec![1, 1]);
        singles.push(f32s(&r.raw_output_contents[0])[0]);
    }
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.data.clone()).collect();
    let batch = ModelInferRequest {
        model_name: MODEL.into(),
        model_version: config.version.to_string(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![4, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![data.into()],
        outputs: vec![model_infer_request::InferRequestedOutputTensor {
            name: "defect_probability".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = oip.model_infer(batch).await.unwrap().into_inner();
    assert_eq!(r.outputs[0].shape, vec![4, 1]);
    let batched = f32s(&r.raw_output_contents[0]);
    for (a, b) in batched.iter().zip(&singles) {
        assert!((a - b).abs() < 1e-5, "batched {a} vs single {b}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_config_and_statistics_describe_the_model() {
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let config = model_config();
    assert!(oip.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(oip.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta = oip.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "vigil-edge");
    assert!(meta.extensions.contains(&"model_configuration".to_string()));
    let m = oip
        .model_metadata(ModelMetadataRequest { name: MODEL.into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.platform, "onnxruntime_onnx");
    assert_eq!(m.versions, vec![config.version.to_string()]);
    assert_eq!((m.inputs[0].name.as_str(), m.inputs[0].datatype.as_str()), ("image", "FP32"));
    assert_eq!(m.inputs[0].shape, vec![-1, 1, 128, 128]);
    assert_eq!(m.outputs[0].shape, vec![-1, 1]);
    let c = oip
        .model_config(ModelConfigRequest { name: MODEL.into(), version: String::new() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(c.name, MODEL);
    assert_eq!(c.max_batch_size as usize, config.max_batch_size);
    assert_eq!(c.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(c.input[0].dims, vec![1, 128, 128]);
    match c.scheduling_choice {
        Some(model_config::SchedulingChoice::DynamicBatching(b)) => {
            assert_eq!(b.max_queue_delay_microseconds, config.dynamic_batching.unwrap().max_queue_delay_us)
        }
        other => panic!("expected dynamic batching, got {other:?}"),
    }
    let images = samples("normal");
    for (_, b) in images.iter().take(5) {
        inspect.inspect(InspectRequest { image: b.clone(), ..Default::default() }).await.unwrap();
    }
    let _ = inspect.inspect(InspectRequest { image: vec![], ..Default::default() }).await.unwrap_err();
    let s = oip
        .model_statistics(ModelStatisticsRequest { name: MODEL.into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    let stats = &s.model_stats[0];
    let inf = stats.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 5);
    assert_eq!(inf.fail.as_ref().unwrap().count, 1);
    assert_eq!(inf.queue.as_ref().unwrap().count, 5);
    assert!(inf.compute_infer.as_ref().unwrap().ns > 0);
    assert_eq!(stats.inference_count, 5);
    assert!(stats.execution_count >= 1 && stats.execution_count <= 5);
    assert_eq!(
        stats.batch_stats.iter().map(|b| b.batch_size * b.compute_infer.as_ref().unwrap().count).sum::<u64>(),
        5
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_stream_answers_in_order_and_survives_bad_images() {
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let mut requests: Vec<InspectRequest> = samples("normal")
        .into_iter()
        .take(6)
        .enumerate()
        .map(|(i, (_, b))| InspectRequest { image: b, request_id: i.to_string(), ..Default::default() })
        .collect();
    requests[2].image = b"not an image".to_vec();
    let responses: Vec<_> =
        inspect.inspect_stream(tokio_stream::iter(requests)).await.unwrap().into_inner().collect::<Vec<_>>().await;
    assert_eq!(responses.len(), 6);
    for (i, r) in responses.into_iter().enumerate() {
        let r = r.unwrap();
        if i == 2 {
            let e = r.error.expect("bad image reported in-stream");
            assert_eq!((e.code, e.request_id.as_str()), (Code::InvalidArgument as i32, "2"));
        } else {
            assert_eq!(r.result.unwrap().request_id, i.to_string());
        }
    }
    // ModelStreamInfer: errors travel as error_message, the stream continues.
    let good = black_images_request("a", 1);
    let mut bad = good.clone();
    bad.id = "b".into();
    bad.raw_input_contents[0].truncate(8);
    let mut again = good.clone();
    again.id = "c".into();
    let out: Vec<_> =
        oip.model_stream_infer(tokio_stream::iter(vec![good, bad, again])).await.unwrap().into_inner().collect().await;
    let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
    assert!(out[0].error_message.is_empty() && out[2].error_message.is_empty());
    assert!(out[1].error_message.contains("input 'image'"), "{}", out[1].error_message);
    assert_eq!(out.iter().map(|r| r.infer_response.as_ref().unwrap().id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start(config()).await;
    let ch = channel(&server).await;
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "inference.GRPCInferenceService", "vigil.v1.Inspection"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    let mut reflection = ServerReflectionClient::new(ch.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // Two questions on one stream, as grpcurl asks them.
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request.clone(), request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let second = responses.next().await.expect("a second answer").expect("the second question answered");
    assert!(matches!(second.message_response, Some(MessageResponse::ListServicesResponse(_))));
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["inference.GRPCInferenceService", "vigil.v1.Inspection", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // The older v1alpha protocol (Python's grpcio-reflection, Postman) describes the same services.
    use tonic_reflection::pb::v1alpha;
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "vigil.v1.Inspection".into(),
        )),
    };
    let mut responses = alpha.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected v1alpha reflection answer: {response:?}")
    };
    let files: Vec<prost_types::FileDescriptorProto> =
        files.file_descriptor_proto.iter().map(|b| prost::Message::decode(b.as_slice()).unwrap()).collect();
    let inspection = files
        .iter()
        .filter(|f| f.package() == "vigil.v1")
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Inspection")
        .expect("the file declaring vigil.v1.Inspection");
    let methods: Vec<&str> = inspection.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Inspect", "InspectStream"]);
    server.shutdown().await.unwrap();
}

/// A caller's `grpc-timeout` (at most 8 digits, by the gRPC spec) ends a lasting call such as a
/// health watch, which has no deadline of the server's; one too long to be a timeout is ignored,
/// never added to the clock (its overflow would end the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_timeout_ends_a_health_watch_and_one_too_long_is_ignored() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let server = start(config()).await;
    let mut health = HealthClient::new(channel(&server).await);
    let watch_with = |timeout: &'static str| {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.metadata_mut().insert("grpc-timeout", timeout.parse().unwrap());
        request
    };
    for too_long in ["9999999999999999999S", "999999999H"] {
        let mut watch = health.watch(watch_with(too_long)).await.unwrap().into_inner();
        assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32, "{too_long}");
        let quiet = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
        assert!(quiet.is_err(), "{too_long}: the watch ended: {quiet:?}");
    }
    let mut watch = health.watch(watch_with("99999999H")).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let mut watch = health.watch(watch_with("500m")).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("the caller's deadline ends it") {
        Some(Err(status)) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
        other => panic!("the watch should end with DEADLINE_EXCEEDED: {other:?}"),
    }
    let r = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32, "the server still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_outlives_the_request_timeout_and_ends_when_the_drain_starts() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let mut config = config();
    config.limits.request_timeout_ms = 200;
    config.limits.drain_timeout_ms = 120_000;
    let server = start(config).await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    // Clients that check health themselves keep their watch for the connection's life: no
    // deadline of the server's ends it, nor its quiet.
    let quiet = tokio::time::timeout(Duration::from_millis(800), watch.next()).await;
    assert!(quiet.is_err(), "the watch ended or spoke past the request timeout: {quiet:?}");
    // Draining, the server tells its watchers, then ends the watch rather than wait for it.
    let shutdown = tokio::spawn(server.shutdown());
    let update = watch.next().await.expect("an update").expect("the update, not an error");
    assert_eq!(update.status, ServingStatus::NotServing as i32);
    match watch.next().await {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("the watch should end with UNAVAILABLE: {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(60), shutdown)
        .await
        .expect("the shutdown waited on the watch for its drain timeout (120 s)")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_shed() {
    // The slow model keeps requests in flight long enough to overlap.
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.max_concurrent_requests = 2;
    let server = start(config).await;
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = inspect.clone();
            let image = image.clone();
            tokio::spawn(async move { c.inspect(InspectRequest { image, ..Default::default() }).await })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("2 requests in flight"), "{}", s.message());
                shed += 1;
            }
        }
    }
    assert_eq!(ok, 2, "exactly the limit is served");
    assert_eq!(shed, 4);
    let (_, text) = scrape(server.metrics_addr.unwrap());
    let count = |status| sample(&text, "vigil_requests_total", &[("api", "inspect"), ("status", status)]);
    assert_eq!((count("Ok"), count("ResourceExhausted")), (Some(2.0), Some(4.0)), "{text}");
    server.shutdown().await.unwrap();
}

/// Polls the server's metrics until the model's `name` gauge reads `value`.
async fn until_gauge(server: &vigil_edge::RunningServer, name: &str, value: f64) {
    until_metric(server.metrics_addr.unwrap(), name, &[("model", MODEL)], value).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_queue_depth_requests_are_refused_with_resource_exhausted() {
    // One batch runs on the slow model; the queue holds 2; the next request is refused at once.
    let repo = slow_repository(32, 2);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    let server = start(config).await;
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let call = |inspect: &InspectionClient<tonic::transport::Channel>| {
        let (mut c, image) = (inspect.clone(), image.clone());
        tokio::spawn(async move { c.inspect(InspectRequest { image, ..Default::default() }).await })
    };
    let running = call(&inspect);
    until_gauge(&server, "vigil_running_batches", 1.0).await;
    let queued = [call(&inspect), call(&inspect)];
    until_gauge(&server, "vigil_pending_requests", 2.0).await;
    let status = call(&inspect).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("queue is full (2 requests waiting)"), "{}", status.message());
    assert!(running.await.unwrap().is_ok());
    for q in queued {
        assert!(q.await.unwrap().is_ok(), "the queued requests are served");
    }
    until_gauge(&server, "vigil_pending_requests", 0.0).await;
    let (_, text) = scrape(server.metrics_addr.unwrap());
    let count = |status| sample(&text, "vigil_requests_total", &[("api", "inspect"), ("status", status)]);
    assert_eq!((count("Ok"), count("ResourceExhausted")), (Some(3.0), Some(1.0)), "{text}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_requests_with_deadline_exceeded() {
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.request_timeout_ms = 100;
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = vigil_logbus::Emitter::start(sink, 1_000, 100);
    let records = vigil_serving::RecordEmitter::new(emitter, "edge-1");
    let server = vigil_edge::start_with(config, false, Some(records)).await.expect("edge server starts");
    let (mut inspect, mut oip) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let status = inspect.inspect(InspectRequest { image: image.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline of 100 ms"), "{}", status.message());
    let (_, text) = scrape(server.metrics_addr.unwrap());
    let labels = [("model", MODEL), ("api", "inspect"), ("status", "DeadlineExceeded")];
    assert_eq!(sample(&text, "vigil_requests_total", &labels), Some(1.0), "the abandoned request is counted: {text}");
    let tensor = InferInputTensor {
        name: "image".into(),
        datatype: "FP32".into(),
        shape: vec![1, 1, 128, 128],
        ..Default::default()
    };
    let request = ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![tensor],
        raw_input_contents: vec![vec![0u8; 4 * 128 * 128].into()],
        ..Default::default()
    };
    let status = oip.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Each request timed out is logged as the version's failure (a slow canary's timeouts count
    // against it), once.
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let envelope = tokio::time::timeout(Duration::from_secs(5), bus.recv()).await.expect("a record").unwrap();
        let record =
            <vigil_proto::vigil::v1::PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        failed.push((record.api, record.status, record.error));
    }
    failed.sort();
    for ((api, status, error), want) in failed.iter().zip(["inspect", "model_infer"]) {
        assert_eq!((api.as_str(), *status), (want, vigil_proto::vigil::v1::RecordStatus::Error as i32));
        assert!(error.starts_with("DeadlineExceeded"), "{error}");
    }
    // And as the version's failures in its statistics, like the records.
    let request = ModelStatisticsRequest { name: MODEL.into(), ..Default::default() };
    let stats = oip.model_statistics(request).await.unwrap().into_inner().model_stats;
    let inference = stats[0].inference_stats.unwrap();
    let (fail, success) = (inference.fail.unwrap().count, inference.success.unwrap().count);
    assert_eq!((fail, success), (2, 0), "the timed-out requests are the version's failures");
    server.shutdown().await.unwrap();
    assert!(bus.try_recv().is_err(), "one record per request: {:?}", bus.try_recv());

    // The caller's shorter deadline ends the call at that deadline (the client library and the
    // server both enforce it), and the abandoned request gives its admission permit back.
    let mut config = common::config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.max_concurrent_requests = 1;
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    let mut request = tonic::Request::new(InspectRequest { image: image.clone(), ..Default::default() });
    request.set_timeout(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let status = inspect.inspect(request).await.unwrap_err();
    let ended = started.elapsed();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    until_metric(server.metrics_addr.unwrap(), "vigil_inflight_requests", &[], 0.0).await;
    let started = std::time::Instant::now();
    let ok = inspect.inspect(InspectRequest { image, ..Default::default() }).await;
    assert!(ok.is_ok(), "the permit of the abandoned request was released: {ok:?}");
    // Against a whole run measured now, on the same machine: a call that waited for its run
    // would have taken as long.
    let run = started.elapsed();
    assert!(ended < run, "ended at the caller's deadline ({ended:?}), not after a run ({run:?})");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_its_admission_back_after_the_deadline() {
    let mut config = config();
    config.limits.max_concurrent_requests = 2;
    config.limits.max_streams_per_connection = 2;
    config.limits.request_timeout_ms = 200;
    let server = start(config).await;
    let metrics = server.metrics_addr.unwrap();
    // A client that never opens its HTTP/2 window: its answers cannot be sent, so the server's
    // response bodies are never polled, and neither their end nor their deadline comes that way.
    let shut = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(0)
        .connect()
        .await
        .unwrap();
    let stalled = vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(shut);
    let call = || {
        let mut stalled = stalled.clone();
        tokio::spawn(async move { stalled.server_live(ServerLiveRequest {}).await })
    };
    let mut stuck = vec![call(), call()];
    until_metric(metrics, "vigil_inflight_requests", &[], 2.0).await;
    // Two streams per connection (the server's settings long known by now): the third call
    // waits on the client's side.
    stuck.push(call());
    let (_, mut oip) = clients(&server).await;
    let shed = oip.server_live(ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "the stalled calls hold both permits: {shed:?}");
    // A second past their deadline, their permits are given back and counted.
    tokio::time::timeout(Duration::from_secs(10), until_metric(metrics, "vigil_unread_answers_total", &[], 2.0))
        .await
        .expect("the stalled calls' admission given back");
    until_metric(metrics, "vigil_inflight_requests", &[], 0.0).await;
    assert!(oip.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    // The stalled streams stay open on their connection (the client has not reset them): the
    // third call never reached the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, text) = scrape(metrics);
    assert_eq!(sample(&text, "vigil_inflight_requests", &[]), Some(0.0), "{text}");
    assert!(stuck.iter().all(|call| !call.is_finished()), "the stalled client still waits for its answers");
    stuck.into_iter().for_each(|call| call.abort());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    let server = start(config).await;
    let addr = server.addr;
    let (inspect, _) = clients(&server).await;
    let image = samples("normal").remove(0).1;
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let mut c = inspect.clone();
            let image = image.clone();
            tokio::spawn(async move { c.inspect(InspectRequest { image, ..Default::default() }).await })
        })
        .collect();
    // All three reached the server (a call sent after the shutdown began would be refused).
    until_metric(server.metrics_addr.unwrap(), "vigil_inflight_requests", &[], 3.0).await;
    server.shutdown().await.unwrap();
    for r in in_flight {
        let r = r.await.unwrap().expect("in-flight request completes during shutdown");
        assert!((0.0..=1.0).contains(&r.into_inner().defect_probability));
    }
    let refused = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    assert!(refused.is_err(), "no new connections after shutdown");
}
