//! The seed's anti-spam example, rolled out by itself. vigil-cloud serves the spam filter
//! (scikit-learn, exported by skl2onnx) and follows the deployments in Postgres; its records go
//! through the logger's pipeline into the same database; the monitor rolls them up and its
//! controller steps a retrained version from a 1% canary of users (sticky by user id) through
//! 10% and 50% to everyone while users post. Then a version that flags every post is pushed
//! and rolled back in its 1% step with no person involved; posters never see an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use vigil_cloud::CloudConfig;
use vigil_inference::tensor::{parse_bytes_elements, serialize_bytes_elements};
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::MonitorConfig;
use vigil_monitor::rollout;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{InferParameter, ModelInferRequest, infer_parameter::ParameterChoice};
use vigil_serving::records::RecordEmitter;
use vigil_store::registry::sha256_file;
use vigil_store::testing::{TestDatabase, candidate_version, single_deployment};
use vigil_store::{
    Change, DeploymentStore, PgStore, PredictionStore, RegistryStore, RolloutRow, RolloutStep, RolloutStore, StepMode,
};
use vigil_testkit::training::train_spam_filter;

const MODEL: &str = "spam-filter";
const USERS: u64 = 5_000;

/// 1% of users, then 10%, 50% and all: each step at least 2 s and 30 of the candidate's answers.
fn plan() -> Vec<RolloutStep> {
    let step = |share| RolloutStep {
        share,
        mode: StepMode::Canary,
        min_duration_s: 2,
        min_requests: 30,
        max_duration_s: Some(90),
    };
    vec![step(0.01), step(0.1), step(0.5), step(1.0)]
}

/// One post by `user`, keyed by the user for the canary.
fn post(text: &str, user: &str) -> ModelInferRequest {
    let key = InferParameter { parameter_choice: Some(ParameterChoice::StringParam(user.into())) };
    ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1, 1],
            ..Default::default()
        }],
        raw_input_contents: vec![serialize_bytes_elements(&[text])],
        parameters: [("routing_key".to_string(), key)].into(),
        ..Default::default()
    }
}

/// What the posters saw while one rollout ran: per user, the versions that answered them in
/// order, each with the step the rollout was at when the poster last looked.
struct Seen {
    rollout: RolloutRow,
    answers: HashMap<String, Vec<(String, i32)>>,
    posts: usize,
}

/// Users post (8 at a time, users drawn at random from `USERS`) until the rollout of
/// `candidate` ends; every post must be answered.
async fn post_until_done(
    store: &PgStore,
    oip: &GrpcInferenceServiceClient<tonic::transport::Channel>,
    texts: &[String],
    candidate: &str,
) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut answers: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut posts = 0usize;
    loop {
        let rollout = store.rollouts(Some(MODEL)).await.unwrap().remove(0);
        assert_eq!(rollout.candidate_version, candidate);
        if !rollout.is_active() {
            return Seen { rollout, answers, posts };
        }
        assert!(
            Instant::now() < deadline,
            "rollout still {} at step {}: {}",
            rollout.state,
            rollout.step,
            rollout.history
        );
        let round: Vec<(String, &String)> = (0..64)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (format!("user-{}", (seed >> 33) % USERS), &texts[(seed >> 17) as usize % texts.len()])
            })
            .collect();
        let mut replies = futures::stream::iter(round.into_iter().map(|(user, text)| {
            let mut oip = oip.clone();
            async move {
                let reply = oip.model_infer(post(text, &user)).await.expect("every post is answered").into_inner();
                (user, reply)
            }
        }))
        .buffer_unordered(8);
        while let Some((user, reply)) = replies.next().await {
            let label = parse_bytes_elements(&reply.raw_output_contents[1]).unwrap();
            assert!(matches!(label[0], b"ham" | b"spam"), "{reply:?}");
            answers.entry(user).or_default().push((reply.model_version, rollout.step));
            posts += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrained_filter_goes_from_one_percent_of_users_to_all_and_one_that_flags_everything_is_rolled_back() {
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 8).unwrap();
    store.migrate().await.unwrap();

    // Version 1 in service; version 2 retrained on new posts; version 3 flags every post.
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let check = train_spam_filter(&repository, 1, "good", 7);
    train_spam_filter(&repository, 2, "good", 8);
    train_spam_filter(&repository, 3, "all-spam", 9);
    for version in ["1", "2", "3"] {
        let digest = sha256_file(&repository.join(MODEL).join(version).join("model.onnx")).unwrap();
        store.register_version(&candidate_version(MODEL, version, &digest), "").await.unwrap();
    }
    let by_anna = Change { actor: "anna", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&single_deployment(MODEL, "spam-1", "1"), &by_anna).await.unwrap();

    // vigil-cloud following the deployments; its records into Postgres through the logger.
    let (sink, receiver) = vigil_logbus::in_process::channel(65_536);
    let (emitter, _emitting) = Emitter::start(sink, 65_536, 64);
    let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
    tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, Arc::new(LoggerStats::default())));
    let mut config = CloudConfig { model_repository: repository.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.load_all_versions = true;
    config.deployments.database_url = db.url();
    config.deployments.poll_interval_ms = 100;
    config.voice_search.catalog = vigil_testkit::speech::repo_root().join("deploy/catalog/products.csv");
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-1"))).await.unwrap();
    let oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();

    // The monitor: rollups every 100 ms, the controller every 300 ms.
    let monitor_config: MonitorConfig = toml::from_str(&format!(
        "models = \"{}\"\n[rollups]\nresolutions = [1, 60]\npoll = \"100ms\"\n[alerting]\nevaluate_every = \"200ms\"\n\
         [rollouts]\nevaluate_every = \"300ms\"\n",
        repository.display()
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor = vigil_monitor::start(store.clone(), monitor_config, grpc, http).await.unwrap();

    // Version 2: promoted through every step with no person.
    let by_anna = Change { actor: "anna", reason: "retrained on last month's posts", at: chrono::Utc::now() };
    rollout::start(&store, MODEL, "2", &plan(), &by_anna).await.unwrap();
    let seen = post_until_done(&store, &oip, &check.texts, "2").await;
    assert_eq!(seen.rollout.state, "promoted", "{}", seen.rollout.history);
    let decisions: Vec<String> =
        seen.rollout.decisions().iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["next_step", "next_step", "next_step", "promote"]);
    // Sticky by user: once version 2 answers a user, version 1 never answers them again.
    for (user, versions) in &seen.answers {
        let first_new = versions.iter().position(|(v, _)| v == "2").unwrap_or(versions.len());
        assert!(versions[first_new..].iter().all(|(v, _)| v == "2"), "{user} went back to version 1: {versions:?}");
    }
    // About 1% of the users who posted in the first step had version 2.
    let first_step: HashMap<&String, bool> = seen
        .answers
        .iter()
        .filter_map(|(user, versions)| {
            let in_step: Vec<&(String, i32)> = versions.iter().filter(|(_, step)| *step == 0).collect();
            (!in_step.is_empty()).then(|| (user, in_step.iter().any(|(v, _)| v == "2")))
        })
        .collect();
    let share = first_step.values().filter(|&&new| new).count() as f64 / first_step.len() as f64;
    assert!((0.003..0.03).contains(&share), "{share} of {} users on the 1% canary", first_step.len());
    println!("{} posts during the first rollout; {share:.4} of the first step's users on the canary", seen.posts);

    // Version 3 flags everything: rolled back at 1%, on its score distribution and its answers.
    let by_ben = Change { actor: "ben", reason: "aggressive threshold", at: chrono::Utc::now() };
    rollout::start(&store, MODEL, "3", &plan(), &by_ben).await.unwrap();
    let seen = post_until_done(&store, &oip, &check.texts, "3").await;
    assert_eq!((seen.rollout.state.as_str(), seen.rollout.step), ("rolled_back", 0), "{}", seen.rollout.history);
    let failed = rollout::failed_checks(&seen.rollout, 0);
    assert!(failed.contains(&"score_ks".to_string()), "{failed:?}");
    let deployment = store.deployments().await.unwrap().remove(0);
    assert_eq!((deployment.mode.as_str(), deployment.primary_version.as_str()), ("single", "2"));
    let audit = store.audit_events(100).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == rollout::CONTROLLER && e.reason.contains("score_ks")), "{audit:?}");
    let users_on_3: usize = seen.answers.values().filter(|v| v.iter().any(|(version, _)| version == "3")).count();
    assert!(users_on_3 * 20 < seen.answers.len(), "{users_on_3} of {} users saw version 3", seen.answers.len());

    monitor.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
