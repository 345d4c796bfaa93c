//! Kafka over TLS with SCRAM-SHA-256 (and mutual TLS): vigil-edge produces and vigil-logger
//! consumes through a broker's `SASL_SSL` listener; wrong passwords, untrusted brokers,
//! plaintext clients and clients without a certificate are refused.

mod support;

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use support::*;
use vigil_logbus::kafka::{KafkaConfig, KafkaTls};
use vigil_proto::vigil::v1::InspectRequest;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_store::PgStore;
use vigil_store::PredictionStore as _;
use vigil_testkit::kafka::SecuredListener;
use vigil_testkit::tls::TestCa;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Reads the cluster's topics with `config`: the error, if the broker refuses the client.
fn metadata(config: &KafkaConfig) -> Result<Vec<String>, String> {
    let mut client = config.client_config().map_err(|e| e.to_string())?;
    // Fail fast on refusal: one connection attempt's worth of retries.
    client.set("socket.connection.setup.timeout.ms", "5000").set("reconnect.backoff.max.ms", "500");
    let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    consumer
        .fetch_metadata(None, Duration::from_secs(8))
        .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
        .map_err(|e| e.to_string())
}

async fn inspect_some(addr: std::net::SocketAddr, n: usize) {
    let image = std::fs::read(repo_root().join("samples/normal/normal_000_ok.png"))
        .or_else(|_| {
            let dir = repo_root().join("samples/normal");
            let first = std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).min().expect("a sample image");
            std::fs::read(first)
        })
        .unwrap();
    let mut client = InspectionClient::connect(format!("http://{addr}")).await.unwrap();
    for i in 0..n {
        let request = InspectRequest {
            image: image.clone(),
            station_id: "line-1".into(),
            part_id: format!("part-{i}"),
            ..Default::default()
        };
        client.inspect(request).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_travel_over_sasl_ssl_and_bad_clients_are_refused() {
    let ca = TestCa::new("kafka");
    let listener = SecuredListener::new(&ca, &[("edge", "edge-password"), ("logger", "logger-password")], false);
    let broker = Broker::start_secured(3, listener).await;
    let db = Database::create();

    // The password from a file, as deployments give it.
    let password_file = ca.dir().join("logger.password");
    std::fs::write(&password_file, "logger-password\n").unwrap();
    let mut logger_kafka = broker.secured_kafka("logger", "");
    if let Some(sasl) = logger_kafka.sasl.as_mut() {
        sasl.password = None;
        sasl.password_file = Some(password_file);
    }
    logger_kafka.validate().unwrap();
    let topics = metadata(&logger_kafka).expect("the logger's credentials are accepted");
    assert!(topics.iter().any(|t| t == vigil_logbus::topics::PREDICTIONS), "{topics:?}");

    let mut edge = vigil_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_repository: repo_root().join("models"),
        ..Default::default()
    };
    edge.logging.enabled = true;
    edge.logging.kafka = broker.secured_kafka("edge", "edge-password");
    let server = vigil_edge::start(edge, false).await.unwrap();
    let mut config = quick_config(String::new(), db.url());
    config.kafka = KafkaConfig { client_id: "vigil-logger".into(), ..logger_kafka };
    let logger = RunningLogger::start(config);

    const N: usize = 40;
    inspect_some(server.addr, N).await;
    let store = PgStore::connect_lazy(&db.url(), 2).unwrap();
    eventually(Duration::from_secs(90), "every record in Postgres", || async {
        store.count_predictions().await.unwrap_or(0) >= N as i64
    })
    .await;
    assert_eq!(store.count_predictions().await.unwrap(), N as i64);
    logger.stop().await;
    server.shutdown().await.unwrap();

    // A wrong password, a broker the client does not trust, a plaintext client on the
    // secured port: each refused.
    let wrong = broker.secured_kafka("edge", "not-the-password");
    // The same broker and user answered with the right password above.
    metadata(&wrong).expect_err("a wrong password is refused");
    let other_ca = TestCa::new("other");
    let mut untrusting = broker.secured_kafka("edge", "edge-password");
    untrusting.tls = Some(KafkaTls { ca_cert: Some(other_ca.ca_pem.clone()), ..Default::default() });
    metadata(&untrusting).expect_err("a broker certificate from another CA is refused");
    let plaintext = KafkaConfig { tls: None, sasl: None, ..broker.secured_kafka("edge", "edge-password") };
    metadata(&plaintext).expect_err("a plaintext client on the SASL_SSL port gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let ca = TestCa::new("kafka-mtls");
    let listener = SecuredListener::new(&ca, &[("edge", "edge-password")], true);
    let broker = Broker::start_secured(1, listener).await;

    let without = broker.secured_kafka("edge", "edge-password");
    metadata(&without).expect_err("no client certificate: refused");

    let other_ca = TestCa::new("other");
    let stranger = other_ca.client("edge");
    let mut foreign = broker.secured_kafka("edge", "edge-password");
    if let Some(tls) = foreign.tls.as_mut() {
        tls.client_cert = Some(stranger.cert);
        tls.client_key = Some(stranger.key);
    }
    metadata(&foreign).expect_err("a client certificate from another CA: refused");

    let own = ca.client("edge");
    let mut with = broker.secured_kafka("edge", "edge-password");
    if let Some(tls) = with.tls.as_mut() {
        tls.client_cert = Some(own.cert);
        tls.client_key = Some(own.key);
    }
    with.validate().unwrap();
    let topics = metadata(&with).expect("a client certificate from the CA and the right password");
    assert!(topics.iter().any(|t| t == vigil_logbus::topics::PREDICTIONS), "{topics:?}");
}
