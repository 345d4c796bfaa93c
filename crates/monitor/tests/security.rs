//! The monitor secured: TLS on the gRPC and HTTP ports, tokens with scopes. Every gRPC method
//! (monitoring, prediction log, control plane, health, reflection) and every HTTP route
//! (pages, dashboard data, review queue, /metrics) refused without a token (UNAUTHENTICATED /
//! 401), refused for a token holding every scope but its own (PERMISSION_DENIED / 403), served
//! for a token holding only its own; a reviewer is the holder of the token.

use vigil_monitor::MonitorConfig;
use vigil_security::auth::{Access, AuthConfig, http_access};
use vigil_security::{Scope, SecurityConfig, TlsConfig};
use vigil_store::{PredictionStore, SqliteStore};
use vigil_testkit::tls::{ScopedTokens, TestCa, https};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_and_route_needs_its_scope() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let files = ca.server("monitor");
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut config = MonitorConfig { models, ..Default::default() };
    config.security = SecurityConfig {
        tls: Some(TlsConfig::new(&files.cert, &files.key)),
        auth: AuthConfig { tokens_file: Some(tokens.file.clone()), ..Default::default() },
        insecure: false,
    };
    let url = format!("sqlite://{}", ca.dir().join("monitor.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_port, http_port) = (grpc.local_addr().unwrap().port(), http.local_addr().unwrap().port());
    let monitor = vigil_monitor::start(store, config, grpc, http).await.unwrap();

    let mut methods: Vec<(String, bool)> = vigil_serving::admission::grpc_methods(vigil_proto::FILE_DESCRIPTOR_SET)
        .into_iter()
        .filter(|(path, _)| {
            ["Monitoring", "PredictionLog", "Control"].iter().any(|s| path.starts_with(&format!("/vigil.v1.{s}/")))
        })
        .collect();
    methods.extend(vigil_testkit::grpc::host_methods());
    assert_eq!(methods.len(), 12, "{methods:?}");
    let grpc_url = format!("https://localhost:{grpc_port}");
    let (missing, denied) = vigil_testkit::grpc::assert_scopes(&grpc_url, &ca.ca_pem, &tokens, &methods).await;
    assert_eq!((missing, denied), (10, 8), "health open, reflection any token");

    let routes = [
        ("GET", "/"),
        ("GET", "/auth.js"),
        ("GET", "/dashboard.js"),
        ("GET", "/review"),
        ("GET", "/healthz"),
        ("GET", "/api/models"),
        ("GET", "/api/dashboard?model=scratch-detector"),
        ("POST", "/api/review/next"),
        ("GET", "/api/review/0190c1e4-0000-7000-8000-000000000000/input"),
    ];
    for (method, path) in routes {
        let anonymous = https(http_port, method, path, &ca.ca_pem, None, "{}").await;
        let Access::Scope(scope) = http_access(path.split('?').next().unwrap()) else {
            assert!(anonymous.0 != 401 && anonymous.0 != 403, "{path}: open, got {anonymous:?}");
            continue;
        };
        assert_eq!(anonymous.0, 401, "{path}: no token");
        assert_eq!(
            https(http_port, method, path, &ca.ca_pem, Some(tokens.all_but(scope)), "{}").await.0,
            403,
            "{path}"
        );
        let served = https(http_port, method, path, &ca.ca_pem, Some(tokens.only(scope)), "{}").await;
        assert!(served.0 != 401 && served.0 != 403 && served.0 != 0, "{path}: {scope:?} alone, got {served:?}");
    }
    // /metrics is open unless configured otherwise, and counts the refusals of both ports.
    let (status, body) = https(http_port, "GET", "/metrics", &ca.ca_pem, None, "").await;
    assert_eq!(status, 200);
    let refused = |reason| vigil_telemetry::sample(&body, "vigil_auth_refusals_total", &[("reason", reason)]);
    assert_eq!(refused("missing"), Some(missing as f64 + 4.0));
    assert_eq!(refused("scope"), Some(denied as f64 + 4.0));

    // Decisions are recorded under the token's holder: another name is refused.
    let operator = Some(tokens.only(Scope::Operator));
    let claim = |body: &'static str| https(http_port, "POST", "/api/review/next", &ca.ca_pem, operator, body);
    let (status, answer) = claim(r#"{"reviewer": "mallory"}"#).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("not the holder of this token ('only-operator')"), "{answer}");
    assert_eq!(claim(r#"{"reviewer": "only-operator"}"#).await.0, 200);
    assert_eq!(claim("{}").await.0, 200, "the name comes from the token");
    monitor.shutdown().await.unwrap();
}
