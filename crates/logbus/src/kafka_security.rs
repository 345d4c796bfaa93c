//! Kafka over TLS and SASL: which `security.protocol` a client uses, the CA bundle it verifies
//! brokers with, an optional client certificate (mutual TLS), and SCRAM or PLAIN credentials.

use std::path::PathBuf;

use rdkafka::ClientConfig;

/// TLS to the brokers. Brokers are verified against `ca_cert` (else the system's roots),
/// including their host name.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA bundle (PEM) the brokers' certificates are verified against; the system's roots
    /// when unset.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require mutual TLS; with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// SASL authentication to the brokers. Its `Debug` leaves the password out.
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `SCRAM-SHA-256` (default), `SCRAM-SHA-512` or `PLAIN` (PLAIN only over TLS).
    #[serde(default = "default_mechanism")]
    pub mechanism: String,
    pub username: String,
    /// A file holding the password (trailing newline ignored); preferred over `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password itself, for tests and development.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn default_mechanism() -> String {
    "SCRAM-SHA-256".into()
}

/// The mechanisms librdkafka is built with here.
pub const SASL_MECHANISMS: [&str; 3] = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"];

/// Checks TLS and SASL settings together; the message names the key.
pub fn validate(tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>) -> Result<(), String> {
    if let Some(tls) = tls {
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err("kafka.tls: client_cert and client_key go together (mutual TLS needs both)".into());
        }
        for path in [&tls.ca_cert, &tls.client_cert, &tls.client_key].into_iter().flatten() {
            if !path.is_file() {
                return Err(format!("kafka.tls: {} is not a readable file", path.display()));
            }
        }
    }
    if let Some(sasl) = sasl {
        if !SASL_MECHANISMS.contains(&sasl.mechanism.as_str()) {
            return Err(format!("kafka.sasl.mechanism = '{}': use one of {SASL_MECHANISMS:?}", sasl.mechanism));
        }
        if sasl.username.is_empty() {
            return Err("kafka.sasl.username must not be empty".into());
        }
        if sasl.mechanism == "PLAIN" && tls.is_none() {
            return Err("kafka.sasl.mechanism = 'PLAIN' sends the password in clear: add [kafka.tls]".into());
        }
        match (&sasl.password_file, &sasl.password) {
            (Some(_), Some(_)) => return Err("kafka.sasl: set password_file or password, not both".into()),
            (None, None) => return Err("kafka.sasl: set password_file (or password)".into()),
            (Some(file), None) => {
                password_from(file)?;
            }
            (None, Some(_)) => {}
        }
    }
    Ok(())
}

fn password_from(file: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(file)
        .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("kafka.sasl.password_file {}: {e}", file.display()))
}

/// Sets `security.protocol` and the TLS and SASL settings on a librdkafka configuration.
pub fn apply(config: &mut ClientConfig, tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>) -> Result<(), String> {
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    if let Some(tls) = tls {
        // Verify the broker's certificate and its name (librdkafka's defaults, stated here).
        config.set("enable.ssl.certificate.verification", "true");
        config.set("ssl.endpoint.identification.algorithm", "https");
        if let Some(ca) = &tls.ca_cert {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            config.set("ssl.certificate.location", cert.display().to_string());
            config.set("ssl.key.location", key.display().to_string());
        }
    }
    if let Some(sasl) = sasl {
        let password = match (&sasl.password_file, &sasl.password) {
            (Some(file), _) => password_from(file)?,
            (None, Some(password)) => password.clone(),
            (None, None) => return Err("kafka.sasl: set password_file (or password)".into()),
        };
        config.set("sasl.mechanism", &sasl.mechanism);
        config.set("sasl.username", &sasl.username);
        config.set("sasl.password", password);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_the_password_out() {
        let shown = format!("{:?}", sasl("PLAIN"));
        assert!(!shown.contains("secret") && shown.contains("<redacted>") && shown.contains("vigil"), "{shown}");
    }

    fn sasl(mechanism: &str) -> KafkaSasl {
        KafkaSasl {
            mechanism: mechanism.into(),
            username: "vigil".into(),
            password_file: None,
            password: Some("secret".into()),
        }
    }

    #[test]
    fn protocol_follows_what_is_configured() {
        let protocol = |tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>| {
            let mut c = ClientConfig::new();
            apply(&mut c, tls, sasl).unwrap();
            c.get("security.protocol").unwrap().to_string()
        };
        let tls = KafkaTls::default();
        let scram = sasl("SCRAM-SHA-512");
        assert_eq!(protocol(None, None), "plaintext");
        assert_eq!(protocol(Some(&tls), None), "ssl");
        assert_eq!(protocol(None, Some(&scram)), "sasl_plaintext");
        assert_eq!(protocol(Some(&tls), Some(&scram)), "sasl_ssl");
        let mut c = ClientConfig::new();
        apply(&mut c, Some(&tls), Some(&scram)).unwrap();
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("secret"));
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("https"));
    }

    #[test]
    fn password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let s = KafkaSasl { password_file: Some(file), password: None, ..sasl("SCRAM-SHA-256") };
        validate(None, Some(&s)).unwrap();
        let mut c = ClientConfig::new();
        apply(&mut c, None, Some(&s)).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>| validate(tls, sasl).unwrap_err();
        assert!(err(None, Some(&sasl("GSSAPI"))).contains("kafka.sasl.mechanism = 'GSSAPI'"));
        assert!(err(None, Some(&sasl("PLAIN"))).contains("add [kafka.tls]"));
        let no_password = KafkaSasl { password: None, ..sasl("SCRAM-SHA-256") };
        assert!(err(None, Some(&no_password)).contains("password_file"));
        let missing =
            KafkaSasl { password: None, password_file: Some("/nonexistent/pw".into()), ..sasl("SCRAM-SHA-256") };
        assert!(err(None, Some(&missing)).contains("/nonexistent/pw"));
        let half = KafkaTls { client_cert: Some("/etc/hostname".into()), ..KafkaTls::default() };
        assert!(err(Some(&half), None).contains("client_cert and client_key go together"));
        let absent = KafkaTls { ca_cert: Some("/nonexistent/ca.pem".into()), ..KafkaTls::default() };
        assert!(err(Some(&absent), None).contains("/nonexistent/ca.pem"));
    }
}
