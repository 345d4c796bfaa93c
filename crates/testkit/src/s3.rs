//! An S3-compatible server for tests: moto in server mode (`pip install "moto[server]"`, which
//! `./dev setup` does), on a free loopback port, with one bucket created. Stopped when dropped;
//! [`S3Server::stop`] and [`S3Server::resume`] take it away and bring it back on the same port
//! (its objects are lost with it, as moto keeps them in memory).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running moto server.
pub struct S3Server {
    port: u16,
    python: PathBuf,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

/// The bucket every test server has.
pub const BUCKET: &str = "vigil-captures";

impl S3Server {
    /// Starts moto with the Python of `VIGIL_PYTHON` (else `~/.cache/vigil/venv`) and creates
    /// [`BUCKET`]; panics saying what to do when moto is missing.
    pub async fn start() -> S3Server {
        let python = crate::python();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut server = S3Server { port: crate::free_port(), python, child: None, log };
        server.resume().await;
        server.create_bucket();
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its objects are gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on its port, empty: call [`S3Server::create_bucket`] after a stop.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(self.log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e} (./dev setup installs moto)", self.python.display()));
        self.child = Some(child);
        let log = self.log.path().to_path_buf();
        crate::wait_for_port(self.port, Duration::from_secs(30), "moto (S3)", || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
    }

    /// Creates [`BUCKET`] (after a restart).
    pub fn create_bucket(&self) {
        let created = Command::new(&self.python)
            .args([
                "-c",
                &format!(
                    "import urllib.request as u; u.urlopen(u.Request('{}/{BUCKET}', method='PUT')).read()",
                    self.endpoint()
                ),
            ])
            .output()
            .unwrap();
        assert!(created.status.success(), "creating the bucket: {}", String::from_utf8_lossy(&created.stderr));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
