//! Bearer-token authentication and scope-based authorisation. Tokens come from a file of
//! SHA-256 hashes (random tokens made by `vigil token new`; the file holds no secret) or are
//! JWTs verified against a JWKS file; both files are read again when they change. Each gRPC
//! method and HTTP path needs one [`Access`]; a call without a valid token is refused as
//! UNAUTHENTICATED (HTTP 401), one whose token lacks the scope as PERMISSION_DENIED (403), and
//! every refusal is counted. The caller ([`Caller`]) travels in the request's extensions.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lasting::{self, AuthBody, Recheck};
use crate::reload::Reloading;

/// What a token may do. Each token lists its scopes; none implies another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Prediction APIs: ModelInfer, Inspect, voice search.
    Infer,
    /// Read-only analysis: queries, metrics, drift, alerts, the dashboard, statistics.
    Analyst,
    /// Ground truth and people's decisions: labels, feedback, the review queue.
    Operator,
    /// Changing what is served: model load and unload.
    Admin,
    /// Servers following their deployments from the monitor (the control plane).
    Control,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 5] = [Scope::Infer, Scope::Analyst, Scope::Operator, Scope::Admin, Scope::Control];

    /// The scope's name in token files and JWT `scope` claims.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Analyst => "analyst",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
            Scope::Control => "control",
        }
    }

    /// The scope named `name`, if any.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a method or path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks).
    Open,
    /// Any valid token (service discovery through reflection).
    AnyToken,
    /// A token with this scope.
    Scope(Scope),
}

/// Who called, as their token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name in the tokens file, or the JWT's subject.
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// `[auth]`: where tokens are defined. Neither file set: authentication is off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// TOML file of `[[token]]` entries: `name`, `sha256` (hex of the token's SHA-256), `scopes`.
    pub tokens_file: Option<PathBuf>,
    /// JSON Web Key Set file; JWTs signed by one of its keys are accepted.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every JWT must carry, when set.
    pub jwt_issuer: Option<String>,
    /// The `aud` every JWT must carry, when set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's `exp` and `nbf`, in seconds (at most
    /// [`MAX_JWT_LEEWAY_S`]): a token expired this long ago is still taken.
    pub jwt_leeway_s: u64,
    /// `/metrics` served without a token (Prometheus scrapers); false: it needs `analyst`.
    pub open_metrics: bool,
    /// How often the files are checked for changes, in milliseconds (0: never).
    pub reload_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: DEFAULT_JWT_LEEWAY_S,
            open_metrics: true,
            reload_interval_ms: 5_000,
        }
    }
}

/// The clock skew allowed on JWTs unless configured (the usual 60 s of OpenID Connect
/// libraries and proxies).
pub const DEFAULT_JWT_LEEWAY_S: u64 = 60;
/// The most `jwt_leeway_s` may be: beyond it a revoked identity's last token would outlive its
/// expiry by more than the refresh period of most identity providers.
pub const MAX_JWT_LEEWAY_S: u64 = 300;

/// One entry of the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// Lowercase hex of the SHA-256 of the token.
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// The tokens file, by hash.
struct TokenTable(HashMap<String, Caller>);

fn load_tokens(path: &std::path::Path) -> Result<TokenTable> {
    let text = std::fs::read_to_string(path).with_context(|| format!("auth.tokens_file = {}", path.display()))?;
    let file: TokensFile =
        toml::from_str(&text).with_context(|| format!("auth.tokens_file = {}: not a tokens file", path.display()))?;
    let mut table = HashMap::new();
    for entry in file.token {
        let hash = entry.sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("auth.tokens_file = {}: token '{}' has no 64-digit hex sha256", path.display(), entry.name);
        }
        let caller = Caller { name: entry.name.clone(), scopes: entry.scopes };
        if table.insert(hash, caller).is_some() {
            anyhow::bail!("auth.tokens_file = {}: token '{}' is listed twice", path.display(), entry.name);
        }
    }
    Ok(TokenTable(table))
}

/// Lowercase hex of the SHA-256 of `token`, as the tokens file stores it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A tokens file's `[[token]]` entry for `name` holding `scopes`, by the token's `hash`; the
/// name is written as a TOML string, escaped as it needs (`CORP\maria`, quotes).
pub fn token_entry(name: &str, hash: &str, scopes: &[Scope]) -> String {
    let scopes = scopes.iter().map(|s| format!("\"{}\"", s.name())).collect::<Vec<_>>().join(", ");
    let name = toml::Value::String(name.to_string());
    format!("[[token]]\nname = {name}\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n")
}

/// A new random token (256 bits, `vgl_` and 64 hex digits) and its hash for the tokens file.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("vgl_{}", hex::encode(bytes));
    let hash = token_hash(&token);
    (token, hash)
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    sub: String,
    /// Space-separated scopes (RFC 8693).
    #[serde(default)]
    scope: Option<String>,
    /// Scopes as a list (Okta and others) or, as Azure AD writes it, space-separated.
    #[serde(default)]
    scp: Option<Scopes>,
}

/// A `scp` claim: a list of scope names, or one string of them separated by spaces.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Spaced(String),
}

impl Scopes {
    fn names(self) -> Vec<String> {
        match self {
            Scopes::List(names) => names,
            Scopes::Spaced(text) => text.split_whitespace().map(str::to_string).collect(),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Authenticated (a valid token) but lacking the scope.
    pub denied: bool,
    /// `missing`, `invalid` or `scope`, as counted (`revoked`: a lasting call ended mid-way).
    pub reason: &'static str,
    pub message: String,
}

/// Checks bearer tokens against the tokens file and the JWKS.
pub struct Authenticator {
    tokens: Option<Reloading<TokenTable>>,
    jwks: Option<Reloading<jsonwebtoken::jwk::JwkSet>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    open_metrics: bool,
    /// How often a lasting call's token is checked again.
    recheck_every: Duration,
}

/// How often a lasting call's token is checked again when the files are never re-read (a JWT
/// still expires).
const RECHECK_WITHOUT_RELOAD: Duration = Duration::from_secs(5);

impl Authenticator {
    /// Reads the files `config` names (and starts watching them); None when it names none.
    pub fn load(config: &AuthConfig) -> Result<Option<Self>> {
        if config.tokens_file.is_none() && config.jwks_file.is_none() {
            // Settings that only mean something with tokens checked: without a source of tokens
            // they would leave every call open while the file reads as if it were protected.
            let set = [
                ("jwt_issuer", config.jwt_issuer.is_some()),
                ("jwt_audience", config.jwt_audience.is_some()),
                ("open_metrics = false", !config.open_metrics),
            ];
            let set: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
            if !set.is_empty() {
                anyhow::bail!(
                    "[security.auth] sets {} but neither tokens_file nor jwks_file: no token would be checked and \
                     every call would be allowed; name a tokens file or a JWKS file, or remove those settings",
                    set.join(", ")
                );
            }
            return Ok(None);
        }
        if config.jwt_leeway_s > MAX_JWT_LEEWAY_S {
            anyhow::bail!(
                "[security.auth] jwt_leeway_s = {} is over the most allowed, {MAX_JWT_LEEWAY_S}: it is the clock \
                 skew allowed on a token's expiry; keep the servers' clocks in sync (NTP) instead",
                config.jwt_leeway_s
            );
        }
        if config.jwks_file.is_some() && config.jwt_audience.as_deref().is_none_or(str::is_empty) {
            // A key set is often an identity provider's, shared by every application it serves:
            // without an audience, a token minted for any of them would be taken here.
            anyhow::bail!(
                "[security.auth] jwks_file needs jwt_audience: name the audience your identity provider \
                 puts in the tokens it issues for Vigil (the `aud` claim), so that tokens for other \
                 applications are refused"
            );
        }
        let interval = Duration::from_millis(config.reload_interval_ms);
        let tokens = config
            .tokens_file
            .clone()
            .map(|path| Reloading::start("tokens file", vec![path.clone()], interval, move || load_tokens(&path)))
            .transpose()?;
        let jwks = config
            .jwks_file
            .clone()
            .map(|path| {
                Reloading::start("JWKS file", vec![path.clone()], interval, move || {
                    let text = std::fs::read(&path).with_context(|| format!("auth.jwks_file = {}", path.display()))?;
                    serde_json::from_slice(&text)
                        .with_context(|| format!("auth.jwks_file = {}: not a JSON Web Key Set", path.display()))
                })
            })
            .transpose()?;
        Ok(Some(Self {
            tokens,
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_s: config.jwt_leeway_s,
            open_metrics: config.open_metrics,
            recheck_every: if interval.is_zero() { RECHECK_WITHOUT_RELOAD } else { interval },
        }))
    }

    /// Whether `/metrics` needs no token.
    pub fn open_metrics(&self) -> bool {
        self.open_metrics
    }

    /// Who `headers`' bearer token belongs to, if it is valid.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let unauthenticated = |reason, message: &str| Refusal { denied: false, reason, message: message.to_string() };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthenticated("missing", "missing bearer token (authorization: Bearer <token>)"));
        };
        let value = value.to_str().map_err(|_| unauthenticated("invalid", "authorization header is not text"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthenticated("invalid", "authorization header is not 'Bearer <token>'")),
        };
        if let Some(caller) = self.tokens.as_ref().and_then(|t| t.get().0.get(&token_hash(token)).cloned()) {
            return Ok(caller);
        }
        if let Some(jwks) = &self.jwks
            && token.matches('.').count() == 2
        {
            return self.verify_jwt(&jwks.get(), token).map_err(|e| unauthenticated("invalid", &e));
        }
        Err(unauthenticated("invalid", "invalid token"))
    }

    fn verify_jwt(&self, jwks: &jsonwebtoken::jwk::JwkSet, token: &str) -> Result<Caller, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid),
            None if jwks.keys.len() == 1 => jwks.keys.first(),
            None => None,
        }
        .ok_or("invalid token: signed by a key the JWKS does not hold")?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("invalid token: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        // `load` refuses a key set without an audience. A token must name it (the library
        // passes a token without `aud` unless the claim is required), and its issuer when one
        // is configured.
        validation.set_audience(&[self.audience.as_deref().unwrap_or_default()]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_s;
        let mut required = vec!["exp", "aud"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, &key, &validation).map_err(|e| format!("invalid token: {e}"))?;
        let mut names: Vec<String> =
            data.claims.scope.map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
        names.extend(data.claims.scp.map(Scopes::names).unwrap_or_default());
        let scopes = names.iter().filter_map(|n| Scope::parse(n)).collect();
        Ok(Caller { name: data.claims.sub, scopes })
    }

    /// Whether `headers` may make a call that needs `access`: the caller when a token was
    /// checked, None for an open call.
    pub fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<Option<Caller>, Refusal> {
        let scope = match access {
            Access::Open => return Ok(None),
            Access::AnyToken => None,
            Access::Scope(scope) => Some(scope),
        };
        let caller = self.authenticate(headers)?;
        match scope {
            Some(scope) if !caller.has(scope) => Err(Refusal {
                denied: true,
                reason: "scope",
                message: format!("token '{}' lacks the '{}' scope", caller.name, scope.name()),
            }),
            _ => Ok(Some(caller)),
        }
    }
}

/// What each gRPC method needs (by its path `/package.Service/Method`); a method not listed
/// needs `admin`, so that a new method is closed until it is given its scope here.
pub fn grpc_access(path: &str) -> Access {
    use Scope::*;
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Access::Scope(Admin);
    };
    let scope = match (service, method) {
        ("grpc.health.v1.Health", _) => return Access::Open,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            return Access::AnyToken;
        }
        // Liveness and readiness, as orchestrators probe them.
        ("inference.GRPCInferenceService", "ServerLive" | "ServerReady") => return Access::Open,
        (
            "inference.GRPCInferenceService",
            "ModelReady" | "ServerMetadata" | "ModelMetadata" | "ModelConfig" | "ModelInfer" | "ModelStreamInfer",
        ) => Infer,
        ("inference.GRPCInferenceService", "ModelStatistics" | "RepositoryIndex") => Analyst,
        ("inference.GRPCInferenceService", "RepositoryModelLoad" | "RepositoryModelUnload") => Admin,
        ("vigil.v1.Inspection", "Inspect" | "InspectStream") => Infer,
        ("vigil.v1.VoiceSearch", "Search" | "Feedback") => Infer,
        ("vigil.v1.Monitoring", "GetMetrics" | "GetDrift" | "ListAlerts") => Analyst,
        ("vigil.v1.Monitoring", "SubmitLabels" | "SubmitFeedback") => Operator,
        ("vigil.v1.PredictionLog", "QueryPredictions") => Analyst,
        ("vigil.v1.Control", "WatchDeployments" | "FetchArtifact") => Control,
        _ => Admin,
    };
    Access::Scope(scope)
}

/// What each HTTP path of a Vigil server needs: health and the static pages are open, the
/// dashboard's data needs `analyst`, the review queue `operator`, `/metrics` `analyst` unless
/// [`AuthConfig::open_metrics`].
pub fn http_access(path: &str) -> Access {
    match path {
        // The pages and their assets, by name: they hold no data (their calls to /api/ do).
        "/healthz" | "/" | "/review" | "/auth.js" | "/dashboard.js" | "/dashboard.css" | "/review.js" => Access::Open,
        "/metrics" => Access::Scope(Scope::Analyst),
        p if p.starts_with("/api/review/") => Access::Scope(Scope::Operator),
        p if p.starts_with("/api/") => Access::Scope(Scope::Analyst),
        _ => Access::Scope(Scope::Admin),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
    scope: &'static str,
}

/// Refused calls, by reason (`missing`, `invalid`, `scope`; `revoked` for a lasting call ended
/// because its token no longer passes) and the scope they needed.
#[derive(Clone, Default)]
pub struct AuthMetrics {
    refusals: Family<RefusalLabels, Counter>,
}

impl AuthMetrics {
    /// Registers `vigil_auth_refusals_total` in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "vigil_auth_refusals",
            "Calls refused for a missing or invalid token (reason) or a missing scope",
            metrics.refusals.clone(),
        );
        metrics
    }

    /// Refusals counted so far for `reason`.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        Scope::ALL
            .iter()
            .map(|s| s.name())
            .chain(["token"])
            .map(|scope| self.refusals.get_or_create(&RefusalLabels { reason, scope }).get())
            .sum()
    }

    pub(crate) fn count(&self, refusal: &Refusal, access: Access) {
        let scope = match access {
            Access::Scope(scope) => scope.name(),
            _ => "token",
        };
        self.refusals.get_or_create(&RefusalLabels { reason: refusal.reason, scope }).inc();
    }
}

/// Authorisation for a tonic server: `Server::builder().layer(security.grpc_layer(..))`.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Option<Arc<Authenticator>>,
    metrics: AuthMetrics,
}

impl GrpcAuthLayer {
    /// Checks every call with `auth` (None: every call passes).
    pub fn new(auth: Option<Arc<Authenticator>>, metrics: AuthMetrics) -> Self {
        Self { auth, metrics }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth { inner, auth: self.auth.clone(), metrics: self.metrics.clone() }
    }
}

/// The service [`GrpcAuthLayer`] makes.
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    metrics: AuthMetrics,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let mut recheck = None;
        if let Some(auth) = &self.auth {
            let access = grpc_access(request.uri().path());
            match auth.authorize(request.headers(), access) {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                    if lasting::is_lasting(request.uri().path()) {
                        let mut headers = HeaderMap::new();
                        if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
                            headers.insert(http::header::AUTHORIZATION, value.clone());
                        }
                        let (auth, metrics, every) = (auth.clone(), self.metrics.clone(), auth.recheck_every);
                        recheck = Some(Recheck { auth, metrics, headers, access, every });
                    }
                }
                Ok(None) => {}
                Err(refusal) => {
                    self.metrics.count(&refusal, access);
                    let status = match refusal.denied {
                        true => tonic::Status::permission_denied(refusal.message),
                        false => tonic::Status::unauthenticated(refusal.message),
                    };
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(match recheck {
                Some(check) => response.map(|body| AuthBody::rechecked(body, check)),
                None => response.map(AuthBody::plain),
            })
        })
    }
}

/// Puts `router` behind bearer tokens, each path needing what `access` says (with `/metrics`
/// open when the configuration says so). Without an authenticator the router is unchanged.
pub fn protect_http(
    router: axum::Router,
    auth: Option<Arc<Authenticator>>,
    access: fn(&str) -> Access,
    metrics: AuthMetrics,
) -> axum::Router {
    use axum::response::IntoResponse;
    let Some(auth) = auth else { return router };
    router.layer(axum::middleware::from_fn(move |mut request: axum::extract::Request, next: axum::middleware::Next| {
        let (auth, metrics) = (auth.clone(), metrics.clone());
        async move {
            let path = request.uri().path();
            let needed = if path == "/metrics" && auth.open_metrics() { Access::Open } else { access(path) };
            match auth.authorize(request.headers(), needed) {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    next.run(request).await
                }
                Err(refusal) => {
                    metrics.count(&refusal, needed);
                    let status = match refusal.denied {
                        true => http::StatusCode::FORBIDDEN,
                        false => http::StatusCode::UNAUTHORIZED,
                    };
                    (status, [(http::header::WWW_AUTHENTICATE, "Bearer")], refusal.message).into_response()
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_for_any_name_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let names = ["CORP\\maria", "ben \"the builder\"", "line-3 · Prüfstand", "\\u0041"];
        let mut text = String::new();
        let mut hashes = Vec::new();
        for name in names {
            let (token, hash) = new_token();
            text.push_str(&token_entry(name, &hash, &[Scope::Infer]));
            hashes.push((token_hash(&token), name));
        }
        std::fs::write(&path, text).unwrap();
        let table = load_tokens(&path).unwrap();
        for (hash, name) in hashes {
            assert_eq!(table.0[&hash].name, name);
        }
    }

    #[test]
    fn auth_settings_without_a_source_of_tokens_are_refused() {
        let issuer = AuthConfig { jwt_issuer: Some("https://id.example".into()), ..AuthConfig::default() };
        let closed = AuthConfig { open_metrics: false, ..AuthConfig::default() };
        for (config, named) in [(issuer, "jwt_issuer"), (closed, "open_metrics = false")] {
            let Err(e) = Authenticator::load(&config) else { panic!("{named}: accepted with no tokens checked") };
            let e = e.to_string();
            assert!(e.contains(named) && e.contains("neither tokens_file nor jwks_file"), "{e}");
        }
        assert!(Authenticator::load(&AuthConfig::default()).unwrap().is_none(), "no auth at all is still allowed");
    }
}
