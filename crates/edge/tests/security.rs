//! The edge server secured: TLS on both ports with the project's test CA, tokens with scopes.
//! Every method the server serves (OIP, inspection, health, reflection), called with no token,
//! with a token holding every scope but the one it needs, and with a token holding only that
//! one: UNAUTHENTICATED, PERMISSION_DENIED, served; each refusal counted in /metrics. Plaintext
//! beyond loopback is refused unless allowed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tonic::Code;
use vigil_security::auth::{self, Access, AuthConfig, Scope};
use vigil_security::{ClientSecurity, SecurityConfig, TlsConfig};
use vigil_testkit::tls::TestCa;

/// One token per scope alone (`only-<scope>`) and one per scope holding all the others
/// (`all-but-<scope>`), written to a tokens file; the tokens by name.
fn tokens(dir: &Path) -> (std::path::PathBuf, BTreeMap<String, String>) {
    let mut file = String::new();
    let mut tokens = BTreeMap::new();
    for scope in Scope::ALL {
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != scope).collect();
        for (name, scopes) in
            [(format!("only-{}", scope.name()), vec![scope]), (format!("all-but-{}", scope.name()), others)]
        {
            let (token, hash) = auth::new_token();
            let scopes = scopes.iter().map(|s| format!("\"{}\"", s.name())).collect::<Vec<_>>().join(", ");
            file.push_str(&format!("[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n"));
            tokens.insert(name, token);
        }
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, file).unwrap();
    (path, tokens)
}

fn served_methods() -> Vec<(String, bool)> {
    let mut methods: Vec<(String, bool)> = vigil_serving::admission::grpc_methods(vigil_proto::FILE_DESCRIPTOR_SET)
        .into_iter()
        .filter(|(path, _)| {
            path.starts_with("/inference.GRPCInferenceService/") || path.starts_with("/vigil.v1.Inspection/")
        })
        .collect();
    methods.extend([
        ("/grpc.health.v1.Health/Check".to_string(), false),
        ("/grpc.health.v1.Health/Watch".to_string(), true),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(), true),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(), true),
    ]);
    methods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_its_scope_over_tls_and_refusals_are_counted() {
    let ca = TestCa::new("plant");
    let files = ca.server("edge");
    let (tokens_file, tokens) = tokens(ca.dir());
    let mut config = config();
    config.security = SecurityConfig {
        tls: Some(TlsConfig::new(&files.cert, &files.key)),
        auth: AuthConfig { tokens_file: Some(tokens_file), ..Default::default() },
        insecure: false,
    };
    let server = start(config).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let client = |token: Option<&String>| ClientSecurity {
        ca_cert: Some(ca.ca_pem.clone()),
        token: token.cloned(),
        ..Default::default()
    };
    let (none, mut missing, mut denied) = (client(None).connect(&url).await.unwrap(), 0u64, 0u64);
    let methods = served_methods();
    assert!(methods.len() >= 17, "{methods:?}");
    for (path, streaming) in &methods {
        let access = auth::grpc_access(path);
        let refused = |r: &Result<(), tonic::Status>, code| matches!(r, Err(s) if s.code() == code);
        let anonymous = vigil_testkit::grpc::call_empty(none.clone(), path, *streaming).await;
        match access {
            Access::Open => assert!(!refused(&anonymous, Code::Unauthenticated), "{path}: open, got {anonymous:?}"),
            _ => {
                assert!(refused(&anonymous, Code::Unauthenticated), "{path}: no token, got {anonymous:?}");
                missing += 1;
            }
        }
        let Access::Scope(scope) = access else { continue };
        let wrong = client(tokens.get(&format!("all-but-{}", scope.name()))).connect(&url).await.unwrap();
        let result = vigil_testkit::grpc::call_empty(wrong, path, *streaming).await;
        assert!(refused(&result, Code::PermissionDenied), "{path}: every scope but {scope:?}, got {result:?}");
        denied += 1;
        let right = client(tokens.get(&format!("only-{}", scope.name()))).connect(&url).await.unwrap();
        let result = vigil_testkit::grpc::call_empty(right, path, *streaming).await;
        assert!(
            !refused(&result, Code::Unauthenticated) && !refused(&result, Code::PermissionDenied),
            "{path}: {scope:?}, got {result:?}"
        );
    }
    // Reflection takes any valid token.
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let any = client(tokens.get("only-control")).connect(&url).await.unwrap();
    assert!(vigil_testkit::grpc::call_empty(any, reflection, true).await.is_ok());
    // A real call with the line's token is answered as without security.
    let mut inspect = vigil_proto::vigil::v1::inspection_client::InspectionClient::new(
        client(tokens.get("only-infer")).connect(&url).await.unwrap(),
    );
    let image = samples("normal").remove(0).1;
    let verdict = inspect
        .inspect(vigil_proto::vigil::v1::InspectRequest { image, station_id: "line-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.model_name, MODEL);

    // /metrics over TLS, open by default; each refusal counted by reason.
    let port = server.metrics_addr.unwrap().port();
    let (status, body) = vigil_testkit::tls::https(port, "GET", "/metrics", &ca.ca_pem, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "missing")]), Some(missing as f64));
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "scope")]), Some(denied as f64));
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[("reason", "scope"), ("scope", "admin")]), Some(2.0));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_need_a_token_and_plaintext_beyond_loopback_needs_insecure() {
    let ca = TestCa::new("plant");
    let files = ca.server("edge");
    let (tokens_file, tokens) = tokens(ca.dir());
    let mut config = config();
    config.security.tls = Some(TlsConfig::new(&files.cert, &files.key));
    config.security.auth = AuthConfig { tokens_file: Some(tokens_file), open_metrics: false, ..Default::default() };
    let server = start(config).await;
    let port = server.metrics_addr.unwrap().port();
    assert_eq!(vigil_testkit::tls::https(port, "GET", "/metrics", &ca.ca_pem, None).await.0, 401);
    let infer = tokens.get("only-infer").map(String::as_str);
    assert_eq!(vigil_testkit::tls::https(port, "GET", "/metrics", &ca.ca_pem, infer).await.0, 403);
    let analyst = tokens.get("only-analyst").map(String::as_str);
    let (status, body) = vigil_testkit::tls::https(port, "GET", "/metrics", &ca.ca_pem, analyst).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "vigil_auth_refusals_total", &[]), Some(2.0), "the two refused scrapes");
    server.shutdown().await.unwrap();

    let mut open = config_beyond_loopback();
    let refused = vigil_edge::start(open.clone(), false).await.err().expect("plaintext on 0.0.0.0 is refused");
    assert!(format!("{refused:#}").contains("refusing plaintext on 0.0.0.0"), "{refused:#}");
    open.security.insecure = true;
    let server = vigil_edge::start(open, false).await.expect("allowed with insecure = true");
    server.shutdown().await.unwrap();
}

fn config_beyond_loopback() -> vigil_edge::EdgeConfig {
    let mut config = config();
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.metrics.enabled = false;
    config
}
