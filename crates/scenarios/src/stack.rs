//! One deployment in one process, over one store: vigil-cloud serving a model repository (and
//! following the deployments in the store), its records through the logger's pipeline into the
//! store (over Apache Kafka, or an in-process bus), and the monitor (rollups, alarms, rollout
//! controller, review API, dashboard).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tonic::transport::Channel;
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::MonitorConfig;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_server::ModelOptions;
use vigil_serving::records::RecordEmitter;
use vigil_store::{MonitorStore, PredictionStore};

/// How a [`Stack`] starts.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The store's URL (`postgres://...` or `sqlite://...`), which the server follows.
    pub database_url: String,
    pub repository: PathBuf,
    /// Where the monitor's dashboard and review API listen (port 0: any free port).
    pub monitor_http: SocketAddr,
    /// Load every version in the repository (rollouts need the candidates loaded).
    pub load_all_versions: bool,
    /// Extra monitor configuration (TOML tables after the stack's own), e.g. alarm rules.
    pub monitor_config: String,
    /// Log through this Apache Kafka broker (`host:port`, Vigil's topics created): the server
    /// produces its records there and a logger consumes them into the store, as in production.
    /// None: an in-process bus into the logger's pipeline (the embedded default).
    pub kafka_brokers: Option<String>,
    /// Which server answers: vigil-cloud, or vigil-edge (the inspection API too).
    pub server: ServerKind,
    /// vigil-edge's `[capture]` (off by default).
    pub capture: Option<vigil_capture::CaptureConfig>,
    /// Extra keys of the monitor's `[rollouts]` table (TOML lines), e.g. a scenario's limits.
    pub rollouts: String,
}

/// The prediction server a [`Stack`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Cloud,
    Edge,
}

impl StackOptions {
    /// Loopback, any free ports, every version loaded.
    pub fn new(database_url: impl Into<String>, repository: impl Into<PathBuf>) -> Self {
        Self {
            database_url: database_url.into(),
            repository: repository.into(),
            monitor_http: SocketAddr::from(([127, 0, 0, 1], 0)),
            load_all_versions: true,
            monitor_config: String::new(),
            kafka_brokers: None,
            server: ServerKind::Cloud,
            capture: None,
            rollouts: String::new(),
        }
    }
}

/// The running services and clients of them.
pub struct Stack<S> {
    pub store: S,
    pub repository: PathBuf,
    pub server: vigil_server::RunningServer,
    pub monitor: vigil_server::Lifecycle,
    /// The monitor's dashboard and review API (`http://{monitor_http}/`).
    pub monitor_http: SocketAddr,
    pub oip: GrpcInferenceServiceClient<Channel>,
    pub monitoring: MonitoringClient<Channel>,
    /// The monitor's configuration, as started.
    pub monitor_config: MonitorConfig,
    /// Stops the Kafka logger, when there is one.
    stop_logger: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<()>>)>,
}

impl<S: PredictionStore + MonitorStore> Stack<S> {
    /// Migrates `store` and starts everything on it. Rollups of 1 s, alarms every 200 ms and
    /// rollout steps judged every 300 ms, so a scenario plays out in seconds; `[rollouts]`
    /// thresholds as shipped but for 25 ms of p99 slack (the load, the servers and the monitor
    /// share this machine's cores), and `options.rollouts`.
    pub async fn start(store: S, options: StackOptions) -> Result<Self> {
        store.migrate().await.context("preparing the database")?;
        let mut logging = vigil_server::LoggingConfig::named("vigil-scenario", "scenario-1");
        let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
        let (records, stop_logger) = match &options.kafka_brokers {
            None => {
                let (sink, receiver) = vigil_logbus::in_process::channel(65_536);
                let (emitter, _emitting) = Emitter::start(sink, 65_536, 64);
                let stats = Arc::new(LoggerStats::default());
                tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, stats));
                (Some(RecordEmitter::new(emitter, "scenario-1")), None)
            }
            Some(brokers) => {
                logging.enabled = true;
                logging.kafka.brokers = brokers.clone();
                let mut logger = vigil_logger::LoggerConfig::new(brokers.clone(), options.database_url.clone());
                logger.batch = batch;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let stats = Arc::new(LoggerStats::default());
                let task = tokio::spawn(vigil_logger::run(logger, stats, async move {
                    let _ = stopped.await;
                }));
                (None, Some((stop, task)))
            }
        };
        let models = ModelOptions { load_all_versions: options.load_all_versions, ..Default::default() };
        let deployments = vigil_server::DeploymentsConfig {
            database_url: options.database_url.clone(),
            poll_interval_ms: 100,
            ..Default::default()
        };
        let metrics = vigil_server::MetricsConfig { enabled: false, listen: "127.0.0.1:0".parse()? };
        let server = match options.server {
            ServerKind::Cloud => {
                let mut config = CloudConfig { model_repository: options.repository.clone(), ..CloudConfig::default() };
                config.listen = "127.0.0.1:0".parse()?;
                (config.metrics, config.logging, config.deployments) = (metrics, logging, deployments);
                config.models = ModelOptions { watch_interval_ms: config.models.watch_interval_ms, ..models };
                // These scenarios use no voice search.
                config.voice_search.enabled = false;
                vigil_cloud::start(config, false, records).await?
            }
            ServerKind::Edge => {
                let mut config =
                    vigil_edge::EdgeConfig { model_repository: options.repository.clone(), ..Default::default() };
                config.listen = "127.0.0.1:0".parse()?;
                // A version retrained meanwhile loads once it is in the repository.
                let models = ModelOptions { watch_interval_ms: 500, ..models };
                (config.metrics, config.logging, config.deployments, config.models) =
                    (metrics, logging, deployments, models);
                config.capture = options.capture.clone().unwrap_or_default();
                vigil_edge::start_with(config, false, records).await?
            }
        };

        let monitor_config: MonitorConfig = toml::from_str(&format!(
            "models = \"{}\"\n[rollups]\nresolutions = [1, 60]\npoll = \"100ms\"\n[alerting]\n\
             evaluate_every = \"200ms\"\n[rollouts]\nevaluate_every = \"300ms\"\nlatency_p99_slack_ms = 25.0\n{}\n{}\n",
            options.repository.display(),
            options.rollouts,
            options.monitor_config,
        ))?;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = tokio::net::TcpListener::bind(options.monitor_http)
            .await
            .with_context(|| format!("cannot listen on {} for the dashboard", options.monitor_http))?;
        let (grpc_addr, monitor_http) = (grpc.local_addr()?, http.local_addr()?);
        let monitor = vigil_monitor::start(store.clone(), monitor_config.clone(), grpc, http).await?;
        let oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await?;
        let monitoring = MonitoringClient::connect(format!("http://{grpc_addr}")).await?;
        Ok(Self {
            store,
            repository: options.repository,
            server,
            monitor,
            monitor_http,
            oip,
            monitoring,
            monitor_config,
            stop_logger,
        })
    }

    /// Stops the monitor, the server (its records handed to the bus) and the logger, each even
    /// when one before failed (a logger left running past its broker never stops); the first
    /// failure is the answer.
    pub async fn shutdown(self) -> Result<()> {
        let monitor = self.monitor.shutdown().await.context("stopping the monitor");
        let server = self.server.shutdown().await.context("stopping the server");
        let logger = match self.stop_logger {
            Some((stop, task)) => {
                let _ = stop.send(());
                match tokio::time::timeout(std::time::Duration::from_secs(60), task).await {
                    Ok(Ok(result)) => result.context("stopping the logger"),
                    Ok(Err(panicked)) => Err(anyhow::anyhow!("the logger panicked: {panicked}")),
                    Err(_) => Err(anyhow::anyhow!("the logger did not stop within 60 s")),
                }
            }
            None => Ok(()),
        };
        monitor.and(server).and(logger)
    }
}
