//! Text models end to end: the anti-spam classifier, trained by `training/` with scikit-learn
//! and exported by skl2onnx (a string tensor in, a string label and probabilities out), served
//! by vigil-cloud over real gRPC. Raw and typed `BYTES` contents, alone and batched together,
//! answer as the onnxruntime Python package answers on the same posts; each post is logged with
//! its text metrics; malformed text inputs get INVALID_ARGUMENT and spoil nobody's batch.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use vigil_cloud::CloudConfig;
use vigil_inference::tensor::{parse_bytes_elements, serialize_bytes_elements};
use vigil_logbus::Emitter;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest};
use vigil_proto::vigil::v1::PredictionRecord;
use vigil_scenarios::Recipes;
use vigil_scenarios::recipes::SpamCheck;
use vigil_serving::records::RecordEmitter;

const MODEL: &str = "spam-filter";

async fn cloud(models: &Path) -> (vigil_cloud::RunningServer, mpsc::Receiver<vigil_logbus::Envelope>) {
    let mut config = CloudConfig { model_repository: models.to_path_buf(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = vigil_testkit::speech::repo_root().join("deploy/catalog/products.csv");
    let (sink, records) = vigil_logbus::in_process::channel(4096);
    let (emitter, _task) = Emitter::start(sink, 4096, 8);
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-text"))).await.unwrap();
    (server, records)
}

fn text_input(shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor { name: "text".into(), datatype: "BYTES".into(), shape, ..Default::default() }
}

/// Posts as raw contents: one request, shape `[n, 1]`.
fn raw_request(texts: &[String]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![text_input(vec![texts.len() as i64, 1])],
        raw_input_contents: vec![serialize_bytes_elements(texts).into()],
        ..Default::default()
    }
}

/// One post as typed contents (`bytes_contents`).
fn typed_request(text: &str) -> ModelInferRequest {
    let mut input = text_input(vec![1, 1]);
    input.contents = Some(InferTensorContents { bytes_contents: vec![text.as_bytes().to_vec()], ..Default::default() });
    ModelInferRequest { model_name: MODEL.into(), inputs: vec![input], ..Default::default() }
}

/// The labels and probabilities of a response, from its raw outputs.
fn answers(response: &ModelInferResponse) -> (Vec<String>, Vec<[f32; 2]>) {
    let raw = |name: &str| {
        let i = response.outputs.iter().position(|o| o.name == name).unwrap();
        (&response.outputs[i], &response.raw_output_contents[i][..])
    };
    let (label, label_bytes) = raw("label");
    assert_eq!(label.datatype, "BYTES");
    let labels: Vec<String> = parse_bytes_elements(label_bytes)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.to_vec()).unwrap())
        .collect();
    assert_eq!(label.shape, [labels.len() as i64]);
    let (probabilities, bytes) = raw("probabilities");
    assert_eq!(
        (probabilities.datatype.as_str(), probabilities.shape.as_slice()),
        ("FP32", &[labels.len() as i64, 2][..])
    );
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (labels, values.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

fn assert_as_onnxruntime(
    check: &SpamCheck,
    range: std::ops::Range<usize>,
    labels: &[String],
    probabilities: &[[f32; 2]],
) {
    for (i, (label, p)) in range.zip(labels.iter().zip(probabilities)) {
        assert_eq!(label, &check.label[i], "post {i} {:?}", check.texts[i]);
        for (got, want) in p.iter().zip(&check.probabilities[i]) {
            assert!(
                (got - want).abs() < 1e-5,
                "post {i} {:?}: {p:?} vs onnxruntime's {:?}",
                check.texts[i],
                check.probabilities[i]
            );
        }
    }
}

async fn client(server: &vigil_cloud::RunningServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_skl2onnx_text_classifier_answers_as_onnxruntime_over_raw_and_typed_bytes_and_logs_text_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let check = Recipes::locate().unwrap().spam_filter(&repository, 1, "good", 7).unwrap();
    assert!(check.label.iter().any(|l| l == "spam") && check.label.iter().any(|l| l == "ham"));
    let (server, mut records) = cloud(&repository).await;
    let mut oip = client(&server).await;

    let metadata = oip.model_metadata(ModelMetadataRequest { name: MODEL.into(), version: String::new() }).await;
    let metadata = metadata.unwrap().into_inner();
    assert_eq!((metadata.inputs[0].datatype.as_str(), metadata.inputs[0].shape.as_slice()), ("BYTES", &[-1, 1][..]));

    // 32 posts (the batcher's largest batch) in one raw request.
    let response = oip.model_infer(raw_request(&check.texts[..32])).await.unwrap().into_inner();
    let (labels, probabilities) = answers(&response);
    assert_as_onnxruntime(&check, 0..32, &labels, &probabilities);

    // Every post alone as typed contents, 24 at a time: the batcher joins posts of different
    // lengths from different requests and must hand each its own answer.
    let mut requests = futures::stream::iter(check.texts.iter().enumerate().map(|(i, text)| {
        let mut oip = oip.clone();
        let request = typed_request(text);
        async move { (i, oip.model_infer(request).await.unwrap().into_inner()) }
    }))
    .buffer_unordered(24);
    let mut alone = HashMap::new();
    while let Some((i, response)) = requests.next().await {
        let (labels, probabilities) = answers(&response);
        assert_as_onnxruntime(&check, i..i + 1, &labels, &probabilities);
        let id = response.parameters["prediction_ids"].parameter_choice.clone().unwrap();
        let vigil_proto::inference::infer_parameter::ParameterChoice::StringParam(id) = id else { panic!() };
        alone.insert(id, i);
    }
    let statistics = &server.repository.get(MODEL, "").unwrap().stats;
    let executions = statistics.execution_count.load(std::sync::atomic::Ordering::Relaxed);
    println!("{} posts alone ran in {executions} executions", check.texts.len());

    // Each post alone was logged with its text's metrics and the model's probabilities.
    let mut metrics = HashMap::new();
    let mut logged = 0;
    while logged < 32 + alone.len() {
        let envelope = tokio::time::timeout(Duration::from_secs(10), records.recv()).await.unwrap().unwrap();
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        logged += 1;
        let Some(&i) = alone.get(&record.prediction_id) else { continue };
        let text = &check.texts[i];
        let feature = |name: &str| {
            record.features.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name}: {record:?}"))
        };
        assert_eq!(feature("text.chars").value, text.chars().count() as f64, "{text:?}");
        // Words are runs of letters and digits ("sister's" is two).
        let words = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).count();
        assert_eq!(feature("text.words").value as usize, words, "{text:?}");
        assert_eq!(feature("text.oov_share").missing, words == 0, "{text:?}");
        let english = feature("text.lang.eng").value;
        assert_eq!(english + feature("text.lang.other").value, 1.0);
        let output = record.output.as_ref().unwrap();
        assert_eq!(output.label, check.label[i]);
        assert!((output.scores[1] - check.probabilities[i][1]).abs() < 1e-5, "{output:?}");
        metrics.insert(i, (feature("text.oov_share").value, english));
    }
    // The generated posts are English and nearly all in the vocabulary the model learnt; the
    // long soup of "win" is all known words (of no language); the Japanese post is neither.
    let generated: Vec<&(f64, f64)> = (0..check.texts.len() - 3).map(|i| &metrics[&i]).collect();
    let oov = generated.iter().map(|m| m.0).sum::<f64>() / generated.len() as f64;
    let english = generated.iter().map(|m| m.1).sum::<f64>() / generated.len() as f64;
    assert!(oov < 0.1 && english > 0.9, "generated posts: oov share {oov}, English {english}");
    let n = check.texts.len();
    assert_eq!(metrics[&(n - 2)], (1.0, 0.0), "{:?}", check.texts[n - 2]);
    assert_eq!(metrics[&(n - 1)].0, 0.0, "{:?}", check.texts[n - 1]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_text_inputs_are_refused_with_invalid_argument_and_spoil_no_batch() {
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let check = Recipes::locate().unwrap().spam_filter(&repository, 1, "good", 7).unwrap();
    let (server, _records) = cloud(&repository).await;
    let oip = client(&server).await;

    let two = serialize_bytes_elements(&["free prize", "hello"]);
    let mut truncated = raw_request(&[]);
    truncated.inputs = vec![text_input(vec![2, 1])];
    truncated.raw_input_contents = vec![two[..two.len() - 2].to_vec().into()];
    let mut miscounted = truncated.clone();
    miscounted.inputs = vec![text_input(vec![3, 1])];
    miscounted.raw_input_contents = vec![two.clone().into()];
    let mut not_utf8 = typed_request("");
    not_utf8.inputs[0].contents =
        Some(InferTensorContents { bytes_contents: vec![vec![0xc3, 0x28]], ..Default::default() });
    let with_nul = typed_request("free\0prize");
    let mut wrong_field = typed_request("");
    wrong_field.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
    let mut wrong_type = raw_request(&check.texts[..1]);
    wrong_type.inputs[0].datatype = "FP32".into();
    let cases = [
        (truncated, "only 3 follow"),
        (miscounted, "2 BYTES elements, but shape [3, 1] needs 3"),
        (not_utf8, "not valid UTF-8"),
        (with_nul, "NUL"),
        (wrong_field, "contents.bytes_contents"),
        (wrong_type, "does not match the model's BYTES"),
    ];
    // Each bad request races good ones into the same batches: only the bad one fails.
    for (request, expected) in cases {
        let good = |i: usize| {
            let mut oip = oip.clone();
            let request = typed_request(&check.texts[i]);
            async move { oip.model_infer(request).await }
        };
        let mut bad = oip.clone();
        let (refused, a, b) = tokio::join!(bad.model_infer(request), good(0), good(1));
        let status = refused.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{:?} should say {expected:?}", status.message());
        for (i, answer) in [(0, a), (1, b)] {
            let (labels, probabilities) = answers(&answer.unwrap().into_inner());
            assert_as_onnxruntime(&check, i..i + 1, &labels, &probabilities);
        }
    }
    server.shutdown().await.unwrap();
}
