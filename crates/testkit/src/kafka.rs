//! An Apache Kafka broker for one test: KRaft combined mode (one process is broker and
//! controller), formatted in a temporary directory, on two free loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use vigil_logbus::kafka::{KafkaConfig, TopicSettings, create_topics};

/// One broker at a time per test binary: on a 2-core machine, parallel brokers, loggers and
/// servers starve each other's consumer-group heartbeats.
static ONE_BROKER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The broker's jars: `$VIGIL_KAFKA_LIBS`, else the newest version `./dev setup` put in
/// `~/.cache/vigil/kafka/<version>/libs`.
pub fn libs() -> Result<PathBuf, String> {
    const HOW: &str = "run ./dev setup (it fetches Apache Kafka from Maven Central), or set VIGIL_KAFKA_LIBS to a folder of the broker's jars";
    if let Some(dir) = std::env::var_os("VIGIL_KAFKA_LIBS").map(PathBuf::from) {
        return if has_broker_jar(&dir) {
            Ok(dir)
        } else {
            Err(format!("VIGIL_KAFKA_LIBS={} holds no kafka_2.13 jar: {HOW}", dir.display()))
        };
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cache = home.join(".cache/vigil/kafka");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("libs"))
        .filter(|d| has_broker_jar(d))
        .collect();
    found.sort();
    found.pop().ok_or_else(|| format!("no Apache Kafka broker in {}: {HOW}", cache.display()))
}

fn has_broker_jar(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))
}

/// How the broker's JVM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Small heap, quick start, little JIT work: for tests beside everything else on 2 cores.
    Test,
    /// The JVM's full JIT and a larger heap: for benchmarks.
    Throughput,
}

/// A running (or stopped) broker; killed when dropped.
pub struct KafkaBroker {
    pub port: u16,
    controller_port: u16,
    dir: tempfile::TempDir,
    libs: PathBuf,
    profile: Profile,
    secured: Option<SecuredListener>,
    child: Option<Child>,
    _turn: MutexGuard<'static, ()>,
}

/// A second listener, `SASL_SSL`, with SCRAM-SHA-256 users and a certificate from a test CA;
/// the first (plaintext) listener stays for inter-broker traffic and test setup.
#[derive(Debug, Clone)]
pub struct SecuredListener {
    pub port: u16,
    /// The CA the broker's certificate comes from (and, under mutual TLS, clients' too).
    pub ca_cert: PathBuf,
    /// The broker's key followed by its certificate, as Kafka's PEM key store reads them.
    key_store: PathBuf,
    /// Users created at format time: (name, password).
    users: Vec<(String, String)>,
    /// Whether clients must present a certificate from the CA.
    mutual_tls: bool,
}

impl SecuredListener {
    /// A listener whose certificate `ca` issues, accepting `users` (name, password) with
    /// SCRAM-SHA-256; `mutual_tls`: clients must also present a certificate from `ca`.
    pub fn new(ca: &crate::tls::TestCa, users: &[(&str, &str)], mutual_tls: bool) -> Self {
        let server = ca.server("kafka-broker");
        let key_store = ca.dir().join("kafka-broker.keystore.pem");
        let pem = format!(
            "{}{}",
            std::fs::read_to_string(&server.key).expect("broker key"),
            std::fs::read_to_string(&server.cert).expect("broker certificate")
        );
        std::fs::write(&key_store, pem).expect("writing the broker's key store");
        SecuredListener {
            port: 0,
            ca_cert: ca.ca_pem.clone(),
            key_store,
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            mutual_tls,
        }
    }
}

impl KafkaBroker {
    /// Starts a broker with the test profile and creates Vigil's topics with `partitions`
    /// partitions each.
    pub async fn start(partitions: i32) -> KafkaBroker {
        Self::start_with(Profile::Test, partitions).await
    }

    /// Starts a broker with `profile` and creates Vigil's topics with `partitions` each.
    pub async fn start_with(profile: Profile, partitions: i32) -> KafkaBroker {
        let broker = Self::start_bare(profile).await;
        let settings = TopicSettings { create: true, partitions, replication_factor: 1 };
        create_topics(&broker.kafka(), &vigil_logbus::topics::ALL, settings).await.expect("create topics");
        broker
    }

    /// Starts a broker with no topics (automatic topic creation is off, as in production).
    pub async fn start_bare(profile: Profile) -> KafkaBroker {
        Self::start_listening(profile, None).await
    }

    /// Starts a broker with the test profile, a `SASL_SSL` listener beside the plaintext one,
    /// and Vigil's topics with `partitions` partitions each.
    pub async fn start_secured(partitions: i32, listener: SecuredListener) -> KafkaBroker {
        let broker = Self::start_listening(Profile::Test, Some(listener)).await;
        let settings = TopicSettings { create: true, partitions, replication_factor: 1 };
        create_topics(&broker.kafka(), &vigil_logbus::topics::ALL, settings).await.expect("create topics");
        broker
    }

    async fn start_listening(profile: Profile, secured: Option<SecuredListener>) -> KafkaBroker {
        let turn = ONE_BROKER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let libs = libs().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new().prefix("vigil-kafka-").tempdir().unwrap();
        // Two free ports, not the same one handed out twice.
        let port = crate::free_port();
        let controller_port = std::iter::repeat_with(crate::free_port).find(|&p| p != port).expect("a second port");
        let secured = secured.map(|listener| {
            let port = std::iter::repeat_with(crate::free_port)
                .find(|&p| p != port && p != controller_port)
                .expect("a third port");
            SecuredListener { port, ..listener }
        });
        let mut broker = KafkaBroker { port, controller_port, dir, libs, profile, secured, child: None, _turn: turn };
        broker.write_config();
        broker.format();
        broker.resume().await;
        broker
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Producer settings for this broker (records time out after 2 minutes).
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.brokers(), message_timeout_ms: 120_000, ..KafkaConfig::default() }
    }

    /// Settings for the `SASL_SSL` listener as `user` with `password`, verifying the broker
    /// against the test CA (panics without a secured listener).
    pub fn secured_kafka(&self, user: &str, password: &str) -> KafkaConfig {
        let listener = self.secured.as_ref().expect("a broker started with start_secured");
        KafkaConfig {
            brokers: format!("127.0.0.1:{}", listener.port),
            tls: Some(vigil_logbus::kafka::KafkaTls { ca_cert: Some(listener.ca_cert.clone()), ..Default::default() }),
            sasl: Some(vigil_logbus::kafka::KafkaSasl {
                mechanism: "SCRAM-SHA-256".into(),
                username: user.into(),
                password_file: None,
                password: Some(password.into()),
            }),
            ..self.kafka()
        }
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's log so far (every run of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// How many messages `topic` holds, over all partitions (high minus low watermark): with
    /// an idempotent producer, a record sent once and retried is still one message.
    pub fn message_count(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer =
            self.kafka().client_config().expect("Kafka settings").create().expect("a Kafka client");
        let timeout = Duration::from_secs(30);
        let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("topic metadata");
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        (0..partitions as i32)
            .map(|p| {
                let (low, high) = consumer.fetch_watermarks(topic, p, timeout).expect("watermarks");
                high - low
            })
            .sum()
    }

    /// The number of partitions of `topic` (0 when it does not exist).
    pub fn partitions(&self, topic: &str) -> usize {
        let consumer: BaseConsumer =
            self.kafka().client_config().expect("Kafka settings").create().expect("a Kafka client");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).expect("topic metadata");
        metadata.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()).unwrap_or(0)
    }

    /// Kills the broker process (SIGKILL: no controlled shutdown); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker with SIGTERM (controlled shutdown) and waits for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts the broker (again) on the same ports and data, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running already");
        let dir = self.dir.path();
        let output = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stdout.log")).unwrap();
        let child = Command::new("java")
            .args(self.jvm_options())
            .arg("-cp")
            .arg(self.libs.join("*"))
            .args(["kafka.Kafka", "server.properties"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java (Java 17 or newer must be on PATH): {e}"));
        self.child = Some(child);
        let broker_log = dir.join("broker.log");
        let log = || {
            let read = |name: &Path| std::fs::read_to_string(name).unwrap_or_default();
            format!("{}{}", read(&broker_log), read(&dir.join("stdout.log")))
        };
        crate::wait_for_port(self.port, Duration::from_secs(60), "the Kafka broker", log).await;
        // Listening comes a moment before the broker serves metadata and produce requests.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&broker_log).unwrap_or_default().contains("Kafka Server started") {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the Kafka broker exited ({status}); its log:\n{}", log());
            }
            assert!(Instant::now() < deadline, "the Kafka broker did not start; its log:\n{}", log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn jvm_options(&self) -> Vec<String> {
        let log4j = format!("-Dlog4j2.configurationFile={}", self.dir.path().join("log4j2.properties").display());
        let mut options: Vec<String> = match self.profile {
            Profile::Test => ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k"]
                .map(String::from)
                .to_vec(),
            Profile::Throughput => ["-Xms512m", "-Xmx1g", "-XX:+UseG1GC"].map(String::from).to_vec(),
        };
        options.extend(["-Djava.awt.headless=true".to_string(), "-XX:-UsePerfData".to_string(), log4j]);
        options
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let (port, controller) = (self.port, self.controller_port);
        let properties = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
",
            data = dir.join("data").display()
        );
        let properties = match &self.secured {
            None => properties,
            Some(listener) => secured_properties(&properties, listener),
        };
        std::fs::write(dir.join("server.properties"), properties).unwrap();
        let log4j = format!(
            "status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = warn
",
            dir.join("broker.log").display()
        );
        std::fs::write(dir.join("log4j2.properties"), log4j).unwrap();
    }

    /// Formats the data directory, as `kafka-storage.sh format` does, with the secured
    /// listener's SCRAM users.
    fn format(&self) {
        let users = self.secured.iter().flat_map(|l| &l.users);
        let scram = users.flat_map(|(user, password)| {
            ["--add-scram".to_string(), format!("SCRAM-SHA-256=[name={user},password={password}]")]
        });
        let out = Command::new("java")
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-cp"])
            .arg(self.libs.join("*"))
            .args(["kafka.tools.StorageTool", "format", "--cluster-id", CLUSTER_ID, "--config", "server.properties"])
            .args(scram)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run java (Java 17 or newer must be on PATH): {e}"));
        assert!(
            out.status.success(),
            "kafka-storage format: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `properties` with a `SASL_SSL` listener added (SCRAM-SHA-256, PEM key and trust stores).
fn secured_properties(properties: &str, listener: &SecuredListener) -> String {
    let port = listener.port;
    let mut lines: Vec<String> = properties
        .lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("listeners=") {
                format!("listeners={rest},SASL_SSL://127.0.0.1:{port}")
            } else if let Some(rest) = line.strip_prefix("advertised.listeners=") {
                format!("advertised.listeners={rest},SASL_SSL://127.0.0.1:{port}")
            } else if let Some(rest) = line.strip_prefix("listener.security.protocol.map=") {
                format!("listener.security.protocol.map={rest},SASL_SSL:SASL_SSL")
            } else {
                line.to_string()
            }
        })
        .collect();
    let client_auth = if listener.mutual_tls { "required" } else { "none" };
    lines.extend([
        "sasl.enabled.mechanisms=SCRAM-SHA-256".to_string(),
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256".to_string(),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".to_string(),
        "listener.name.sasl_ssl.ssl.keystore.type=PEM".to_string(),
        format!("listener.name.sasl_ssl.ssl.keystore.location={}", listener.key_store.display()),
        "listener.name.sasl_ssl.ssl.truststore.type=PEM".to_string(),
        format!("listener.name.sasl_ssl.ssl.truststore.location={}", listener.ca_cert.display()),
        format!("listener.name.sasl_ssl.ssl.client.auth={client_auth}"),
    ]);
    lines.join("\n") + "\n"
}

/// Every test broker is a cluster of its own; they may share the id (a base64 UUID).
const CLUSTER_ID: &str = "MLndGAR0S_KSpeOpU01J7g";

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
