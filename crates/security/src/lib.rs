//! Security for every Vigil port: TLS with certificates reloaded from disk (and optional mutual
//! TLS), bearer-token authentication with scopes as a tower layer for gRPC and as axum middleware
//! for HTTP, the rule that keeps plaintext on loopback, and the client side (CA bundle, client
//! certificate, token) the command line and the servers' own clients use.

pub mod auth;
pub mod client;
pub mod lasting;
pub mod reload;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use auth::{Access, AuthConfig, Authenticator, Caller, Scope};
pub use client::ClientSecurity;
pub use tls::{ServerTls, TlsConfig};

/// A server's `[tls]` and `[auth]` sections and whether plaintext is allowed beyond loopback.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// TLS on every port of the server (gRPC, `/metrics`, the dashboard); none: plaintext.
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and their scopes; none configured: every call is allowed.
    pub auth: AuthConfig,
    /// Allow plaintext on an address other than loopback (`--insecure`); refused otherwise.
    pub insecure: bool,
}

/// What a server's ports are served with: TLS (when configured), the authenticator (when
/// tokens are configured) and the plaintext policy. Cheap to clone.
#[derive(Clone)]
pub struct Security {
    tls: Option<ServerTls>,
    auth: Option<Arc<Authenticator>>,
    insecure: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Security {
    /// Nothing: plaintext, every call allowed (tests and the embedded default on loopback).
    pub fn none() -> Self {
        Self { tls: None, auth: None, insecure: false }
    }

    /// Reads the certificates, key and token files `config` names (and starts watching them);
    /// errors name the key and the file. Call inside a tokio runtime.
    pub fn load(config: &SecurityConfig) -> anyhow::Result<Self> {
        let tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
        let auth = Authenticator::load(&config.auth)?.map(Arc::new);
        Ok(Self { tls, auth, insecure: config.insecure })
    }

    /// The TLS acceptor, when TLS is on.
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// The authenticator, when tokens are configured.
    pub fn authenticator(&self) -> Option<&Arc<Authenticator>> {
        self.auth.as_ref()
    }

    /// Refuses to serve plaintext on `addr` beyond loopback unless `insecure` allows it (then
    /// warns); `setting` names the flag or key that sets the address.
    pub fn check_listen(&self, addr: SocketAddr, setting: &str) -> anyhow::Result<()> {
        if self.tls.is_some() || addr.ip().is_loopback() {
            return Ok(());
        }
        if !self.insecure {
            anyhow::bail!(
                "refusing plaintext on {addr} ({setting}): configure [tls] cert and key, listen on loopback, \
                 or allow it with insecure = true (--insecure)"
            );
        }
        tracing::warn!(%addr, "serving plaintext beyond loopback (insecure = true): traffic and tokens are readable on the network");
        Ok(())
    }

    /// The gRPC authorisation layer ([`auth::grpc_access`] decides what each method needs);
    /// refusals are counted in `metrics`.
    pub fn grpc_layer(&self, metrics: auth::AuthMetrics) -> auth::GrpcAuthLayer {
        auth::GrpcAuthLayer::new(self.auth.clone(), metrics)
    }

    /// Applies HTTP authorisation to `router` (what each path needs comes from `access`).
    pub fn protect_http(
        &self,
        router: axum::Router,
        access: fn(&str) -> Access,
        metrics: auth::AuthMetrics,
    ) -> axum::Router {
        auth::protect_http(router, self.auth.clone(), access, metrics)
    }

    /// Serves `router` on `listener` (over TLS when on) until `shutdown` resolves.
    pub async fn serve_http(
        &self,
        listener: tokio::net::TcpListener,
        router: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        match &self.tls {
            None => axum::serve(listener, router).with_graceful_shutdown(shutdown).await,
            Some(tls) => axum::serve(tls.http_listener(listener)?, router).with_graceful_shutdown(shutdown).await,
        }
        .context("HTTP server failed")
    }

    /// `http` or `https`, as clients reach this server.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
