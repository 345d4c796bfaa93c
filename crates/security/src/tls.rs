//! Server-side TLS with rustls: the certificate chain and key from PEM files, an optional CA
//! bundle that client certificates must chain to (mutual TLS), all read again when a file
//! changes (new handshakes use the new files; open connections keep theirs). Handshakes run
//! concurrently and within a timeout, so a slow or silent client holds up no one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::reload::Reloading;

/// `[tls]`: the server's certificate and key, and the CA of the clients under mutual TLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to: set, every client must present
    /// one (mutual TLS); unset, clients are not asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes, in milliseconds (0: never).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// A client that has not finished its handshake by then is dropped, in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    5_000
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

impl TlsConfig {
    /// Certificate and key, no client certificates, defaults otherwise.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            reload_interval_ms: default_reload_interval_ms(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
        }
    }
}

/// The two configurations a server needs: HTTP/2 only for gRPC, HTTP/1.1 for the HTTP ports.
struct Configs {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
}

/// The current certificate, as a resolver rustls asks at each handshake.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server's TLS: configurations reloaded from the files, and the count of failed handshakes.
#[derive(Clone)]
pub struct ServerTls {
    configs: Reloading<Configs>,
    handshake_timeout: Duration,
    failures: Arc<AtomicU64>,
}

impl ServerTls {
    /// Reads the files (errors name them) and starts watching them.
    pub fn load(config: &TlsConfig) -> Result<Self> {
        let mut paths = vec![config.cert.clone(), config.key.clone()];
        paths.extend(config.client_ca.clone());
        let owned = config.clone();
        let configs =
            Reloading::start("TLS certificate", paths, Duration::from_millis(config.reload_interval_ms), move || {
                build(&owned)
            })?;
        Ok(Self {
            configs,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms.max(1)),
            failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Handshakes that failed or timed out so far.
    pub fn handshake_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Accepts on `listener` and hands over connections whose handshake completed (gRPC: ALPN
    /// `h2`), in the order they complete; ends when the receiver is dropped.
    pub fn grpc_incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(64);
        self.accept(listener, tx, |c| c.grpc.clone(), Ok);
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// A listener for axum: HTTP/1.1 over TLS.
    pub fn http_listener(&self, listener: TcpListener) -> Result<HttpsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        self.accept(
            listener,
            tx,
            |c| c.http.clone(),
            move |s| {
                let peer = s.get_ref().0.peer_addr().unwrap_or(addr);
                (s, peer)
            },
        );
        Ok(HttpsListener { rx, addr })
    }

    fn accept<T: Send + 'static>(
        &self,
        listener: TcpListener,
        tx: mpsc::Sender<T>,
        config: fn(&Configs) -> Arc<rustls::ServerConfig>,
        wrap: impl Fn(TlsStream<TcpStream>) -> T + Clone + Send + 'static,
    ) {
        let (configs, timeout, failures) = (self.configs.clone(), self.handshake_timeout, self.failures.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(config(&configs.get()));
                let (tx, failures, wrap) = (tx.clone(), failures.clone(), wrap.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(wrap(stream)).await;
                        }
                        Ok(Err(e)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
    }
}

/// An axum listener whose connections completed a TLS handshake.
pub struct HttpsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The crypto: ring, as every other rustls user in the workspace (aws-lc-rs, which adds the
/// post-quantum key exchange, would add a second C library to the build).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of certificates; an error names the file and the key that sets it.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{key} = {}: cannot read PEM certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key} = {}: no certificate in the file", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key; an error names the file and the key that sets it.
pub fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{key} = {}: cannot read a PEM private key", path.display()))
}

/// A root store of the CAs in a PEM bundle.
pub fn read_roots(path: &Path, key: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path, key)? {
        roots.add(cert).with_context(|| format!("{key} = {}: not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

fn build(config: &TlsConfig) -> Result<Configs> {
    let provider = provider();
    let chain = read_certs(&config.cert, "tls.cert")?;
    let key = read_key(&config.key, "tls.key")?;
    let certified = CertifiedKey::from_der(chain, key, &provider).with_context(|| {
        format!("tls.key = {} does not match tls.cert = {}", config.key.display(), config.cert.display())
    })?;
    let resolver = Arc::new(FixedCert(Arc::new(certified)));
    let one = |alpn: &[u8]| -> Result<Arc<rustls::ServerConfig>> {
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = read_roots(ca, "tls.client_ca")?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .with_context(|| format!("tls.client_ca = {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(server))
    };
    Ok(Configs { grpc: one(b"h2")?, http: one(b"http/1.1")? })
}
