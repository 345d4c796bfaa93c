//! Bearer tokens: a hashed tokens file (read again when it changes) and JWTs checked against a
//! JWKS file (Ed25519, made for the test); missing, invalid, expired and foreign tokens are
//! UNAUTHENTICATED, a token without the scope PERMISSION_DENIED, and each refusal is counted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::HeaderMap;
use vigil_security::auth::{self, Access, AuthConfig, AuthMetrics, Authenticator, Scope};

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    headers
}

fn tokens_file(entries: &[(&str, &str, &[&str])]) -> String {
    entries
        .iter()
        .map(|(name, token, scopes)| {
            let scopes = scopes.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
            format!("[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n", auth::token_hash(token))
        })
        .collect()
}

#[tokio::test]
async fn tokens_from_the_file_carry_their_scopes_and_changes_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let (line, _) = auth::new_token();
    let (analyst, _) = auth::new_token();
    assert!(line.starts_with("vgl_") && line.len() == 68 && line != analyst);
    std::fs::write(&path, tokens_file(&[("line-3", &line, &["infer"]), ("ana", &analyst, &["analyst", "operator"])]))
        .unwrap();
    let config = AuthConfig { tokens_file: Some(path.clone()), reload_interval_ms: 50, ..Default::default() };
    let auth = Authenticator::load(&config).unwrap().expect("configured");
    let infer = Access::Scope(Scope::Infer);

    let caller = auth.authorize(&bearer(&line), infer).unwrap().unwrap();
    assert_eq!((caller.name.as_str(), caller.scopes.as_slice()), ("line-3", &[Scope::Infer][..]));
    let denied = auth.authorize(&bearer(&analyst), infer).unwrap_err();
    assert!(denied.denied && denied.message.contains("'ana' lacks the 'infer' scope"), "{denied:?}");
    let missing = auth.authorize(&HeaderMap::new(), infer).unwrap_err();
    assert!(!missing.denied && missing.reason == "missing");
    let wrong = auth.authorize(&bearer("vgl_not-a-token"), infer).unwrap_err();
    assert!(!wrong.denied && wrong.reason == "invalid");
    let mut basic = HeaderMap::new();
    basic.insert(http::header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
    assert_eq!(auth.authorize(&basic, infer).unwrap_err().reason, "invalid");
    assert_eq!(auth.authorize(&HeaderMap::new(), Access::Open).unwrap(), None, "open needs nothing");
    assert!(auth.authorize(&bearer(&analyst), Access::AnyToken).unwrap().is_some());

    // The line's token is revoked and the analyst's given `infer`: no restart.
    std::fs::write(&path, tokens_file(&[("ana", &analyst, &["analyst", "infer"])])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while auth.authorize(&bearer(&line), infer).is_ok() {
        assert!(Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(auth.authorize(&bearer(&analyst), infer).is_ok());
    // A broken file keeps the last good table.
    std::fs::write(&path, "[[token]]\nname = 1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(auth.authorize(&bearer(&analyst), infer).is_ok());
    // The analyst's token rotated by a tool that keeps the file's times (`cp -p`): the same
    // size, the same modification time, the new token in force and the old one not.
    std::fs::write(&path, tokens_file(&[("anb", &analyst, &["analyst", "infer"])])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while auth.authorize(&bearer(&analyst), infer).map_or(true, |c| c.unwrap().name != "anb") {
        assert!(Instant::now() < deadline, "the mended file was never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let (rotated, _) = auth::new_token();
    let text = tokens_file(&[("anb", &rotated, &["analyst", "infer"])]);
    assert_eq!(text.len() as u64, std::fs::metadata(&path).unwrap().len());
    std::fs::write(&path, text).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while auth.authorize(&bearer(&rotated), infer).is_err() {
        assert!(Instant::now() < deadline, "the rotated token never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(auth.authorize(&bearer(&analyst), infer).is_err(), "the old token still works");
}

/// A tokens file rewritten in place passes through empty (a valid file with no token): read
/// at that moment it would revoke every token, and end every lasting call, for an interval.
/// The reload waits until the file stays the same for an interval.
#[tokio::test]
async fn a_tokens_file_caught_mid_write_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let (line, _) = auth::new_token();
    let text = tokens_file(&[("line-3", &line, &["infer"])]);
    std::fs::write(&path, &text).unwrap();
    let config = AuthConfig { tokens_file: Some(path.clone()), reload_interval_ms: 300, ..Default::default() };
    let auth = Authenticator::load(&config).unwrap().expect("configured");
    let infer = Access::Scope(Scope::Infer);
    // Each round leaves the file empty for a fifth of an interval (a busy machine may stretch
    // that fourfold before the reload could see it twice), and rounds last a little longer each
    // time, so that the empty spells fall at every phase of the reload's ticks.
    for round in 0..20 {
        std::fs::write(&path, "").unwrap();
        let written = Instant::now();
        // Empty for less than an interval (seen at most once), then filled again; the token
        // must pass throughout and after.
        while written.elapsed() < Duration::from_millis(60) {
            assert!(auth.authorize(&bearer(&line), infer).is_ok(), "round {round}: refused while empty");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        std::fs::write(&path, &text).unwrap();
        while written.elapsed() < Duration::from_millis(700 + 17 * round) {
            assert!(auth.authorize(&bearer(&line), infer).is_ok(), "round {round}: refused after the write");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[test]
fn a_bad_tokens_file_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, "[[token]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = [\"infer\"]\n").unwrap();
    let config = AuthConfig { tokens_file: Some(path), ..Default::default() };
    let error = Authenticator::load(&config).err().unwrap().to_string();
    assert!(error.contains("tokens.toml") && error.contains("64-digit hex"), "{error}");
    std::fs::write(dir.path().join("t2.toml"), "[[token]]\nname = \"x\"\nsha256 = \"\"\nscopes = [\"root\"]\n")
        .unwrap();
    let config = AuthConfig { tokens_file: Some(dir.path().join("t2.toml")), ..Default::default() };
    assert!(format!("{:#}", Authenticator::load(&config).err().unwrap()).contains("root"));
}

fn jwt(key: &rcgen::KeyPair, kid: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[test]
fn jwts_signed_by_a_key_of_the_jwks_are_accepted_with_their_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let config = AuthConfig {
        jwks_file: Some(dir.path().join("jwks.json")),
        jwt_issuer: Some("https://id.plant.example".into()),
        jwt_audience: Some("vigil".into()),
        ..Default::default()
    };
    let auth = Authenticator::load(&config).unwrap().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = |exp: u64, iss: &str, scope: &str| serde_json::json!({"sub": "maria", "iss": iss, "aud": "vigil", "exp": exp, "scope": scope});
    let with = |mut claims: serde_json::Value, extra: serde_json::Value| {
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    };
    let without = |mut claims: serde_json::Value, claim: &str| {
        claims.as_object_mut().unwrap().remove(claim);
        claims
    };
    let good = jwt(&key, "k1", claims(now + 600, "https://id.plant.example", "analyst operator"));
    let caller = auth.authorize(&bearer(&good), Access::Scope(Scope::Operator)).unwrap().unwrap();
    assert_eq!(caller.name, "maria");
    assert_eq!(caller.scopes, vec![Scope::Analyst, Scope::Operator]);
    assert!(auth.authorize(&bearer(&good), Access::Scope(Scope::Admin)).unwrap_err().denied);
    // Scopes in `scp`, as a list or (Azure AD) one space-separated string.
    for scp in [serde_json::json!(["operator", "admin"]), serde_json::json!("operator admin")] {
        let token =
            jwt(&key, "k1", with(claims(now + 600, "https://id.plant.example", ""), serde_json::json!({"scp": scp})));
        let caller = auth.authorize(&bearer(&token), Access::Scope(Scope::Admin)).unwrap().unwrap();
        assert_eq!(caller.scopes, vec![Scope::Operator, Scope::Admin]);
    }

    for (why, token) in [
        ("expired", jwt(&key, "k1", claims(now - 600, "https://id.plant.example", "analyst"))),
        ("another issuer", jwt(&key, "k1", claims(now + 600, "https://evil.example", "analyst"))),
        ("a key not in the JWKS", jwt(&stranger, "k1", claims(now + 600, "https://id.plant.example", "analyst"))),
        ("an unknown key id", jwt(&key, "k9", claims(now + 600, "https://id.plant.example", "analyst"))),
        (
            "another audience",
            jwt(
                &key,
                "k1",
                with(claims(now + 600, "https://id.plant.example", "analyst"), serde_json::json!({"aud": "crm"})),
            ),
        ),
        ("no audience", jwt(&key, "k1", without(claims(now + 600, "https://id.plant.example", "analyst"), "aud"))),
        ("no issuer", jwt(&key, "k1", without(claims(now + 600, "https://id.plant.example", "analyst"), "iss"))),
        (
            "not valid before an hour from now",
            jwt(
                &key,
                "k1",
                with(claims(now + 7200, "https://id.plant.example", "analyst"), serde_json::json!({"nbf": now + 3600})),
            ),
        ),
    ] {
        let refusal = auth.authorize(&bearer(&token), Access::Scope(Scope::Analyst)).unwrap_err();
        assert!(!refusal.denied && refusal.reason == "invalid", "{why}: {refusal:?}");
    }
    // The clock skew allowed: 60 s unless configured. A token expired 30 s ago passes with
    // it, and not with 10 s; one not valid for another 30 s likewise.
    assert_eq!(config.jwt_leeway_s, 60);
    let tight = Authenticator::load(&AuthConfig { jwt_leeway_s: 10, ..config.clone() }).unwrap().unwrap();
    let skewed = [
        ("expired 30 s ago", jwt(&key, "k1", claims(now - 30, "https://id.plant.example", "analyst"))),
        (
            "valid in 30 s",
            jwt(
                &key,
                "k1",
                with(claims(now + 600, "https://id.plant.example", "analyst"), serde_json::json!({"nbf": now + 30})),
            ),
        ),
    ];
    for (why, token) in skewed {
        assert!(auth.authorize(&bearer(&token), Access::Scope(Scope::Analyst)).is_ok(), "{why}, 60 s allowed");
        let refusal = tight.authorize(&bearer(&token), Access::Scope(Scope::Analyst)).unwrap_err();
        assert_eq!(refusal.reason, "invalid", "{why}, 10 s allowed");
    }
    let error = Authenticator::load(&AuthConfig { jwt_leeway_s: 301, ..config.clone() }).err().unwrap().to_string();
    assert!(error.contains("jwt_leeway_s = 301 is over the most allowed, 300"), "{error}");
    // A key set without an audience is refused at start.
    let error = Authenticator::load(&AuthConfig { jwt_audience: None, ..config }).err().unwrap().to_string();
    assert!(error.contains("jwks_file needs jwt_audience"), "{error}");
}

#[test]
fn every_method_has_its_scope_and_unknown_ones_need_admin() {
    use auth::grpc_access;
    assert_eq!(grpc_access("/grpc.health.v1.Health/Check"), Access::Open);
    assert_eq!(grpc_access("/inference.GRPCInferenceService/ModelInfer"), Access::Scope(Scope::Infer));
    assert_eq!(grpc_access("/inference.GRPCInferenceService/RepositoryModelLoad"), Access::Scope(Scope::Admin));
    assert_eq!(grpc_access("/vigil.v1.Control/WatchDeployments"), Access::Scope(Scope::Control));
    assert_eq!(grpc_access("/vigil.v1.Monitoring/SubmitLabels"), Access::Scope(Scope::Operator));
    assert_eq!(grpc_access("/vigil.v1.Monitoring/SomethingNew"), Access::Scope(Scope::Admin));
    assert_eq!(grpc_access("nonsense"), Access::Scope(Scope::Admin));
    assert_eq!(auth::http_access("/api/review/next"), Access::Scope(Scope::Operator));
    assert_eq!(auth::http_access("/api/dashboard"), Access::Scope(Scope::Analyst));
    assert_eq!(auth::http_access("/healthz"), Access::Open);
    assert_eq!(auth::http_access("/dashboard.js"), Access::Open);
    assert_eq!(auth::http_access("/api/review/x.js"), Access::Scope(Scope::Operator), "an API path is never open");
    assert_eq!(auth::http_access("/other.css"), Access::Scope(Scope::Admin), "only the named assets are open");
    let metrics = AuthMetrics::default();
    assert_eq!(metrics.refusals("missing"), 0);
}

/// Every method the servers serve, with the scope the README's table gives it, written out here
/// rather than read from the mapping under test; and every stream that needs a token is
/// checked again while it lasts.
#[test]
fn every_served_method_has_the_documented_scope_and_its_streams_are_rechecked() {
    use auth::grpc_access;
    let documented = |path: &str| -> Option<Access> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        Some(match (service, method) {
            ("grpc.health.v1.Health", _) => Access::Open,
            ("inference.GRPCInferenceService", "ServerLive" | "ServerReady") => Access::Open,
            ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => Access::AnyToken,
            (
                "inference.GRPCInferenceService",
                "ModelInfer" | "ModelStreamInfer" | "ModelMetadata" | "ModelConfig" | "ModelReady" | "ServerMetadata",
            ) => Access::Scope(Scope::Infer),
            ("vigil.v1.Inspection", _) | ("vigil.v1.VoiceSearch", _) => Access::Scope(Scope::Infer),
            ("inference.GRPCInferenceService", "ModelStatistics" | "RepositoryIndex") => Access::Scope(Scope::Analyst),
            ("vigil.v1.PredictionLog", _) => Access::Scope(Scope::Analyst),
            ("vigil.v1.Monitoring", "GetMetrics" | "GetDrift" | "ListAlerts") => Access::Scope(Scope::Analyst),
            ("vigil.v1.Monitoring", "SubmitLabels" | "SubmitFeedback") => Access::Scope(Scope::Operator),
            ("vigil.v1.Control", _) => Access::Scope(Scope::Control),
            ("inference.GRPCInferenceService", "RepositoryModelLoad" | "RepositoryModelUnload") => {
                Access::Scope(Scope::Admin)
            }
            _ => return None,
        })
    };
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(vigil_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                methods.push((path, method.client_streaming() || method.server_streaming()));
            }
        }
    }
    methods.push(("/grpc.health.v1.Health/Watch".into(), true));
    methods.push(("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into(), true));
    assert_eq!(methods.len(), 26, "{methods:?}");
    for (path, streams) in &methods {
        let Some(want) = documented(path) else { panic!("{path}: not in the README's table of scopes") };
        assert_eq!(grpc_access(path), want, "{path}");
        let needs_a_scope = matches!(want, Access::Scope(_));
        assert_eq!(vigil_security::lasting::is_lasting(path), *streams && needs_a_scope, "{path}");
    }
}
