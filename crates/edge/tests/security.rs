//! The edge server secured: TLS on both ports with the project's test CA, tokens with scopes.
//! Every method the server serves (OIP, inspection, health, reflection), called with no token,
//! with a token holding every scope but the one it needs, and with a token holding only that
//! one: UNAUTHENTICATED, PERMISSION_DENIED, served; each refusal counted in /metrics. Plaintext
//! beyond loopback is refused unless allowed.

mod common;

use common::*;
use vigil_security::auth::AuthConfig;
use vigil_security::{ClientSecurity, Scope, SecurityConfig, TlsConfig};
use vigil_testkit::tls::{ScopedTokens, TestCa, https};

fn secured(ca: &TestCa, tokens: &ScopedTokens, open_metrics: bool) -> vigil_edge::EdgeConfig {
    let files = ca.server("edge");
    let mut config = config();
    config.security = SecurityConfig {
        tls: Some(TlsConfig::new(&files.cert, &files.key)),
        auth: AuthConfig { tokens_file: Some(tokens.file.clone()), open_metrics, ..Default::default() },
        insecure: false,
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_its_scope_over_tls_and_refusals_are_counted() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let server = start(secured(&ca, &tokens, true)).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let mut methods: Vec<(String, bool)> = vigil_serving::admission::grpc_methods(vigil_proto::FILE_DESCRIPTOR_SET)
        .into_iter()
        .filter(|(path, _)| {
            path.starts_with("/inference.GRPCInferenceService/") || path.starts_with("/vigil.v1.Inspection/")
        })
        .collect();
    methods.extend(vigil_testkit::grpc::host_methods());
    assert_eq!(methods.len(), 18, "{methods:?}");
    let (missing, denied) = vigil_testkit::grpc::assert_scopes(&url, &ca.ca_pem, &tokens, &methods).await;

    // A real call with the line's token is answered as without security.
    let line = ClientSecurity {
        ca_cert: Some(ca.ca_pem.clone()),
        token: Some(tokens.only(Scope::Infer).into()),
        ..Default::default()
    };
    let mut inspect =
        vigil_proto::vigil::v1::inspection_client::InspectionClient::new(line.connect(&url).await.unwrap());
    let image = samples("normal").remove(0).1;
    let request = vigil_proto::vigil::v1::InspectRequest { image, station_id: "line-1".into(), ..Default::default() };
    assert_eq!(inspect.inspect(request).await.unwrap().into_inner().model_name, MODEL);

    // /metrics over TLS, open by default; each refusal counted by reason.
    let port = server.metrics_addr.unwrap().port();
    let (status, body) = https(port, "GET", "/metrics", &ca.ca_pem, None, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "missing")]), Some(missing as f64));
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "scope")]), Some(denied as f64));
    let admin_methods = 2.0; // RepositoryModelLoad and Unload
    assert_eq!(
        sample(&body, "vigil_auth_refusals_total", &[("reason", "scope"), ("scope", "admin")]),
        Some(admin_methods)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_need_a_token_and_plaintext_beyond_loopback_needs_insecure() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let server = start(secured(&ca, &tokens, false)).await;
    let port = server.metrics_addr.unwrap().port();
    assert_eq!(https(port, "GET", "/metrics", &ca.ca_pem, None, "").await.0, 401);
    assert_eq!(https(port, "GET", "/metrics", &ca.ca_pem, Some(tokens.all_but(Scope::Analyst)), "").await.0, 403);
    let (status, body) = https(port, "GET", "/metrics", &ca.ca_pem, Some(tokens.only(Scope::Analyst)), "").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[]), Some(2.0), "the two refused scrapes");
    server.shutdown().await.unwrap();

    let mut open = config();
    open.listen = "0.0.0.0:0".parse().unwrap();
    open.metrics.enabled = false;
    let refused = vigil_edge::start(open.clone(), false).await.err().expect("plaintext on 0.0.0.0 is refused");
    assert!(format!("{refused:#}").contains("refusing plaintext on 0.0.0.0"), "{refused:#}");
    open.security.insecure = true;
    let server = vigil_edge::start(open, false).await.expect("allowed with insecure = true");
    server.shutdown().await.unwrap();
}

/// A line's stream lasts as long as the line runs: a token taken out of the tokens file (or its
/// scope taken away) ends it within a re-check, without the client sending anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_stream_ends_when_its_token_is_revoked() {
    use std::time::Duration;
    use tokio_stream::StreamExt as _;
    use tonic::Code;
    use vigil_proto::vigil::v1::InspectRequest;
    use vigil_security::auth::{new_token, token_entry};
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let mut config = secured(&ca, &tokens, true);
    config.security.auth.reload_interval_ms = 100;
    let server = start(config).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let mut streams = Vec::new();
    let kept = tokens.all_but(Scope::Control);
    for token in [tokens.only(Scope::Infer), tokens.all_but(Scope::Admin), kept] {
        let line = ClientSecurity { ca_cert: Some(ca.ca_pem.clone()), token: Some(token.into()), ..Default::default() };
        let mut inspect =
            vigil_proto::vigil::v1::inspection_client::InspectionClient::new(line.connect(&url).await.unwrap());
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let request = InspectRequest { image: samples("normal").remove(0).1, ..Default::default() };
        sender.send(request).await.unwrap();
        let mut responses =
            inspect.inspect_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.unwrap().into_inner();
        assert!(responses.next().await.unwrap().unwrap().result.is_some(), "served before the change");
        streams.push((sender, responses));
    }
    // The file now holds another token, the second one without `infer`, the third as it was.
    let (_, hash) = new_token();
    let mut text = token_entry("someone-else", &hash, &[Scope::Infer]);
    let second = vigil_security::auth::token_hash(tokens.all_but(Scope::Admin));
    text.push_str(&token_entry("all-but-admin", &second, &[Scope::Analyst]));
    text.push_str(&token_entry("all-but-control", &vigil_security::auth::token_hash(kept), &[Scope::Infer]));
    std::fs::write(&tokens.file, text).unwrap();
    let (kept_sender, mut kept_responses) = streams.pop().unwrap();
    for ((sender, mut responses), (code, says)) in streams
        .into_iter()
        .zip([(Code::Unauthenticated, "invalid token"), (Code::PermissionDenied, "lacks the 'infer'")])
    {
        let end = tokio::time::timeout(Duration::from_secs(30), responses.next()).await.expect("ended by the server");
        let status = end.expect("a status").unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{}", status.message());
        drop(sender);
    }
    // The stream whose token still passes went through the same re-checks and is served.
    let request = InspectRequest { image: samples("normal").remove(0).1, ..Default::default() };
    kept_sender.send(request).await.unwrap();
    assert!(kept_responses.next().await.unwrap().unwrap().result.is_some(), "served after the re-checks");
    let port = server.metrics_addr.unwrap().port();
    let (_, body) = https(port, "GET", "/metrics", &ca.ca_pem, None, "").await;
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "revoked")]), Some(2.0), "{body}");
    drop(kept_sender);
    server.shutdown().await.unwrap();
}
