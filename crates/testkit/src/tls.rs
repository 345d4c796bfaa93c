//! A certificate authority made for one test (rcgen): server certificates for `localhost` and
//! 127.0.0.1, client certificates, and the PEM files servers and clients read.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// A test CA whose files live in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what clients and mutual-TLS servers trust.
    pub ca_pem: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (files under a fresh temporary directory).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, cert.pem()).expect("writing the CA certificate");
        Self { dir, name: name.to_string(), issuer: Issuer::new(params, key), ca_pem }
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `<file>.pem` and
    /// `<file>.key` (writing over earlier files of that name: a renewal).
    pub fn server(&self, file: &str) -> CertFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("server parameters");
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, format!("{} {file}", self.name));
        self.issue(params, file)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, name)
    }

    fn issue(&self, params: CertificateParams, file: &str) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        // Written aside and renamed, as a certificate manager renews files in place.
        for (path, text) in [(&files.key, key.serialize_pem()), (&files.cert, cert.pem())] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).expect("writing a certificate");
            std::fs::rename(&partial, path).expect("renaming a certificate");
        }
        files
    }
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port` (as `localhost`), trusting `ca`, with a
/// JSON `body`; the status code and the response body.
pub async fn https(port: u16, method: &str, path: &str, ca: &Path, token: Option<&str>, body: &str) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("usable CA");
    }
    #[allow(deprecated)] // ring, as the servers use
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {length}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    // A server may close without close_notify; what was read counts.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Tokens for checking scopes: for each scope one holding it alone (`only-<scope>`) and one
/// holding every other scope (`all-but-<scope>`), in a tokens file.
pub struct ScopedTokens {
    /// The tokens file (`security.auth.tokens_file`).
    pub file: PathBuf,
    tokens: std::collections::BTreeMap<String, String>,
}

impl ScopedTokens {
    /// Writes the tokens file into `dir`.
    pub fn write(dir: &Path) -> Self {
        use vigil_security::Scope;
        let mut text = String::new();
        let mut tokens = std::collections::BTreeMap::new();
        for scope in Scope::ALL {
            let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != scope).collect();
            for (name, scopes) in
                [(format!("only-{}", scope.name()), vec![scope]), (format!("all-but-{}", scope.name()), others)]
            {
                let (token, hash) = vigil_security::auth::new_token();
                text.push_str(&vigil_security::auth::token_entry(&name, &hash, &scopes));
                tokens.insert(name, token);
            }
        }
        let file = dir.join("tokens.toml");
        std::fs::write(&file, text).expect("writing the tokens file");
        Self { file, tokens }
    }

    /// The token holding `scope` alone.
    pub fn only(&self, scope: vigil_security::Scope) -> &str {
        &self.tokens[&format!("only-{}", scope.name())]
    }

    /// The token holding every scope but `scope`.
    pub fn all_but(&self, scope: vigil_security::Scope) -> &str {
        &self.tokens[&format!("all-but-{}", scope.name())]
    }
}
