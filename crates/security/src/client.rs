//! The client side: `https://` servers verified against a CA bundle (or the system's roots),
//! a client certificate for mutual TLS, and a bearer token on every call.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How a client reaches a secured server. Empty: plaintext `http://`, no token. Its `Debug`
/// leaves the token out.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSecurity {
    /// PEM bundle of the CAs `https://` servers must chain to (default: the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that ask for one (mutual TLS); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// File holding the bearer token (its first line), read when connecting.
    pub token_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the address's host (a
    /// probe dialling 127.0.0.1 inside a pod whose certificate names its Service).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that carries the token: what every Vigil client is built on.
pub type SecureChannel = InterceptedService<Channel, Bearer>;

impl ClientSecurity {
    /// The bearer token, from `token` or the first line of `token_file`.
    pub fn bearer(&self) -> Result<Bearer> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            (None, None) => None,
        };
        let value = token
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .context("the token has characters a header cannot carry")?;
        Ok(Bearer(value))
    }

    /// Refuses a plaintext `url` beyond loopback with TLS options (they would be ignored) or a
    /// token (it would cross the network in clear). Reads no file: for configuration checks.
    pub fn check_address(&self, url: &str) -> Result<()> {
        let endpoint = Endpoint::from_shared(url.to_string()).with_context(|| format!("invalid address {url}"))?;
        let tls_options = [
            ("ca_cert (--ca-cert)", self.ca_cert.is_some()),
            ("client_cert (--client-cert)", self.client_cert.is_some()),
            ("client_key (--client-key)", self.client_key.is_some()),
            ("server_name (--server-name)", self.server_name.is_some()),
        ];
        // A local plaintext server (`vigil up`'s own) is reached as it is, whatever TLS options
        // the environment holds for remote ones; beyond loopback they would be silently ignored.
        let remote = endpoint.uri().host().is_some_and(|host| !is_loopback_host(host));
        if let Some((option, _)) = tls_options.iter().find(|(_, set)| *set).filter(|_| plaintext(url) && remote) {
            anyhow::bail!("{option} is for TLS, but {url} is plaintext: use an https:// address (or drop {option})");
        }
        // Anyone on the way could read the token and use it.
        let token = self.token.as_deref().is_some_and(|t| !t.trim().is_empty()) || self.token_file.is_some();
        if token && plaintext(url) && remote {
            anyhow::bail!("a token would cross the network in clear to {url}: use an https:// address");
        }
        Ok(())
    }

    /// The endpoint for `url`: TLS when it is `https://` (errors name the file at fault).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        self.check_address(url)?;
        let mut endpoint = Endpoint::from_shared(url.to_string()).with_context(|| format!("invalid address {url}"))?;
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca_cert {
                Some(ca) => {
                    let pem = std::fs::read(ca).with_context(|| format!("CA certificate {}", ca.display()))?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            match (&self.client_cert, &self.client_key) {
                (Some(cert), Some(key)) => {
                    let cert = std::fs::read(cert).with_context(|| format!("client certificate {}", cert.display()))?;
                    let key = std::fs::read(key).with_context(|| format!("client key {}", key.display()))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => anyhow::bail!("a client certificate needs both its certificate and its key"),
            }
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        }
        Ok(endpoint)
    }

    /// Connects to `url` now.
    pub async fn connect(&self, url: &str) -> Result<SecureChannel> {
        let bearer = self.bearer()?;
        let channel = self.endpoint(url)?.connect().await.with_context(|| format!("cannot reach {url}"))?;
        Ok(InterceptedService::new(channel, bearer))
    }

    /// A channel to `url` that connects on first use.
    pub fn connect_lazy(&self, url: &str) -> Result<SecureChannel> {
        let bearer = self.bearer()?;
        Ok(InterceptedService::new(self.endpoint(url)?.connect_lazy(), bearer))
    }

    /// Wraps an endpoint the caller tuned (timeouts, window sizes) with the token.
    pub async fn connect_endpoint(&self, endpoint: Endpoint) -> Result<SecureChannel> {
        let bearer = self.bearer()?;
        let uri = endpoint.uri().to_string();
        let channel = endpoint.connect().await.with_context(|| format!("cannot reach {uri}"))?;
        Ok(InterceptedService::new(channel, bearer))
    }
}

/// Whether `url` is a plaintext (`http://`) address.
fn plaintext(url: &str) -> bool {
    !url.starts_with("https://")
}

/// Whether `host` (a URI's host: a name, an IPv4 or a bracketed IPv6 address) is this machine.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ClientSecurity {
    /// Whether any TLS option is set.
    pub fn has_tls_options(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some() || self.server_name.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_the_token_out() {
        let security = ClientSecurity { token: Some("vgl_secret".into()), ..Default::default() };
        let shown = format!("{security:?}");
        assert!(!shown.contains("vgl_secret") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn tls_options_with_a_plaintext_address_are_an_error_not_ignored() {
        let with_ca = ClientSecurity { ca_cert: Some("ca.pem".into()), ..Default::default() };
        let e = with_ca.endpoint("http://edge-1:8001").unwrap_err().to_string();
        let want = "ca_cert (--ca-cert) is for TLS, but http://edge-1:8001 is plaintext: use an https:// address \
                    (or drop ca_cert (--ca-cert))";
        assert_eq!(e, want);
        let named = ClientSecurity { server_name: Some("edge-1".into()), ..Default::default() };
        let e = named.endpoint("http://10.0.0.7:8001").unwrap_err().to_string();
        assert!(e.starts_with("server_name (--server-name) is for TLS"), "{e}");
        assert!(named.endpoint("http://[2001:db8::1]:8001").is_err());
        assert!(ClientSecurity::default().endpoint("http://127.0.0.1:8001").is_ok(), "plaintext without TLS options");
        // A local plaintext server is reached whatever the environment holds for remote ones.
        for local in ["http://127.0.0.1:8001", "http://localhost:8001", "http://[::1]:8001"] {
            assert!(with_ca.endpoint(local).is_ok(), "{local}");
        }
    }

    #[test]
    fn a_token_never_crosses_the_network_in_clear() {
        let with_token = ClientSecurity { token: Some("vgl_secret".into()), ..Default::default() };
        let e = with_token.endpoint("http://cloud-1:8010").unwrap_err().to_string();
        assert_eq!(e, "a token would cross the network in clear to http://cloud-1:8010: use an https:// address");
        let from_file = ClientSecurity { token_file: Some("token".into()), ..Default::default() };
        assert!(from_file.endpoint("http://10.0.0.7:8010").is_err());
        assert!(with_token.endpoint("http://127.0.0.1:8010").is_ok(), "this machine's own server");
        assert!(with_token.endpoint("https://cloud-1:8010").is_ok());
        let empty = ClientSecurity { token: Some(String::new()), ..Default::default() };
        assert!(empty.endpoint("http://cloud-1:8010").is_ok(), "an empty token (VIGIL_TOKEN=) is no token");
    }
}
