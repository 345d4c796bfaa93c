//! vigil-cloud with `[capture]`: each ModelInfer item its model's policy samples is kept in the
//! capture store as an OIP request of that item alone (its values byte for byte, a batch of one),
//! content-addressed, and the item's record names it; a model whose privacy says `never` keeps
//! nothing.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use sha2::Digest;
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_proto::inference::infer_parameter::ParameterChoice;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient};
use vigil_proto::vigil::v1::PredictionRecord;
use vigil_serving::records::RecordEmitter;

fn shipped(model: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(model).join("1");
    std::fs::create_dir_all(to.join(model).join("1")).unwrap();
    for file in ["model.onnx", "model.toml"] {
        std::fs::copy(from.join(file), to.join(model).join("1").join(file)).unwrap();
    }
}

/// A ModelInfer request of `n` gray 128x128 images for the scratch detector.
fn images(n: i64, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "scratch-detector".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![n, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_model_infer_items_are_kept_one_request_each_and_their_records_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    shipped("scratch-detector", &repository);
    let store = dir.path().join("captures");
    let mut config = CloudConfig { model_repository: repository.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.voice_search.enabled = false;
    config.capture = toml::from_str(&format!(
        "enabled = true\nstore = \"{}\"\nspool = \"{}\"\nrate = 0.0\n[models.scratch-detector]\nrate = 1.0\n",
        store.display(),
        dir.path().join("spool").display()
    ))
    .unwrap();
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = Emitter::start(sink, 1_000, 100);
    let server = vigil_cloud::start(config.clone(), false, Some(RecordEmitter::new(emitter.clone(), "cloud-7")))
        .await
        .expect("vigil-cloud starts");
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();

    // Three different images in one request.
    let per_item = 128 * 128;
    let values: Vec<f32> = (0..3 * per_item).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let answer = oip.model_infer(images(3, raw.clone())).await.unwrap().into_inner();
    let ids: Vec<String> = match answer.parameters["prediction_ids"].parameter_choice.clone() {
        Some(ParameterChoice::StringParam(s)) => s.split(',').map(String::from).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids.len(), 3);
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let mut records = std::collections::HashMap::new();
    while let Ok(envelope) = bus.try_recv() {
        let record = PredictionRecord::decode(envelope.payload.as_slice()).unwrap();
        records.insert(record.prediction_id.clone(), record);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (i, id) in ids.iter().enumerate() {
        let item = &raw[i * per_item * 4..(i + 1) * per_item * 4];
        let record = &records[id];
        let path = store.join(&record.capture);
        while !path.is_file() {
            assert!(std::time::Instant::now() < deadline, "item {i} ({}) never stored", record.capture);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bytes = std::fs::read(&path).unwrap();
        let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(record.capture, format!("scratch-detector/{sha}"), "content-addressed");
        let kept = ModelInferRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!((kept.model_name.as_str(), kept.model_version.as_str()), ("scratch-detector", "1"));
        assert_eq!(
            (kept.inputs[0].name.as_str(), kept.inputs[0].shape.as_slice()),
            ("image", &[1i64, 1, 128, 128][..])
        );
        assert_eq!(kept.raw_input_contents[0], item, "item {i}'s values, byte for byte");
        let meta = store.join(format!("scratch-detector/predictions/{id}.json"));
        while !meta.is_file() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        assert_eq!(meta["content_type"], vigil_serving::capture::CONTENT_TYPE);
    }
    server.shutdown().await.unwrap();

    // The same model under privacy `never`: answered and logged, nothing kept.
    let store_never = dir.path().join("captures-never");
    config.capture = toml::from_str(&format!(
        "enabled = true\nstore = \"{}\"\nspool = \"{}\"\nrate = 1.0\n[models.scratch-detector]\nprivacy = \"never\"\n",
        store_never.display(),
        dir.path().join("spool-never").display()
    ))
    .unwrap();
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter.clone(), "cloud-7"))).await.unwrap();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    oip.model_infer(images(1, raw[..per_item * 4].to_vec())).await.unwrap();
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let record = PredictionRecord::decode(bus.try_recv().unwrap().payload.as_slice()).unwrap();
    assert_eq!(record.capture, "", "privacy never: not captured");
    server.shutdown().await.unwrap();
    assert!(!store_never.join("scratch-detector").exists());
}
