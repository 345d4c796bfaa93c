//! How every command reaches a server: `https://` verified against `--ca-cert` (or the system's
//! roots), a client certificate for mutual TLS, and a bearer token, from global flags or their
//! `VIGIL_...` variables.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use vigil_security::ClientSecurity;
pub use vigil_security::client::SecureChannel;

/// The flags every command that talks to a server takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM bundle of the CAs https:// servers must chain to (default: the system's roots).
    #[arg(long, global = true, env = "VIGIL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    #[arg(long, global = true, env = "VIGIL_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "VIGIL_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call (prefer VIGIL_TOKEN or --token-file: flags show in `ps`).
    #[arg(long, global = true, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File whose first line is the bearer token.
    #[arg(long, global = true, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Verify the server's certificate for this name instead of the address's host.
    #[arg(long, global = true, env = "VIGIL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

static OPTIONS: OnceLock<ClientSecurity> = OnceLock::new();

/// Remembers the flags for every connection this process makes.
pub fn init(options: ConnectOptions) {
    let _ = OPTIONS.set(ClientSecurity {
        ca_cert: options.ca_cert,
        client_cert: options.client_cert,
        client_key: options.client_key,
        token: options.token,
        token_file: options.token_file,
        server_name: options.tls_server_name,
    });
}

/// The client security the flags describe.
pub fn security() -> ClientSecurity {
    OPTIONS.get().cloned().unwrap_or_default()
}

/// Connects to `url` within 5 s; `what` says which server and which flag sets its address,
/// e.g. "the edge server at URL; is vigil-edge running? (--server)".
pub async fn channel(url: &str, what: &str) -> Result<SecureChannel> {
    let security = security();
    let endpoint = security
        .endpoint(url)
        .with_context(|| format!("invalid server address '{url}' (expected e.g. http://127.0.0.1:8001)"))?
        .connect_timeout(Duration::from_secs(5));
    security.connect_endpoint(endpoint).await.with_context(|| format!("cannot reach {what}"))
}
