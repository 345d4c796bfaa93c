//! Real services for tests and benchmarks, started and stopped by the code that needs them:
//! an Apache Kafka broker ([`KafkaBroker`], KRaft combined mode) and a PostgreSQL server of its
//! own ([`PostgresServer`]), each on free loopback ports with its data in a temporary
//! directory. `./dev setup` installs what they run (the broker's jars from Maven Central,
//! PostgreSQL from Debian's packages); when something is missing they fail and say so.
//! [`Chromium`] drives a headless browser over the DevTools protocol, for pages a person uses.
//! [`speech`] synthesises spoken test audio with espeak-ng. [`S3Server`] is an S3-compatible
//! server (moto). [`Relay`] relays TCP through a link a test can silence.

pub mod chromium;
pub mod grpc;
pub mod kafka;
pub mod postgres;
pub mod relay;
pub mod s3;
pub mod speech;
pub mod tls;

pub use chromium::{Chromium, Page};
pub use kafka::KafkaBroker;
pub use postgres::PostgresServer;
pub use relay::Relay;
pub use s3::S3Server;

/// The Python the tests use: `VIGIL_PYTHON`, else the virtualenv `./dev setup` prepares
/// (`~/.cache/vigil/venv`), which has the packages of `training/requirements.txt`.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("VIGIL_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vigil/venv/bin/python")
    })
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `127.0.0.1:port`, or panics after `timeout`
/// with `what` and `log` (the service's own log, for the reason).
pub(crate) async fn wait_for_port(port: u16, timeout: std::time::Duration, what: &str, log: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on {port} within {timeout:?}; its log:\n{}",
            log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
