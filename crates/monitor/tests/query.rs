//! QueryPredictions over real gRPC on loopback, against a fresh Postgres database.

use chrono::{Duration, Utc};
use tonic::Code;
use uuid::Uuid;
use vigil_proto::vigil::v1::prediction_log_client::PredictionLogClient;
use vigil_proto::vigil::v1::{Decision, QueryPredictionsRequest, Verdict};
use vigil_store::PredictionStore as _;
use vigil_store::testing::prediction;
use vigil_store::{LabelRow, PgStore, PredictionRow};

fn row(i: usize) -> PredictionRow {
    let features = serde_json::json!({ "brightness": 90.0 + i as f64, "image": null });
    PredictionRow {
        request_time: None,
        station_id: format!("line-{}", i % 2),
        output: serde_json::json!({ "label": "ok", "scores": [i as f64 / 10.0] }),
        queue_time_us: 1,
        compute_time_us: 1,
        ..prediction(Utc::now() - Duration::minutes(10 - i as i64), i as f32 / 10.0, features)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_predictions_filters_pages_and_refuses_bad_requests() {
    let db = vigil_store::testing::TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    store.migrate().await.unwrap();
    let rows: Vec<PredictionRow> = (0..10).map(row).collect();
    store.insert_predictions(&rows).await.unwrap();
    let label = LabelRow {
        label_id: Uuid::now_v7(),
        prediction_id: rows[8].prediction_id,
        label: "defect".into(),
        time: Utc::now(),
        source: "anna".into(),
    };
    store.insert_labels(&[label]).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vigil_monitor::serve(listener, store, async move {
        let _ = stopped.await;
    }));
    let mut client = PredictionLogClient::connect(format!("http://{addr}")).await.unwrap();

    let r = client
        .query_predictions(QueryPredictionsRequest {
            station_id: "line-0".into(),
            verdict: Verdict::Defect as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = r.predictions.iter().map(|p| p.prediction_id.clone()).collect();
    assert_eq!(ids, vec![rows[6].prediction_id.to_string(), rows[8].prediction_id.to_string()]);
    let p8 = &r.predictions[1];
    assert_eq!((p8.label.as_str(), p8.score, p8.decision), ("defect", Some(0.8), Decision::Reject as i32));
    assert_eq!(p8.features.get("brightness"), Some(&98.0));
    assert!(!p8.features.contains_key("image"), "missing features are absent");
    assert!(r.next_page_token.is_empty());

    // Pages of 3 walk every row once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .query_predictions(QueryPredictionsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.predictions.into_iter().map(|p| p.prediction_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, rows.iter().map(|r| r.prediction_id.to_string()).collect::<Vec<_>>());

    let r = client
        .query_predictions(QueryPredictionsRequest {
            min_score: Some(0.2),
            max_score: Some(0.4),
            has_label: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.predictions.len(), 3);

    for (bad, field) in [
        (QueryPredictionsRequest { page_size: 10_001, ..Default::default() }, "page_size"),
        (QueryPredictionsRequest { page_token: "not-a-token".into(), ..Default::default() }, "page_token"),
        (QueryPredictionsRequest { min_score: Some(1.0), max_score: Some(0.0), ..Default::default() }, "min_score"),
    ] {
        let status = client.query_predictions(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
