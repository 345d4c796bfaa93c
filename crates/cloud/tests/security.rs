//! The cloud server secured: TLS with the project's test CA and tokens with scopes. Every
//! method it serves (OIP, voice search, health, reflection) called with no token, with a token
//! holding every scope but the one it needs, and with one holding only that one:
//! UNAUTHENTICATED, PERMISSION_DENIED, served. A voice query is answered with the `infer` token,
//! and a query stream left open ends once that token is revoked.

use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use vigil_cloud::CloudConfig;
use vigil_proto::vigil::v1::voice_search_client::VoiceSearchClient;
use vigil_proto::vigil::v1::{SearchConfig, SearchRequest, SpeechSegment, search_request, search_response};
use vigil_security::auth::{AuthConfig, new_token, token_entry};
use vigil_security::{ClientSecurity, Scope, SecurityConfig, TlsConfig};
use vigil_testkit::speech::{self as voices, ADULT};
use vigil_testkit::tls::{ScopedTokens, TestCa};

fn secured(ca: &TestCa, tokens: &ScopedTokens) -> CloudConfig {
    let models = voices::cloud_models();
    let mut config = CloudConfig { model_repository: models, ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = voices::repo_root().join("deploy/catalog/products.csv");
    let files = ca.server("cloud");
    config.security = SecurityConfig {
        tls: Some(TlsConfig::new(&files.cert, &files.key)),
        auth: AuthConfig { tokens_file: Some(tokens.file.clone()), reload_interval_ms: 100, ..Default::default() },
        insecure: false,
    };
    config
}

fn messages(speech: &[f32]) -> Vec<SearchRequest> {
    let config = SearchConfig { language: "en".into(), sample_rate: 16_000, ..Default::default() };
    let segment = SpeechSegment { sequence: 0, pcm16: vigil_speech::audio::f32_to_pcm16(speech), ..Default::default() };
    vec![
        SearchRequest { message: Some(search_request::Message::Config(config)) },
        SearchRequest { message: Some(search_request::Message::Segment(segment)) },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_its_scope_and_a_revoked_token_ends_an_open_query() {
    let ca = TestCa::new("cloud");
    let tokens = ScopedTokens::write(ca.dir());
    let server = vigil_cloud::start(secured(&ca, &tokens), false, None).await.unwrap();
    let url = format!("https://localhost:{}", server.addr.port());
    let mut methods: Vec<(String, bool)> = vigil_serving::admission::grpc_methods(vigil_proto::FILE_DESCRIPTOR_SET)
        .into_iter()
        .filter(|(path, _)| {
            path.starts_with("/inference.GRPCInferenceService/") || path.starts_with("/vigil.v1.VoiceSearch/")
        })
        .collect();
    methods.extend(vigil_testkit::grpc::host_methods());
    assert_eq!(methods.len(), 18, "{methods:?}");
    let (missing, denied) = vigil_testkit::grpc::assert_scopes(&url, &ca.ca_pem, &tokens, &methods).await;
    assert_eq!(
        (missing, denied),
        (14, 12),
        "every method but health and the OIP liveness probes; reflection with any token"
    );

    // A spoken query with the phone's token is answered; a second one is left open.
    let phone = ClientSecurity {
        ca_cert: Some(ca.ca_pem.clone()),
        token: Some(tokens.only(Scope::Infer).into()),
        ..Default::default()
    };
    let mut client = VoiceSearchClient::new(phone.connect(&url).await.unwrap());
    let speech = voices::say("red running shoes", ADULT);
    let mut answers = client.search(tokio_stream::iter(messages(&speech))).await.unwrap().into_inner();
    let mut last = None;
    while let Some(answer) = answers.message().await.unwrap() {
        last = answer.message;
    }
    let Some(search_response::Message::Result(result)) = last else { panic!("no result: {last:?}") };
    assert!(!result.transcript.is_empty(), "{result:?}");
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    for message in messages(&speech) {
        sender.send(message).await.unwrap();
    }
    let mut open = client.search(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    let first = open.message().await.unwrap().unwrap();
    assert!(matches!(first.message, Some(search_response::Message::Segment(_))), "{first:?}");
    let (_, hash) = new_token();
    std::fs::write(&tokens.file, token_entry("someone-else", &hash, &[Scope::Infer])).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), open.message()).await.expect("ended by the server");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    drop(sender);
    server.shutdown().await.unwrap();
}
