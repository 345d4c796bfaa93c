//! TLS and mutual TLS over real gRPC on loopback, with certificates from a CA made for the
//! test: the right CA connects, a wrong one is refused; under mutual TLS a client without a
//! certificate, or with one from another CA, is refused; a renewed certificate is served to new
//! connections without a restart while open connections keep going.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use vigil_security::{ClientSecurity, Security, SecurityConfig, TlsConfig};
use vigil_testkit::tls::{CertFiles, TestCa};

/// Serves the health service (all SERVING) over `security`'s TLS on a free port.
async fn serve(security: &Security) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, health) = tonic_health::server::health_reporter();
    let incoming = security.tls().expect("TLS on").grpc_incoming(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
    format!("https://localhost:{port}")
}

fn client(ca: &TestCa, cert: Option<&CertFiles>) -> ClientSecurity {
    ClientSecurity {
        ca_cert: Some(ca.ca_pem.clone()),
        client_cert: cert.map(|c| c.cert.clone()),
        client_key: cert.map(|c| c.key.clone()),
        ..Default::default()
    }
}

async fn check(client: &ClientSecurity, url: &str) -> Result<ServingStatus, String> {
    let channel = client.connect(url).await.map_err(|e| format!("{e:#}"))?;
    let mut health = HealthClient::new(channel);
    let reply = health.check(HealthCheckRequest { service: String::new() }).await.map_err(|e| e.to_string())?;
    Ok(reply.into_inner().status())
}

fn security(files: &CertFiles, client_ca: Option<&TestCa>, reload_ms: u64) -> Security {
    let mut tls = TlsConfig::new(&files.cert, &files.key);
    tls.client_ca = client_ca.map(|ca| ca.ca_pem.clone());
    tls.reload_interval_ms = reload_ms;
    Security::load(&SecurityConfig { tls: Some(tls), ..Default::default() }).unwrap()
}

#[tokio::test]
async fn the_right_ca_connects_and_a_wrong_one_is_refused() {
    let (ca, other) = (TestCa::new("plant"), TestCa::new("elsewhere"));
    let security = security(&ca.server("server"), None, 0);
    let url = serve(&security).await;
    assert_eq!(check(&client(&ca, None), &url).await.unwrap(), ServingStatus::Serving);
    let refused = check(&client(&other, None), &url).await.unwrap_err();
    assert!(refused.contains("cannot reach") || refused.contains("transport"), "{refused}");
    // Plaintext to a TLS port is no gRPC either.
    let plain = url.replace("https://", "http://");
    assert!(check(&ClientSecurity::default(), &plain).await.is_err());
    assert!(security.tls().unwrap().handshake_failures() >= 2, "the refused handshakes are counted");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let (ca, clients, other) = (TestCa::new("plant"), TestCa::new("line-clients"), TestCa::new("elsewhere"));
    let security = security(&ca.server("server"), Some(&clients), 0);
    let url = serve(&security).await;
    assert_eq!(check(&client(&ca, Some(&clients.client("line-3"))), &url).await.unwrap(), ServingStatus::Serving);
    assert!(check(&client(&ca, None), &url).await.is_err(), "no client certificate");
    assert!(check(&client(&ca, Some(&other.client("intruder"))), &url).await.is_err(), "a certificate from another CA");
    assert_eq!(security.tls().unwrap().handshake_failures(), 2);
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_and_open_ones_keep_going() {
    let (old, new) = (TestCa::new("old"), TestCa::new("new"));
    let files = old.server("server");
    let security = security(&files, None, 100);
    let url = serve(&security).await;
    let open = client(&old, None).connect(&url).await.unwrap();
    let mut health = HealthClient::new(open);
    health.check(HealthCheckRequest::default()).await.unwrap();

    // The certificate manager renews the files in place, now from another CA.
    let renewed = new.server("server");
    std::fs::copy(&renewed.key, files.key.with_extension("next")).unwrap();
    std::fs::rename(files.key.with_extension("next"), &files.key).unwrap();
    std::fs::copy(&renewed.cert, files.cert.with_extension("next")).unwrap();
    std::fs::rename(files.cert.with_extension("next"), &files.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(&client(&new, None), &url).await.is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(check(&client(&old, None), &url).await.is_err(), "new connections get the new certificate");
    // The connection opened before the renewal still answers (a reconnect would fail: the
    // client trusts only the old CA).
    for _ in 0..3 {
        health.check(HealthCheckRequest::default()).await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_or_mismatched_file_is_named() {
    let ca = TestCa::new("plant");
    let (a, b) = (ca.server("a"), ca.server("b"));
    let load = |cert: &std::path::Path, key: &std::path::Path| {
        let tls = TlsConfig::new(cert, key);
        Security::load(&SecurityConfig { tls: Some(tls), ..Default::default() }).map(|_| ()).unwrap_err().to_string()
    };
    let missing = ca.dir().join("missing.pem");
    assert!(load(&missing, &a.key).contains("tls.cert"), "{}", load(&missing, &a.key));
    let mismatched = load(&a.cert, &b.key);
    assert!(mismatched.contains("does not match"), "{mismatched}");
}
