//! A PostgreSQL server of a test's own (initdb in a temporary directory, a free loopback port),
//! for tests that stop and restart the database: the shared test server must stay up for the
//! tests running beside them.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// A server run with PostgreSQL's own `pg_ctl`; stopped (immediate mode) when dropped.
pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// Run as root: initdb and postgres refuse that, so they run as the 'postgres' user.
    as_postgres_user: bool,
    running: bool,
}

/// How `pg_ctl stop` stops the server.
#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Disconnects clients, then shuts down cleanly.
    Fast,
    /// Aborts every process at once, as a crash or power loss would (recovery at next start).
    Immediate,
}

/// The server binaries: `$VIGIL_PG_BINDIR`, else the newest `/usr/lib/postgresql/<v>/bin`.
pub fn bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("VIGIL_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server binaries in /usr/lib/postgresql: run ./dev setup (it installs Debian's postgresql), or set VIGIL_PG_BINDIR".into()
    })
}

impl PostgresServer {
    /// Creates a cluster (superuser `vigil`, trust on loopback, no fsync) and starts it.
    pub async fn start() -> PostgresServer {
        let bindir = bindir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new().prefix("vigil-postgres-").tempdir().unwrap();
        let as_postgres_user = is_root();
        let mut server = PostgresServer { port: crate::free_port(), dir, bindir, as_postgres_user, running: false };
        if as_postgres_user {
            // initdb and postgres refuse to run as root: the cluster belongs to 'postgres'.
            let out = Command::new("chown").args(["postgres:postgres"]).arg(server.dir.path()).output().unwrap();
            assert!(out.status.success(), "chown postgres: {}", String::from_utf8_lossy(&out.stderr));
        }
        let data = server.data();
        let out = server.run("initdb", &["-D", &data, "-U", "vigil", "-A", "trust", "-N", "-E", "UTF8"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        server.resume().await;
        server
    }

    /// `postgres://vigil@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://vigil@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server with `mode`; its data stays.
    pub fn stop(&mut self, mode: StopMode) {
        if !self.running {
            return;
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let out = self.run("pg_ctl", &["stop", "-D", &self.data(), "-m", mode, "-w"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
        self.running = false;
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts.
    pub async fn resume(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=50 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        let out = self.run("pg_ctl", &["start", "-D", &self.data(), "-o", &options, "-l", &log, "-w", "-t", "60"]);
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start: {}\n{}", String::from_utf8_lossy(&out.stderr), read_log());
        self.running = true;
        crate::wait_for_port(self.port, Duration::from_secs(30), "PostgreSQL", read_log).await;
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let binary = self.bindir.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        command.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self.run("pg_ctl", &["stop", "-D", &self.data(), "-m", "immediate", "-w"]);
        }
    }
}
