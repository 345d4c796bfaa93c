//! ModelInfer predictions are logged like inspections: one record per item, with the version
//! and variant that served it, input summaries and the scores the caller got.

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use tonic::Code;
use vigil_logbus::Emitter;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{ModelInferRequest, infer_parameter::ParameterChoice};
use vigil_proto::vigil::v1::{PredictionRecord, RecordStatus, Variant};
use vigil_serving::RecordEmitter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_predictions_are_logged_per_item_with_version_and_variant() {
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = Emitter::start(sink, 1_000, 100);
    let server = vigil_edge::start_with(config(), false, Some(RecordEmitter::new(emitter.clone(), "edge-7")))
        .await
        .expect("edge server starts");
    let (_, mut oip) = clients(&server).await;
    // Two items: a ramp and a constant, so the per-item summaries differ.
    let items: [Vec<f32>; 2] =
        [(0..128 * 128).map(|i| (i % 256) as f32 / 255.0 - 0.5).collect(), vec![0.25; 128 * 128]];
    let raw: Vec<u8> = items.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let request = ModelInferRequest {
        model_name: MODEL.into(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![2, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let response = oip.model_infer(request.clone()).await.unwrap().into_inner();
    let scores = f32s(&response.raw_output_contents[0]);
    let ids = match response.parameters["prediction_ids"].parameter_choice.clone() {
        Some(ParameterChoice::StringParam(ids)) => ids,
        other => panic!("prediction_ids: {other:?}"),
    };
    let ids: Vec<&str> = ids.split(',').collect();
    assert_eq!(ids.len(), 2);
    // A refused request is logged too, its input as missing.
    let mut bad = request;
    bad.inputs[0].shape = vec![2, 3, 128, 128];
    assert_eq!(oip.model_infer(bad).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(emitter.drain(Duration::from_secs(10)).await);

    let mut records = Vec::new();
    while let Ok(envelope) = bus.try_recv() {
        records.push(PredictionRecord::decode(envelope.payload.as_slice()).unwrap());
    }
    assert_eq!(records.len(), 3, "{records:?}");
    let config = model_config();
    let threshold = config.thresholds.as_ref().unwrap().defect;
    for (i, record) in records[..2].iter().enumerate() {
        assert_eq!(record.prediction_id, ids[i]);
        assert_eq!((record.api.as_str(), record.request_id.as_str()), ("model_infer", "req-1"));
        assert_eq!(
            (record.model_name.as_str(), record.model_version.as_str()),
            (MODEL, response.model_version.as_str())
        );
        assert_eq!(record.variant, Variant::Primary as i32);
        assert_eq!(record.server_id, "edge-7");
        assert_eq!(record.status, RecordStatus::Ok as i32);
        let output = record.output.as_ref().unwrap();
        assert_eq!(output.scores, vec![scores[i]], "the score the caller got");
        assert_eq!(output.label, config.labels[usize::from(scores[i] >= threshold)]);
        // One score of a binary model: both classes by name, the first scored 1 - score.
        let classes: Vec<(&str, f32)> = output.class_scores.iter().map(|c| (c.name.as_str(), c.score)).collect();
        assert_eq!(classes, [(config.labels[0].as_str(), 1.0 - scores[i]), (config.labels[1].as_str(), scores[i])]);
        // The input summaries, computed here from the values sent.
        let values: Vec<f64> = items[i].iter().map(|&v| f64::from(v)).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let feature = |name: &str| record.features.iter().find(|f| f.name == name).map(|f| f.value);
        for (name, want) in [("image.mean", mean), ("image.std", std), ("image.min", min), ("image.max", max)] {
            let got = feature(name).unwrap_or_else(|| panic!("{name} missing: {:?}", record.features));
            assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "item {i} {name}: {got} vs {want}");
        }
    }
    let refused = &records[2];
    assert_eq!((refused.api.as_str(), refused.status), ("model_infer", RecordStatus::InvalidInput as i32));
    assert!(refused.output.as_ref().unwrap().is_null && refused.features[0].missing);
    server.shutdown().await.unwrap();
}

/// With `[capture]` on, a sample of the inspected images and every one going to a reviewer is
/// kept in the capture store under its content's sha256, and the prediction's record names it;
/// the rest are not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspections_capture_a_sample_and_every_review_item_and_their_records_name_it() {
    use sha2::Digest;
    use vigil_proto::vigil::v1::{Decision, InspectRequest};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("captures");
    let (server, emitter, mut bus) = capturing_server(dir.path(), 0.25).await;
    let (mut inspect, _) = clients(&server).await;
    let mut sent = std::collections::HashMap::new();
    for set in ["normal", "drifted"] {
        for (name, image) in samples(set) {
            let request = InspectRequest {
                image: image.clone(),
                station_id: "line-2".into(),
                part_id: name,
                ..Default::default()
            };
            let answer = inspect.inspect(request).await.unwrap().into_inner();
            sent.insert(answer.prediction_id, image);
        }
    }
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let mut records = Vec::new();
    while let Ok(envelope) = bus.try_recv() {
        records.push(PredictionRecord::decode(envelope.payload.as_slice()).unwrap());
    }
    assert_eq!(records.len(), sent.len());
    let captured: Vec<&PredictionRecord> = records.iter().filter(|r| !r.capture.is_empty()).collect();
    let reviews = records.iter().filter(|r| r.decision == Decision::HumanReview as i32).count();
    assert!(reviews > 0, "the drifted samples send some phones to a person");
    for r in &records {
        if r.decision == Decision::HumanReview as i32 {
            assert!(!r.capture.is_empty(), "review item {} not captured", r.prediction_id);
        }
    }
    assert!(captured.len() > reviews && captured.len() < records.len(), "{} of {}", captured.len(), records.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for r in captured {
        let image = &sent[&r.prediction_id];
        let sha: String = sha2::Sha256::digest(image).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r.capture, format!("{MODEL}/{sha}"));
        let path = store.join(&r.capture);
        while !path.is_file() {
            assert!(std::time::Instant::now() < deadline, "{} never stored", r.capture);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(&std::fs::read(&path).unwrap(), image, "the image as sent");
        let meta = store.join(format!("{MODEL}/predictions/{}.json", r.prediction_id));
        while !meta.is_file() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server.shutdown().await.unwrap();
}

/// Captures still queued when the server stops are written before it has stopped: every
/// captured record's input is in the store or the spool once `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_queued_at_shutdown_reach_the_spool_before_the_server_has_stopped() {
    use vigil_proto::vigil::v1::InspectRequest;
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("captures"), dir.path().join("spool"));
    let (server, emitter, mut bus) = capturing_server(dir.path(), 1.0).await;
    let (inspect, _) = clients(&server).await;
    let images: Vec<Vec<u8>> = ["normal", "drifted"].into_iter().flat_map(samples).map(|(_, image)| image).collect();
    let calls = images.into_iter().map(|image| {
        let mut inspect = inspect.clone();
        async move { inspect.inspect(InspectRequest { image, ..Default::default() }).await.unwrap() }
    });
    let answered = futures::future::join_all(calls).await;
    server.shutdown().await.unwrap();
    let mut kept = 0;
    for answer in &answered {
        let id = &answer.get_ref().prediction_id;
        let stored = store.join(format!("{MODEL}/predictions/{id}.json")).is_file();
        let spooled = spool.join(format!("{id}.json")).is_file();
        assert!(stored || spooled, "the capture of {id} was lost at shutdown");
        kept += 1;
    }
    assert!(emitter.drain(Duration::from_secs(10)).await);
    let mut captured = 0;
    while let Ok(envelope) = bus.try_recv() {
        captured += usize::from(!PredictionRecord::decode(envelope.payload.as_slice()).unwrap().capture.is_empty());
    }
    assert_eq!((kept, captured), (answered.len(), answered.len()), "every inspection captured and kept");
}

/// A server capturing `rate` of its inputs into `dir/captures` through the spool `dir/spool`,
/// its records on an in-process bus.
async fn capturing_server(
    dir: &std::path::Path,
    rate: f64,
) -> (vigil_edge::RunningServer, Emitter, tokio::sync::mpsc::Receiver<vigil_logbus::Envelope>) {
    let mut config = config();
    config.capture = toml::from_str(&format!(
        "enabled = true\nstore = \"{}\"\nspool = \"{}\"\nrate = {rate:?}\n",
        dir.join("captures").display(),
        dir.join("spool").display()
    ))
    .unwrap();
    let (sink, bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = Emitter::start(sink, 1_000, 100);
    let server = vigil_edge::start_with(config, false, Some(RecordEmitter::new(emitter.clone(), "edge-7")))
        .await
        .expect("edge server starts");
    (server, emitter, bus)
}
