//! `vigil` against a secured edge server (TLS with a CA made for the test, tokens): the line
//! client inspects with `--ca-cert` and `VIGIL_TOKEN`; without a token every image fails with
//! the server's reason; `vigil token new` makes what the tokens file needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use vigil_security::Scope;
use vigil_testkit::tls::{ScopedTokens, TestCa};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn vigil(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command.current_dir(root()).args(args).env_remove("VIGIL_TOKEN").env_remove("VIGIL_CA_CERT");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The shipped model on loopback over TLS with a certificate from `ca`, checking `tokens`;
/// /metrics on a free port when `metrics`.
fn secured_edge(ca: &TestCa, tokens: &ScopedTokens, metrics: bool) -> vigil_edge::EdgeConfig {
    let files = ca.server("edge");
    vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root().join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: metrics, listen: "127.0.0.1:0".parse().unwrap() },
        security: vigil_security::SecurityConfig {
            tls: Some(vigil_security::TlsConfig::new(&files.cert, &files.key)),
            auth: vigil_security::AuthConfig { tokens_file: Some(tokens.file.clone()), ..Default::default() },
            insecure: false,
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_client_inspects_over_tls_with_its_token() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let config = secured_edge(&ca, &tokens, false);
    let server = vigil_edge::start(config, false).await.unwrap();
    let url = format!("https://localhost:{}", server.addr.port());
    let ca_pem = ca.ca_pem.display().to_string();
    let images = ["samples/normal", "--server", &url, "--ca-cert", &ca_pem];
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        vigil(
            &["inspect", images[0], images[1], images[2], images[3], images[4]],
            &[("VIGIL_TOKEN", tokens.only(Scope::Infer))],
        )
    });
    assert!(matches!(code, Some(0 | 10 | 11)), "{code:?}\n{stdout}\n{stderr}");
    assert!(stdout.lines().filter(|l| l.contains(".png")).count() >= 8, "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");

    let (code, stdout, stderr) =
        tokio::task::block_in_place(|| vigil(&["inspect", images[0], images[1], images[2], images[3], images[4]], &[]));
    assert_eq!(code, Some(12), "{stdout}\n{stderr}");
    assert!(stdout.contains("missing bearer token"), "{stdout}");
    // Without the CA the server's certificate is not trusted.
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        vigil(&["inspect", "samples/normal", "--server", &url], &[("VIGIL_TOKEN", tokens.only(Scope::Infer))])
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach the edge server"), "{stderr}");
    server.shutdown().await.unwrap();
}

/// `vigil up` with a configuration that turns TLS and tokens on reaches its own server over
/// https, with the flags any command takes.
#[test]
fn up_with_tls_and_tokens_in_its_config_inspects_over_https() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let files = ca.server("edge");
    let config = ca.dir().join("edge.toml");
    let text = format!(
        "model_repository = {:?}\n[metrics]\nenabled = false\n[security.tls]\ncert = {:?}\nkey = {:?}\n\
         [security.auth]\ntokens_file = {:?}\n",
        root().join("models").display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
        tokens.file.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let db = ca.dir().join("vigil.db");
    let args = [
        "up",
        "--config",
        config.to_str().unwrap(),
        "--database",
        db.to_str().unwrap(),
        "--dashboard",
        "127.0.0.1:0",
        "--samples",
        "samples/normal",
    ];
    let ca_pem = ca.ca_pem.display().to_string();
    let (code, stdout, stderr) =
        vigil(&args, &[("VIGIL_CA_CERT", ca_pem.as_str()), ("VIGIL_TOKEN", tokens.only(Scope::Infer))]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("edge server listening on https://127.0.0.1:"), "{stderr}");
    let inspected = stdout.lines().filter(|l| l.contains(" p=")).count();
    assert!(inspected >= 8, "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains(&format!("{inspected} predictions logged")), "{stdout}");
    // Without the token the server refuses every image, with its reason.
    let db = ca.dir().join("other.db");
    let mut args = args;
    args[4] = db.to_str().unwrap();
    let (_, stdout, stderr) = vigil(&args, &[("VIGIL_CA_CERT", ca_pem.as_str())]);
    assert!(stdout.contains("missing bearer token"), "{stdout}\n{stderr}");
}

#[test]
fn token_new_prints_the_token_and_its_tokens_file_entry() {
    let (code, stdout, stderr) =
        vigil(&["token", "new", "--name", "line-3", "--scope", "infer", "--scope", "analyst"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.lines().next().unwrap();
    let hash: String = Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert!(stdout.contains(&format!("sha256 = \"{hash}\"")), "{stdout}");
    assert!(stdout.contains("scopes = [\"infer\", \"analyst\"]"), "{stdout}");
    let (code, _, stderr) = vigil(&["token", "new", "--name", "x", "--scope", "root"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown scope 'root'"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_for_a_secured_server_without_a_token() {
    let ca = TestCa::new("plant");
    let tokens = ScopedTokens::write(ca.dir());
    let config = secured_edge(&ca, &tokens, true);
    let server = vigil_edge::start(config, false).await.unwrap();
    let url = format!("https://localhost:{}", server.addr.port());
    let ca_cert = ca.ca_pem.display().to_string();

    let (code, out, err) = vigil(&["health", &url, "--ca-cert", &ca_cert], &[]);
    assert_eq!((code, out.trim()), (Some(0), "SERVING"), "{err}");
    // A probe inside a pod dials the loopback address and verifies the certificate's name.
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    let (code, out, _) = vigil(&["health", &by_ip, "--ca-cert", &ca_cert, "--tls-server-name", "localhost"], &[]);
    assert_eq!((code, out.trim()), (Some(0), "SERVING"));
    let (code, out, _) =
        vigil(&["health", &by_ip, "--tls-server-name", "edge.example"], &[("VIGIL_CA_CERT", &ca_cert)]);
    assert_eq!(code, Some(1), "a name the certificate does not carry is refused: {out}");
    let (code, out, _) =
        vigil(&["health", &url, "--service", "inference.GRPCInferenceService", "--ca-cert", &ca_cert], &[]);
    assert_eq!((code, out.trim()), (Some(0), "SERVING"));
    let (code, _, err) = vigil(&["health", &url, "--service", "no.such.Service", "--ca-cert", &ca_cert], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no service 'no.such.Service'"), "{err}");
    // Not trusting the server's CA: unreachable, exit 1.
    let (code, out, _) = vigil(&["health", &url], &[]);
    assert_eq!(code, Some(1));
    assert!(out.starts_with("UNREACHABLE"), "{out}");
    // The /metrics port's /healthz, over TLS too: --http takes plain http:// only.
    let metrics = server.metrics_addr.unwrap();
    let (code, _, err) = vigil(&["health", "--http", &format!("https://localhost:{}/healthz", metrics.port())], &[]);
    assert_eq!(code, Some(2), "{err}");
    server.shutdown().await.unwrap();
    // A stopped server: unreachable, exit 1.
    let (code, out, _) = vigil(&["health", &url, "--ca-cert", &ca_cert, "--timeout-ms", "500"], &[]);
    assert_eq!(code, Some(1));
    assert!(out.starts_with("UNREACHABLE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_plain_http_reads_healthz() {
    let config = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: root().join("models"),
        metrics: vigil_edge::MetricsConfig { enabled: true, listen: "127.0.0.1:0".parse().unwrap() },
        ..Default::default()
    };
    let server = vigil_edge::start(config, false).await.unwrap();
    let metrics = server.metrics_addr.unwrap();
    let (code, out, err) = vigil(&["health", "--http", &format!("http://{metrics}/healthz")], &[]);
    assert_eq!((code, out.trim()), (Some(0), "SERVING"), "{err}");
    let (code, out, _) = vigil(&["health", "--http", &format!("http://{metrics}/no-such-page")], &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("404"), "{out}");
    let (code, out, _) = vigil(&["health", &format!("http://{}", server.addr)], &[]);
    assert_eq!((code, out.trim()), (Some(0), "SERVING"));
    server.shutdown().await.unwrap();
}
