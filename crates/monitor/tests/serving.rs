//! The monitor's gRPC APIs as a server: the request limits every server has, and a drain that
//! ends the streams lasting as long as their clients' connections (health watches, the
//! servers' deployment watches) instead of waiting the drain timeout out for them.

use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vigil_monitor::MonitorConfig;
use vigil_proto::vigil::v1::control_client::ControlClient;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{GetMetricsRequest, Scope, WatchDeploymentsRequest};
use vigil_store::{PredictionStore as _, SqliteStore};

struct Monitor {
    addr: std::net::SocketAddr,
    http: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(config: MonitorConfig) -> Monitor {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vigil.db")).await.unwrap();
    store.migrate().await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(vigil_monitor::run(store, config, grpc, http, async move {
        let _ = stopped.await;
    }));
    Monitor { addr, http: http_addr, stop, task, _dir: dir }
}

fn config() -> MonitorConfig {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut config = MonitorConfig { models, ..Default::default() };
    config.control.poll = Duration::from_millis(100);
    config
}

/// `step`, failing the test instead of hanging it.
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), step)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in a minute"))
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the monitor does not serve on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lasting_watches_end_when_the_monitor_drains() {
    let mut config = config();
    // Were the watches waited on, the monitor would take this long to stop.
    config.limits.drain_timeout_ms = 120_000;
    // Nor do they end when quiet, as other streams do.
    config.limits.stream_idle_timeout_ms = 300;
    let monitor = start(config).await;
    let channel = channel(monitor.addr).await;
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = within("health", health.message()).await.unwrap().expect("the current status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut deployments = ControlClient::new(channel.clone())
        .watch_deployments(WatchDeploymentsRequest { server_id: "edge-1".into() })
        .await
        .unwrap()
        .into_inner();
    let snapshot = within("snapshot", deployments.message()).await.unwrap().expect("the first snapshot");
    assert!(snapshot.deployments.is_empty());
    // Not charged to the memory budget, which they would hold for their life: their request is
    // bounded instead.
    let long_id = WatchDeploymentsRequest { server_id: "e".repeat(100 << 10) };
    let mut refused = ControlClient::new(channel.clone());
    let status = match within("a long id", refused.watch_deployments(long_id)).await {
        Ok(stream) => within("a long id", stream.into_inner().message()).await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("the limit is 65536 (the limit of a watch's request)"), "{status:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = monitor.stop.send(());
    // Well within the drain timeout.
    within("stopping", monitor.task).await.unwrap().unwrap();
    let last = within("health", health.message()).await.unwrap().expect("NOT_SERVING before the end");
    assert_eq!(last.status(), ServingStatus::NotServing);
    let ended = within("health", health.message()).await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    let ended = loop {
        match within("deployments", deployments.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the deployment watch ended without a status"),
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_refuse_messages_over_the_limit() {
    let mut config = config();
    config.limits.max_message_bytes = 2048;
    config.limits.max_request_bytes_in_flight = 1 << 20;
    let monitor = start(config).await;
    let mut client = MonitoringClient::new(channel(monitor.addr).await);
    let scope = |name: String| Some(Scope { model_name: name, ..Default::default() });
    let large = GetMetricsRequest { scope: scope("m".repeat(4000)), ..Default::default() };
    let status = client.get_metrics(large).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limits.max_message_bytes"), "{status:?}");
    // Under the limit, the same call is answered.
    let small = GetMetricsRequest { scope: scope("scratch-detector".into()), ..Default::default() };
    client.get_metrics(small).await.expect("a message under the limit");
    // The admission is seen on /metrics, as on the servers.
    let text = reqwest::get(format!("http://{}/metrics", monitor.http)).await.unwrap().text().await.unwrap();
    for metric in ["vigil_inflight_requests 0", "vigil_request_bytes_in_flight 0"] {
        assert!(text.lines().any(|l| l == metric), "{metric} in:\n{text}");
    }
    let _ = monitor.stop.send(());
    monitor.task.await.unwrap().unwrap();

    // A limit above tonic's own default (4 MiB) is the one that holds.
    let mut config = self::config();
    config.limits.max_message_bytes = 6 << 20;
    let monitor = start(config).await;
    let mut client = MonitoringClient::new(channel(monitor.addr).await);
    let five_mib = GetMetricsRequest { scope: scope("m".repeat(5 << 20)), ..Default::default() };
    let answer = client.get_metrics(five_mib).await;
    let refused_for_size =
        answer.as_ref().is_err_and(|s| matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted));
    assert!(!refused_for_size, "a 5 MiB message under a 6 MiB limit: {:?}", answer.map(|_| ()));
    let _ = monitor.stop.send(());
    monitor.task.await.unwrap().unwrap();
}
