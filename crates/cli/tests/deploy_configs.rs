//! The configuration files shipped for Kubernetes (`deploy/k8s/overlays/*/config`) load into
//! the services' configuration types, key by key (a misspelt key is refused), with the values
//! the manifests rely on; files they name (certificates, secrets) exist only in the cluster, so
//! checks that open files are left to the servers' start.

use std::path::{Path, PathBuf};

use vigil_server::cli::{ServerConfig, layered};

fn k8s(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/overlays").join(file)
}

fn load<T: ServerConfig>(file: &str) -> T {
    layered(T::default(), Some(&k8s(file)), &[]).extract().unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn edge_and_cloud_files_load_with_tls_tokens_and_secured_kafka() {
    let edge: vigil_edge::EdgeConfig = load("edge/config/edge.toml");
    assert_eq!(edge.listen.port(), 8001);
    assert!(edge.security.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "mutual TLS at the line");
    let kafka = &edge.logging.kafka;
    assert!(kafka.tls.is_some() && kafka.sasl.is_some() && !kafka.topics.create);
    assert!(edge.logging.spool.is_some(), "the factory box spools while the uplink is down");
    edge.logging.policy.load().unwrap();

    let cloud: vigil_cloud::CloudConfig = load("cloud/config/cloud.toml");
    assert_eq!(cloud.listen.port(), 8010);
    assert!(cloud.security.tls.is_some() && cloud.security.auth.tokens_file.is_some());
    assert!(cloud.logging.kafka.tls.is_some() && cloud.logging.kafka.sasl.is_some());
}

#[test]
fn logger_and_monitor_files_load() {
    let text = std::fs::read_to_string(k8s("cloud/config/logger.toml")).unwrap();
    let logger: vigil_logger::LoggerConfig =
        figment::Figment::from(figment::providers::Serialized::defaults(vigil_logger::LoggerConfig::default()))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&text))
            .extract()
            .unwrap();
    assert!(!logger.migrate, "the migrate Job applies them");
    assert!(logger.kafka.tls.is_some() && logger.kafka.sasl.is_some());

    let monitor = vigil_monitor::MonitorConfig::load(&k8s("cloud/config/monitor.toml")).unwrap();
    assert!(!monitor.rules().unwrap().is_empty());
    assert_eq!(monitor.retraining.runner, vigil_monitor::retrain::RunnerPlace::External);
    assert!(monitor.retention.predictions_days.is_some());
}
