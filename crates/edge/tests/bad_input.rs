//! Bad input over real gRPC on loopback: each answered with a precise status and a message
//! naming the problem; the server keeps serving and memory stays bounded.

mod common;

use common::*;
use tonic::Code;
use vigil_proto::inference::InferTensorContents;
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::vigil::v1::InspectRequest;

/// The tests that measure this process's memory (RSS) run alone: the others build messages
/// of many megabytes in the same process, which a measurement taken meanwhile would count.
static MEMORY: std::sync::LazyLock<tokio::sync::RwLock<()>> = std::sync::LazyLock::new(Default::default);

fn inspect_request(image: Vec<u8>) -> InspectRequest {
    InspectRequest { image, station_id: "test".into(), ..Default::default() }
}

fn infer_request(datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![InferInputTensor { name: "image".into(), datatype: datatype.into(), shape, ..Default::default() }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

const ITEM_BYTES: usize = 128 * 128 * 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_invalid_argument_naming_the_problem() {
    let _shared = MEMORY.read().await;
    let server = start(config()).await;
    let (mut inspect, _) = clients(&server).await;
    let good = samples("normal").remove(0).1;
    let truncated = good[..good.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero bytes", vec![], "empty"),
        ("truncated PNG", truncated, "corrupt or truncated"),
        ("text named .png", b"this is not an image, only text\n".to_vec(), "not PNG or JPEG"),
        ("1x1 image", vigil_inference::image::encode_png(1, 1, |_, _| [9, 9, 9]), "minimum is 16x16"),
        ("20000x20000 header", png_with_claimed_size(20000, 20000), "20000x20000 pixels; the limit is 4096x4096"),
    ];
    for (what, bytes, expected) in cases {
        let status = inspect.inspect(inspect_request(bytes)).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: message {:?} lacks {expected:?}", status.message());
        // The server keeps serving.
        let ok = inspect.inspect(inspect_request(good.clone())).await.expect("good image after a bad one");
        assert!((0.0..=1.0).contains(&ok.into_inner().defect_probability));
    }
    server.shutdown().await.unwrap();
}

/// A small file that decodes to a large image is limited by what it decodes to, not by its
/// size on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_limited_by_their_decoded_size() {
    let _shared = MEMORY.read().await;
    let mut config = config();
    config.images.max_decode_bytes = 2 << 20;
    config.images.max_preparing_bytes_in_flight = 20 << 20;
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    // 1024x1024 of one colour: a few KiB sent, 3 MiB decoded.
    let flat = vigil_inference::image::encode_png(1024, 1024, |_, _| [90, 90, 90]);
    assert!(flat.len() < 64 * 1024);
    let status = inspect.inspect(inspect_request(flat)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("3145728 bytes decoded; the limit is 2097152 bytes"), "{}", status.message());
    // 800x800 decodes to 1.9 MiB, under the limit, but preparing it takes about 8.5 MiB with its
    // working planes: two fit the 20 MiB budget at once, the others wait, and all are answered.
    let large = vigil_inference::image::encode_png(800, 800, |x, y| [(x % 251) as u8, (y % 241) as u8, 9]);
    let answers = futures::future::join_all((0..6).map(|_| {
        let mut inspect = inspect.clone();
        let request = inspect_request(large.clone());
        async move { inspect.inspect(request).await }
    }))
    .await;
    for answer in answers {
        let answer = answer.expect("images wait for room, they are not refused");
        assert_eq!((answer.get_ref().features.as_ref().unwrap().width), 800);
    }
    server.shutdown().await.unwrap();

    let mut config = common::config();
    config.images.max_preparing_bytes_in_flight = 4 << 20;
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    let status = inspect.inspect(inspect_request(large)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("images.max_preparing_bytes_in_flight (4194304 bytes)"), "{}", status.message());
    let good = samples("normal").remove(0).1;
    inspect.inspect(inspect_request(good)).await.expect("a camera's image is prepared as before");
    server.shutdown().await.unwrap();
}

/// Ids and times travel into every prediction record and key its Kafka message: what the
/// broker, the spool or Postgres would refuse later is refused at the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_times_a_record_cannot_carry_are_refused() {
    let _shared = MEMORY.read().await;
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let good = samples("normal").remove(0).1;
    let ancient = prost_types::Timestamp { seconds: -300_000_000_000, nanos: 0 };
    let cases: Vec<(&str, InspectRequest, &str)> = vec![
        (
            "a 2 MB station id",
            InspectRequest { station_id: "s".repeat(2 << 20), ..inspect_request(good.clone()) },
            "station_id is 2097152 bytes long; the limit is 256",
        ),
        (
            "a NUL in the part id",
            InspectRequest { part_id: "part\0-7".into(), ..inspect_request(good.clone()) },
            "part_id holds the control character '\\0'",
        ),
        (
            "a newline in the request id",
            InspectRequest { request_id: "r\n1".into(), ..inspect_request(good.clone()) },
            "request_id holds the control character",
        ),
        (
            "a capture time 9,500 years ago",
            InspectRequest { capture_time: Some(ancient), ..inspect_request(good.clone()) },
            "capture_time (-300000000000 s, 0 ns) is not a valid timestamp",
        ),
    ];
    for (what, request, expected) in cases {
        let status = inspect.inspect(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: message {:?} lacks {expected:?}", status.message());
    }
    let mut long_id = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    long_id.id = "i".repeat(300);
    let status = oip.model_infer(long_id).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("id is 300 bytes long"), "{}", status.message());
    // At the limit, and printable text of any script, is taken.
    let request =
        InspectRequest { station_id: "é".repeat(128), part_id: "Teil 7 · Linie 3".into(), ..inspect_request(good) };
    inspect.inspect(request).await.expect("a 256-byte station id");
    let mut ok = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    ok.id = "i".repeat(256);
    oip.model_infer(ok).await.expect("a 256-byte request id");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_the_limit_named() {
    let _shared = MEMORY.read().await;
    let mut config = config();
    config.limits.max_message_bytes = 64 * 1024;
    let server = start(config).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let status = inspect.inspect(inspect_request(vec![0u8; 100_000])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit is 65536 (limits.max_message_bytes)"), "{}", status.message());
    let large = infer_request("FP32", vec![2, 1, 128, 128], vec![0; 2 * ITEM_BYTES]);
    let status = oip.model_infer(large.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // On a stream, the message over the limit ends it the same way.
    let mut answers =
        oip.model_stream_infer(tokio_stream::iter(vec![large])).await.expect("the stream opens").into_inner();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limits.max_message_bytes"), "{}", status.message());
    // Under the limit still works.
    let small = samples("normal").remove(0).1;
    assert!(small.len() < 64 * 1024);
    inspect.inspect(inspect_request(small)).await.expect("small image after a large one");
    server.shutdown().await.unwrap();
}

/// A unary method sent two request messages (a client-streaming call on its path): refused
/// before the second is buffered, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_with_a_second_message_is_refused() {
    let _shared = MEMORY.read().await;
    use vigil_proto::inference::ModelInferResponse;
    let server = start(config()).await;
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    grpc.ready().await.unwrap();
    let one = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    let path = http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer");
    let codec = tonic_prost::ProstCodec::<ModelInferRequest, ModelInferResponse>::default();
    let twice = tonic::Request::new(tokio_stream::iter(vec![one.clone(), one.clone()]));
    let status = grpc.client_streaming(twice, path.clone(), codec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("one request message"), "{}", status.message());
    let codec = tonic_prost::ProstCodec::<ModelInferRequest, ModelInferResponse>::default();
    grpc.ready().await.unwrap();
    let once = tonic::Request::new(tokio_stream::iter(vec![one]));
    let answer = grpc.client_streaming(once, path, codec).await.expect("one message is a unary call");
    assert_eq!(answer.into_inner().model_name, MODEL);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_validation_names_the_input() {
    let _shared = MEMORY.read().await;
    let server = start(config()).await;
    let (_, mut oip) = clients(&server).await;
    let mut mixed = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    mixed.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![0.0; 128 * 128], ..Default::default() });
    let mut typed_wrong_field = infer_request("FP32", vec![1, 1, 128, 128], vec![]);
    typed_wrong_field.raw_input_contents.clear();
    typed_wrong_field.inputs[0].contents =
        Some(InferTensorContents { int64_contents: vec![0; 128 * 128], ..Default::default() });
    let mut unknown_input = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    unknown_input.inputs[0].name = "pixels".into();
    let mut unknown_output = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    unknown_output.outputs.push(vigil_proto::inference::model_infer_request::InferRequestedOutputTensor {
        name: "logits".into(),
        ..Default::default()
    });
    let mut two_raw = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    two_raw.raw_input_contents.push(vec![0; 4].into());
    let cases: Vec<(&str, ModelInferRequest, &str)> = vec![
        (
            "wrong datatype",
            infer_request("FP64", vec![1, 1, 128, 128], vec![0; 2 * ITEM_BYTES]),
            "input 'image': datatype FP64 does not match the model's FP32",
        ),
        (
            "unknown datatype",
            infer_request("FLOAT", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]),
            "unknown datatype 'FLOAT'",
        ),
        (
            "wrong shape",
            infer_request("FP32", vec![1, 3, 128, 128], vec![0; 3 * ITEM_BYTES]),
            "input 'image': shape [1, 3, 128, 128] does not match",
        ),
        ("wrong rank", infer_request("FP32", vec![1, 128, 128], vec![0; ITEM_BYTES]), "input 'image': shape"),
        ("zero batch", infer_request("FP32", vec![0, 1, 128, 128], vec![]), "input 'image': shape"),
        (
            "batch too large",
            infer_request("FP32", vec![65, 1, 128, 128], vec![0; 65 * ITEM_BYTES]),
            "exceeds the model's max_batch_size",
        ),
        (
            "wrong byte length",
            infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES - 4]),
            "input 'image': 65532 bytes of contents, but shape [1, 1, 128, 128] of FP32 needs 65536",
        ),
        ("mixed raw and typed", mixed, "input 'image' has both raw_input_contents and typed contents"),
        ("typed contents in the wrong field", typed_wrong_field, "contents.fp32_contents"),
        ("unknown input", unknown_input, "unknown input 'pixels'; model 'scratch-detector' takes: image"),
        ("unknown requested output", unknown_output, "requested output 'logits' is not an output"),
        ("raw count mismatch", two_raw, "raw_input_contents has 2 entries but the request has 1 inputs"),
    ];
    for (what, request, expected) in cases {
        let status = oip.model_infer(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {:?} lacks {expected:?}", status.message());
    }
    // Still serving.
    oip.model_infer(infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES])).await.expect("valid request");
    // Up to the model's max_batch_size (64) is taken, though the batcher forms batches of up to
    // 32: such a request runs by itself.
    let forty = infer_request("FP32", vec![40, 1, 128, 128], vec![0; 40 * ITEM_BYTES]);
    let answer = oip.model_infer(forty).await.expect("40 items, under max_batch_size").into_inner();
    assert_eq!(answer.outputs[0].shape, [40, 1]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_versions_are_not_found() {
    let _shared = MEMORY.read().await;
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    let mut r = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    r.model_name = "no-such-model".into();
    let status = oip.model_infer(r).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("model 'no-such-model' not found; available: scratch-detector"),
        "{}",
        status.message()
    );
    for version in ["999", "latest"] {
        let mut r = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
        r.model_version = version.into();
        let status = oip.model_infer(r).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains(&format!("version '{version}' of model 'scratch-detector' not found")),
            "{}",
            status.message()
        );
    }
    let mut r = inspect_request(samples("normal").remove(0).1);
    r.model_name = "nope".into();
    assert_eq!(inspect.inspect(r).await.unwrap_err().code(), Code::NotFound);
    let status = oip
        .model_metadata(vigil_proto::inference::ModelMetadataRequest { name: "nope".into(), version: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let ready = oip
        .model_ready(vigil_proto::inference::ModelReadyRequest { name: "nope".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    server.shutdown().await.unwrap();
}

/// Messages whose decoded form is many times their size (empty submessages, typed contents of
/// small integers): bounded from the wire form and charged against the memory budget before
/// they are decoded, or refused then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_decode_far_beyond_their_size_are_charged_before_decoding() {
    // Measures the process's memory: alone (see MEMORY).
    let _alone = MEMORY.write().await;
    let mut config = config();
    config.limits.max_message_bytes = 4 << 20;
    config.limits.max_request_bytes_in_flight = 16 << 20;
    let server = start(config).await;
    let (_, mut oip) = clients(&server).await;
    // 1.5 million empty inputs: 3 MB on the wire, about a gigabyte once decoded.
    let mut inflated = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    inflated.inputs.extend(std::iter::repeat_n(InferInputTensor::default(), 1_500_000));
    let before = rss_kib();
    for _ in 0..3 {
        let status = oip.model_infer(inflated.clone()).await.expect_err("decodes to a gigabyte");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("once decoded"), "{}", status.message());
        assert!(status.message().contains("memory budget of 16777216 bytes"), "{}", status.message());
        assert!(status.message().contains("raw_input_contents"), "{}", status.message());
    }
    drop(inflated);
    let after = rss_kib();
    // Decoded once, the inputs alone would add hundreds of megabytes.
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // Typed INT64 zeros decode to eight bytes a value (more as the Vec grows): 300,000 take
    // 300 KB on the wire and 2.4 MB or more decoded, over the 3x charge but within the budget:
    // charged and decoded, then refused by the model's contract.
    let mut typed = infer_request("INT64", vec![1, 300_000], vec![]);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(InferTensorContents { int64_contents: vec![0; 300_000], ..Default::default() });
    let status = oip.model_infer(typed).await.expect_err("not the model's input");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Honest requests are served as before.
    let ok = infer_request("FP32", vec![1, 1, 128, 128], vec![0; ITEM_BYTES]);
    oip.model_infer(ok).await.expect("a raw request");
    let metrics = server.metrics_addr.expect("metrics enabled");
    until_metric(metrics, "vigil_request_bytes_in_flight", &[], 0.0).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_repeated_bad_input() {
    // Measures the process's memory: alone (see MEMORY).
    let _alone = MEMORY.write().await;
    let server = start(config()).await;
    let (mut inspect, mut oip) = clients(&server).await;
    // A real, decodable 20000x20000 image: were the size limit not enforced before decoding,
    // each request would write 400 MB of pixels (a truncated header alone would fail early).
    let huge = png_really_of_size(20000, 20000);
    assert!(huge.len() < 1024 * 1024, "small on the wire: {} bytes", huge.len());
    let decoded = image::load_from_memory(&png_really_of_size(64, 48)).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 48), "the generator makes valid images");
    let mut round = async || {
        for _ in 0..20 {
            let status = inspect.inspect(inspect_request(huge.clone())).await.expect_err("a 20000x20000 image");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("the limit is 4096x4096"), "{}", status.message());
            let status = inspect.inspect(inspect_request(b"garbage".to_vec())).await.expect_err("garbage");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            let status = oip
                .model_infer(infer_request("FP32", vec![1, 1, 128, 128], vec![0; 100]))
                .await
                .expect_err("100 bytes for a 64 KiB tensor");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    };
    round().await;
    let before = rss_kib();
    assert!(before > 0);
    for _ in 0..4 {
        round().await;
    }
    let after = rss_kib();
    // 80 more huge images: one decoded would add 400 MB.
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    server.shutdown().await.unwrap();
}
