//! The seed's pipeline-monitoring example: a user-profile model ("owns a car: no / unknown /
//! yes" from a 30-day clickstream) feeds a recommender (an offer per user), two stages of one
//! request joined by one trace id. Users visit, get an offer and sometimes click it (clicks sent
//! to the monitor's SubmitFeedback). Then the site's redesign loses the car tracking: the
//! profile's `unknown` share rises and fires its alarm on the first stage, and the offers'
//! click-through falls and fires its alarm on the second; neither fires before. Every answer is
//! checked against onnxruntime, and the alarms' values against the test's own counts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::views::Scope;
use vigil_monitor::{Catalog, MonitorConfig, Views};
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice};
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{FeedbackEvent, SubmitFeedbackRequest};
use vigil_serving::records::RecordEmitter;
use vigil_store::testing::TestDatabase;
use vigil_store::{AlertStore as _, PgStore, PredictionStore};
use vigil_testkit::training::{PipelinePhase, train_pipeline_model};

const USERS: usize = 300;
const OFFERS: [&str; 3] = ["car_insurance", "general_deals", "transit_pass"];

/// Waits for the next whole second (plus a margin) and returns it: phases start on rollup
/// window boundaries.
async fn next_second() -> DateTime<Utc> {
    let now = Utc::now();
    let next = DateTime::from_timestamp(now.timestamp() + 1, 0).unwrap();
    tokio::time::sleep((next - now).to_std().unwrap() + Duration::from_millis(20)).await;
    next
}

fn call(model: &str, input: &str, values: &[f32], trace_id: &str, stage: &str) -> ModelInferRequest {
    let parameter = |v: &str| InferParameter { parameter_choice: Some(ParameterChoice::StringParam(v.into())) };
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![1, values.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
        parameters: [("trace_id".to_string(), parameter(trace_id)), ("stage".to_string(), parameter(stage))].into(),
        ..Default::default()
    }
}

fn probabilities(response: &ModelInferResponse) -> Vec<f32> {
    response.raw_output_contents[0].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn prediction_id(response: &ModelInferResponse) -> String {
    match response.parameters["prediction_ids"].parameter_choice.clone() {
        Some(ParameterChoice::StringParam(id)) => id,
        other => panic!("{other:?}"),
    }
}

/// What one phase's users did: how many the profile called unknown, and how many clicked.
#[derive(Debug, Default)]
struct Visits {
    unknown: usize,
    clicks: usize,
}

/// Each user of `phase` visits: profile, then recommender fed the profile's probabilities, one
/// trace id; a user clicks the offer with the chance the data generator gives (seeded).
async fn visit(
    oip: &mut GrpcInferenceServiceClient<tonic::transport::Channel>,
    monitoring: &mut MonitoringClient<tonic::transport::Channel>,
    phase: &PipelinePhase,
    seed: &mut u64,
) -> Visits {
    let mut visits = Visits::default();
    let mut clicks = Vec::new();
    for (user, clickstream) in phase.inputs.iter().enumerate() {
        let trace = uuid::Uuid::now_v7().to_string();
        let profile = oip.model_infer(call("profile", "clickstream", clickstream, &trace, "profile")).await.unwrap();
        let profile = probabilities(&profile.into_inner());
        for (got, want) in profile.iter().zip(&phase.probabilities[user]) {
            assert!(
                (got - want).abs() < 1e-5,
                "user {user}: {profile:?} vs onnxruntime's {:?}",
                phase.probabilities[user]
            );
        }
        visits.unknown += usize::from(phase.label[user] == "unknown");
        let offer = oip.model_infer(call("recommender", "profile", &profile, &trace, "recommend")).await.unwrap();
        let offer = offer.into_inner();
        let scores = probabilities(&offer);
        let best = (0..3).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        // The click chances of vigil_data.clickstream.click_probability.
        let owns = phase.owns_car[user] == 1;
        let chance = match (OFFERS[best], owns) {
            ("car_insurance", true) | ("transit_pass", false) => 0.35,
            ("general_deals", _) => 0.06,
            _ => 0.02,
        };
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if ((*seed >> 11) as f64 / (1u64 << 53) as f64) < chance {
            visits.clicks += 1;
            clicks.push(FeedbackEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                prediction_id: prediction_id(&offer),
                kind: "click".into(),
                value: OFFERS[best].into(),
                session_id: format!("user-{user}"),
                ..Default::default()
            });
        }
    }
    // The last predictions may not be logged yet: those clicks are refused with "retry later".
    let (mut pending, mut accepted) = (clicks.clone(), 0);
    for _ in 0..100 {
        let answer = monitoring.submit_feedback(SubmitFeedbackRequest { events: pending.clone() }).await.unwrap();
        let answer = answer.into_inner();
        accepted += answer.accepted as usize;
        assert!(answer.rejected.iter().all(|r| r.reason.contains("retry later")), "{:?}", answer.rejected);
        pending = answer.rejected.iter().map(|r| pending[r.index as usize].clone()).collect();
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted, clicks.len(), "every click stored once");
    // Sent again (a retried request): stored once.
    let again = monitoring.submit_feedback(SubmitFeedbackRequest { events: clicks[..3].to_vec() }).await.unwrap();
    let again = again.into_inner();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    visits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_clickstream_fires_unknown_fraction_on_the_profile_and_click_through_on_the_recommender() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let users = train_pipeline_model(&repository, "profile", 1, USERS);
    train_pipeline_model(&repository, "recommender", 1, USERS);

    let (sink, receiver) = vigil_logbus::in_process::channel(8192);
    let (emitter, _emitting) = Emitter::start(sink, 8192, 16);
    let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
    tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, Arc::new(LoggerStats::default())));
    let mut config = CloudConfig { model_repository: repository.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.voice_search.catalog = vigil_testkit::speech::repo_root().join("deploy/catalog/products.csv");
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "web-1"))).await.unwrap();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();

    let monitor_config: MonitorConfig = toml::from_str(&format!(
        "models = \"{}\"\n[rollups]\nresolutions = [1, 60]\npoll = \"100ms\"\n",
        repository.display()
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let monitor = vigil_monitor::start(store.clone(), monitor_config.clone(), grpc, http).await.unwrap();
    let mut monitoring = MonitoringClient::connect(grpc_url).await.unwrap();

    // Normal visits, then visits after the redesign, each phase in whole seconds.
    let mut seed = 7u64;
    let b0 = next_second().await;
    let normal = visit(&mut oip, &mut monitoring, &users.normal, &mut seed).await;
    let b1 = next_second().await;
    let shifted = visit(&mut oip, &mut monitoring, &users.shifted, &mut seed).await;
    let b2 = next_second().await;

    // Feedback that cannot be stored is refused, one reason per event; nothing else is lost.
    // (A profile's prediction: a click on it counts for no rule below.)
    let known: String =
        sqlx::query_scalar("SELECT prediction_id::text FROM predictions WHERE model_name = 'profile' LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let event = |prediction_id: &str, kind: &str| FeedbackEvent {
        prediction_id: prediction_id.into(),
        kind: kind.into(),
        ..Default::default()
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let events =
        vec![event("nope", "click"), event(&unknown, "click"), event(&known, "Click!"), event(&known, "click")];
    let answer = monitoring.submit_feedback(SubmitFeedbackRequest { events }).await.unwrap().into_inner();
    let reasons: Vec<(u32, &str)> = answer.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!(answer.accepted, 1);
    assert!(reasons[0].1.contains("not a UUID") && reasons[1].1.contains("unknown prediction_id"), "{reasons:?}");
    assert!(reasons[2].0 == 2 && reasons[2].1.contains("lower-case"), "{reasons:?}");
    let empty = monitoring.submit_feedback(SubmitFeedbackRequest { events: Vec::new() }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    // Both stages of every visit under one trace id.
    let traces: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT trace_id, count(*), string_agg(model_name || ':' || stage, ',' ORDER BY stage) FROM predictions \
         GROUP BY trace_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(traces.len(), 2 * USERS, "one trace per visit");
    assert!(
        traces.iter().all(|(_, n, stages)| *n == 2 && stages == "profile:profile,recommender:recommend"),
        "{:?}",
        &traces[..3]
    );

    // Rolled up, then judged at the end of each phase over that phase.
    let views = Views::new(store.clone(), Arc::new(Catalog::load(&repository).unwrap()), Arc::new(monitor_config));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for model in ["profile", "recommender"] {
        let scope = Scope { model: model.into(), version: None, variant: None };
        while views.total(&scope, b0, b2).await.unwrap().count < 2 * USERS as u64 {
            assert!(std::time::Instant::now() < deadline, "{model}: rollups incomplete");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rules = |seconds: i64| -> MonitorConfig {
        toml::from_str(&format!(
            "[[alerting.rules]]\nname = \"unknown-fraction\"\nmetric = \"label.unknown.rate\"\nmodel = \"profile\"\n\
             window = \"{seconds}s\"\ncomparator = \">\"\nthreshold = 0.3\n\
             [[alerting.rules]]\nname = \"click-through\"\nmetric = \"feedback.click.rate\"\nmodel = \"recommender\"\n\
             window = \"{seconds}s\"\ncomparator = \"<\"\nthreshold = 0.2\n"
        ))
        .unwrap()
    };
    let (_, metrics) = vigil_monitor::telemetry::registry();
    let mut states = Vec::new();
    for (now, seconds) in [(b1, (b1 - b0).num_seconds()), (b2, (b2 - b1).num_seconds())] {
        let rules = rules(seconds).rules().unwrap();
        vigil_monitor::alarms::evaluate_all(&views, &rules, now, &metrics).await.unwrap();
        let alerts = store.load_alerts().await.unwrap();
        let state = |rule: &str| alerts.iter().find(|a| a.rule == rule).map(|a| (a.state.clone(), a.value));
        states.push((state("unknown-fraction"), state("click-through")));
    }
    let rate = |n: usize| Some(n as f64 / USERS as f64);
    let (before, after) = (&states[0], &states[1]);
    // Before the redesign neither rule holds (an alarm that never fired is not stored), and the
    // rollups count the normal phase's answers as the test did.
    assert!(before.0.is_none() && before.1.is_none(), "{states:?}");
    let profile = views.total(&Scope { model: "profile".into(), version: None, variant: None }, b0, b1).await.unwrap();
    assert_eq!((profile.count, profile.labels.get("unknown").copied()), (USERS as u64, Some(normal.unknown as u64)));
    let recommender = Scope { model: "recommender".into(), version: None, variant: None };
    let clicks: u64 =
        views.feedback(&recommender, b0, b1, 60).await.unwrap().values().filter_map(|k| k.get("click")).sum();
    assert_eq!(clicks, normal.clicks as u64);
    assert!(rate(normal.unknown) < Some(0.3) && rate(normal.clicks) > Some(0.2), "{normal:?}");
    assert_eq!(after.0.as_ref().map(|s| (s.0.as_str(), s.1)), Some(("firing", rate(shifted.unknown))), "{states:?}");
    assert_eq!(after.1.as_ref().map(|s| (s.0.as_str(), s.1)), Some(("firing", rate(shifted.clicks))), "{states:?}");
    println!(
        "unknown {:.3} -> {:.3}; click-through {:.3} -> {:.3}",
        rate(normal.unknown).unwrap(),
        rate(shifted.unknown).unwrap(),
        rate(normal.clicks).unwrap(),
        rate(shifted.clicks).unwrap()
    );
    monitor.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
