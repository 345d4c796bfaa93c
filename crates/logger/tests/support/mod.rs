//! Real components for the logging tests: a Kafka-protocol broker (tansu, SQLite storage) on a
//! free loopback port, and a fresh Postgres database per test.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_logbus::kafka::{KafkaConfig, create_topics};

/// The broker binary: `$VIGIL_TANSU`, else the cache `./dev setup` fills.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/vigil/tansu/bin/tansu")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One broker test at a time per test binary: on a 2-core machine, parallel brokers, loggers
/// and servers starve each other's consumer-group heartbeats.
static ONE_BROKER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tansu broker process with its data in a temporary directory.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Broker {
    /// Starts a broker and creates Vigil's topics with `partitions` partitions.
    pub async fn start(partitions: i32) -> Broker {
        let turn = ONE_BROKER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut broker = Broker { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, _turn: turn };
        broker.resume().await;
        create_topics(&broker.kafka(), &vigil_logbus::topics::ALL, partitions).await.expect("create topics");
        broker
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.brokers(), message_timeout_ms: 120_000, ..KafkaConfig::default() }
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Stops the broker (data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and data.
    pub async fn resume(&mut self) {
        let binary = tansu_binary();
        assert!(binary.exists(), "{} missing: run ./dev setup (it installs the tansu broker)", binary.display());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).unwrap();
        let child = Command::new(binary)
            .current_dir(self.dir.path())
            .args(["broker", "--cluster-id", "vigil-test", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh Postgres database per test, dropped at the end.
pub type Database = vigil_store::testing::TestDatabase;

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A logger running in this process until the returned sender fires.
pub struct RunningLogger {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningLogger {
    /// Starts `vigil_logger::run` with `config`.
    pub fn start(config: vigil_logger::LoggerConfig) -> RunningLogger {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let stats = std::sync::Arc::new(vigil_logger::LoggerStats::default());
        let task = tokio::spawn(vigil_logger::run(config, stats, async move {
            let _ = rx.await;
        }));
        RunningLogger { stop, task }
    }

    /// A logger on `brokers` writing to `database_url`, with small quick batches.
    pub fn quick(brokers: String, database_url: String) -> RunningLogger {
        Self::start(vigil_logger::LoggerConfig {
            brokers,
            database_url,
            batch_max_records: 500,
            batch_max_wait: Duration::from_millis(100),
            ..vigil_logger::LoggerConfig::default()
        })
    }

    /// Asks it to finish its batch and stop; fails the test if it failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("logger task").expect("logger ran without error");
    }
}

/// A TCP proxy in front of Postgres that can be cut and restored: from a client's side it is
/// the database going down (connections reset, new ones refused) and coming back on the same
/// address.
pub struct Outage {
    pub port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Outage {
    /// Starts forwarding `127.0.0.1:<new port>` to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Outage {
        let mut proxy = Outage { port: free_port(), target, task: None };
        proxy.restore().await;
        proxy
    }

    /// Resets every connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Accepts and forwards again.
    pub async fn restore(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { break };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `GET /metrics` over plain HTTP/1.1 (blocking): the body.
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The sum of the samples of `name` whose labels include `labels`; None when there is none.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    vigil_telemetry::sample(text, name, labels)
}
