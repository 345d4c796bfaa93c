//! vigil-logger's /metrics behind a token: without one it answers 401 and counts the refusal,
//! with an `analyst` token it serves the metrics (refusals included); /healthz stays open.

mod support;

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

use vigil_security::Scope;
use vigil_testkit::tls::ScopedTokens;

/// `GET path` over plain HTTP/1.1 with an optional bearer token: the status and the body.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
}

#[test]
fn metrics_need_an_analyst_token_and_refusals_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = ScopedTokens::write(dir.path());
    let config = dir.path().join("logger.toml");
    std::fs::write(
        &config,
        format!("[security.auth]\ntokens_file = {:?}\nopen_metrics = false\n", tokens.file.display().to_string()),
    )
    .unwrap();
    // No broker or database is needed for the metrics port: the pipeline keeps retrying.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil-logger"))
        .arg("--config")
        .arg(&config)
        .args(["--brokers", "127.0.0.1:9", "--database-url", "postgres://nobody@127.0.0.1:9/none"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr =
        line.split_once("(metrics on http://").and_then(|(_, r)| r.split_once("/metrics)")).unwrap().0.to_string();

    let (status, _) = get(&addr, "/metrics", None);
    assert_eq!(status, 401);
    let (status, _) = get(&addr, "/metrics", Some(tokens.all_but(Scope::Analyst)));
    assert_eq!(status, 403);
    let (status, body) = get(&addr, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = get(&addr, "/metrics", Some(tokens.only(Scope::Analyst)));
    assert_eq!(status, 200);
    let refusals =
        |reason: &str| support::sample(&body, "vigil_auth_refusals_total", &[("reason", reason), ("scope", "analyst")]);
    assert_eq!((refusals("missing"), refusals("scope")), (Some(1.0), Some(1.0)), "{body}");
    assert!(body.contains("vigil_logger_batches_total"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}
