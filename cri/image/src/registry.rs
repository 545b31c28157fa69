//! Registry client: the OCI distribution API (manifests, blobs), per-registry
//! configuration (mirrors, plain-HTTP registries, extra CAs, credentials) and
//! the auth flows (anonymous, basic, bearer token with basic credentials, an
//! identity token as OAuth2 refresh token, or a ready registry token).
//!
//! Written on `reqwest` rather than `oci-client` because the store needs what
//! that crate does not offer: mirrors tried in order with fallback to the
//! upstream registry under the *same* repository path (critest's
//! `registry.k8s.io/…` names served by a local registry), CRI's AuthConfig
//! variants (identity token exchanged through the token endpoint's
//! refresh-token grant, registry token used as is), and blob bodies streamed
//! straight into the content store's temp file while they are hashed, so the
//! store decides when a blob is committed (see [`crate::content`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use reqwest::{Client, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::manifest::MANIFEST_ACCEPT;
use crate::reference::{DOCKER_HUB, Reference};

/// Per-registry settings, keyed by registry host (with port): the host as it
/// appears in image names, e.g. `registry.k8s.io` or `127.0.0.1:5000`.
///
/// ```toml
/// [registries."registry.k8s.io"]
/// mirrors = ["http://127.0.0.1:5000"]
/// [registries."127.0.0.1:5000"]
/// insecure = true
/// [registries."myregistry.example:443"]
/// ca_files = ["/etc/carrack/certs/my-ca.pem"]
/// auth = { username = "u", password = "p" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegistryConfig {
    /// Settings per registry host.
    pub hosts: BTreeMap<String, RegistryHostConfig>,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryHostConfig {
    /// Endpoints tried in order before the registry itself, each
    /// `scheme://host[:port]` or `host[:port]`; the repository path is kept.
    /// Without a scheme, plain HTTP is used for hosts marked `insecure` and for
    /// loopback hosts without `ca_files`, HTTPS otherwise.
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this host.
    pub insecure: bool,
    /// Extra PEM CA certificates trusted for this host.
    pub ca_files: Vec<PathBuf>,
    /// Credentials for this host, used when the pull request carries none.
    pub auth: Option<RegistryCredentials>,
}

/// Credentials in the registry config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// base64(`user:password`), as in docker's config.json.
    pub auth: String,
    /// Identity (refresh) token.
    pub identity_token: String,
}

/// Credentials for one pull, as in CRI's `AuthConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// base64(`user:password`).
    pub auth: String,
    /// Identity token, exchanged for a bearer token (OAuth2 refresh-token grant).
    pub identity_token: String,
    /// Bearer token sent to the registry as is.
    pub registry_token: String,
    /// The registry these credentials are for (informational).
    pub server_address: String,
}

impl RegistryAuth {
    fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some((u.to_owned(), p.to_owned()));
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }
}

impl From<&RegistryCredentials> for RegistryAuth {
    fn from(c: &RegistryCredentials) -> Self {
        RegistryAuth {
            username: c.username.clone(),
            password: c.password.clone(),
            auth: c.auth.clone(),
            identity_token: c.identity_token.clone(),
            ..Default::default()
        }
    }
}

/// One place a repository can be fetched from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://host:port` or `https://host`.
    pub base: String,
    /// `host:port` used to look up settings and cache tokens.
    pub host: String,
    /// Whether this is a mirror (errors fall through to the next endpoint).
    pub mirror: bool,
}

/// A manifest as fetched.
#[derive(Debug)]
pub struct FetchedManifest {
    /// The raw bytes.
    pub bytes: Vec<u8>,
    /// Their sha256 digest.
    pub digest: String,
}

/// The HTTP side of pulls: one connection pool per endpoint host, tokens
/// cached per (host, repository).
#[derive(Debug)]
pub struct RegistryClient {
    config: RegistryConfig,
    clients: Mutex<HashMap<String, Client>>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl RegistryClient {
    /// A client for `config`.
    pub fn new(config: RegistryConfig) -> Self {
        RegistryClient {
            config,
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn host_config(&self, host: &str) -> Option<&RegistryHostConfig> {
        self.config.hosts.get(host)
    }

    /// The endpoints to try for `registry`, mirrors first.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if let Some(hc) = self.host_config(registry) {
            for m in &hc.mirrors {
                let m = m.trim_end_matches('/');
                let (scheme, host) = match m.split_once("://") {
                    Some((s, h)) => (Some(s), h),
                    None => (None, m),
                };
                let scheme = scheme.unwrap_or_else(|| self.default_scheme(host));
                out.push(Endpoint {
                    base: format!("{scheme}://{host}"),
                    host: host.to_owned(),
                    mirror: true,
                });
            }
        }
        let host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        out.push(Endpoint {
            base: format!("{}://{host}", self.default_scheme(registry)),
            host: registry.to_owned(),
            mirror: false,
        });
        out
    }

    /// `http` for hosts marked insecure, `https` for hosts with extra CAs,
    /// `http` for other loopback hosts, `https` for everything else.
    fn default_scheme(&self, host: &str) -> &'static str {
        match self.host_config(host) {
            Some(h) if h.insecure => "http",
            Some(h) if !h.ca_files.is_empty() => "https",
            _ if is_loopback(host) => "http",
            _ => "https",
        }
    }

    fn client(&self, host: &str) -> Result<Client, ImageError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let mut b = Client::builder()
            .user_agent(concat!("carrack/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .tcp_nodelay(true);
        if let Some(hc) = self.host_config(host) {
            for f in &hc.ca_files {
                let pem = std::fs::read(f).map_err(|e| ImageError::Config {
                    host: host.to_owned(),
                    reason: format!("ca_files: cannot read {}: {e}", f.display()),
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ImageError::Config {
                        host: host.to_owned(),
                        reason: format!("ca_files: {} is not PEM: {e}", f.display()),
                    }
                })?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
        }
        let c = b.build().map_err(|e| ImageError::Config {
            host: host.to_owned(),
            reason: format!("cannot build HTTP client: {e}"),
        })?;
        clients.insert(host.to_owned(), c.clone());
        Ok(c)
    }

    /// Credentials to use at `ep`: a mirror's own configured credentials, else
    /// the request's, else the registry's configured ones.
    fn credentials(&self, ep: &Endpoint, auth: Option<&RegistryAuth>) -> Option<RegistryAuth> {
        let configured = self
            .host_config(&ep.host)
            .and_then(|h| h.auth.as_ref())
            .map(RegistryAuth::from);
        if ep.mirror && configured.is_some() {
            return configured;
        }
        match auth {
            Some(a) if !a.is_empty() => Some(a.clone()),
            _ => configured,
        }
    }

    /// GETs `path` (under `/v2/<repo>/`) at `ep`, doing the auth dance on 401.
    pub async fn get(
        &self,
        ep: &Endpoint,
        repository: &str,
        path: &str,
        accept: Option<&str>,
        auth: Option<&RegistryAuth>,
    ) -> Result<Response, ImageError> {
        let client = self.client(&ep.host)?;
        let url = format!("{}/v2/{repository}/{path}", ep.base);
        let creds = self.credentials(ep, auth);
        let key = (ep.host.clone(), repository.to_owned());
        let send = |authz: Option<String>| {
            let mut req = client.get(&url);
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(a) = authz {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.send()
        };
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .or_else(|| {
                creds
                    .as_ref()
                    .filter(|c| !c.registry_token.is_empty())
                    .map(|c| format!("Bearer {}", c.registry_token))
            });
        let transport = |e: reqwest::Error| ImageError::Registry {
            registry: ep.base.clone(),
            reason: format!("GET {url}: {}", error_chain(&e)),
        };
        let resp = send(cached.clone()).await.map_err(transport)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let authz = self
            .authorize(ep, repository, &challenge, creds.as_ref())
            .await?;
        let resp = send(Some(authz.clone())).await.map_err(transport)?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(ImageError::Unauthorized {
                registry: ep.host.clone(),
                repository: repository.to_owned(),
                reason: format!("{} after authenticating", resp.status()),
            });
        }
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, authz);
        Ok(resp)
    }

    /// Builds an Authorization header value answering `challenge`.
    async fn authorize(
        &self,
        ep: &Endpoint,
        repository: &str,
        challenge: &str,
        creds: Option<&RegistryAuth>,
    ) -> Result<String, ImageError> {
        let unauthorized = |reason: String| ImageError::Unauthorized {
            registry: ep.host.clone(),
            repository: repository.to_owned(),
            reason,
        };
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (u, p) = creds.and_then(RegistryAuth::basic).ok_or_else(|| {
                unauthorized("basic auth required and no credentials given".into())
            })?;
            return Ok(basic_header(&u, &p));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized(format!(
                "unsupported WWW-Authenticate challenge {challenge:?}"
            )));
        }
        let realm = params.get("realm").ok_or_else(|| {
            unauthorized(format!("bearer challenge without realm: {challenge:?}"))
        })?;
        let service = params.get("service").cloned().unwrap_or_default();
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{repository}:pull"));
        let client = self.client(&ep.host)?;
        let resp = if let Some(tok) = creds.filter(|c| !c.identity_token.is_empty()) {
            let body = format!(
                "grant_type=refresh_token&client_id=carrack&service={}&scope={}&refresh_token={}",
                form_escape(&service),
                form_escape(&scope),
                form_escape(&tok.identity_token)
            );
            client
                .post(realm)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
        } else {
            let mut req = client
                .get(realm)
                .query(&[("service", service.as_str()), ("scope", scope.as_str())]);
            if let Some((u, p)) = creds.and_then(RegistryAuth::basic) {
                req = req.header(header::AUTHORIZATION, basic_header(&u, &p));
            }
            req.send().await
        }
        .map_err(|e| ImageError::Registry {
            registry: ep.host.clone(),
            reason: format!("token endpoint {realm}: {}", error_chain(&e)),
        })?;
        if !resp.status().is_success() {
            return Err(unauthorized(format!(
                "token endpoint {realm} answered {}",
                resp.status()
            )));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp.bytes().await.map_err(|e| ImageError::Registry {
            registry: ep.host.clone(),
            reason: format!("token endpoint {realm}: {e}"),
        })?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(format!("token endpoint {realm}: invalid JSON: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized(format!("token endpoint {realm}: no token in answer")))?;
        Ok(format!("Bearer {token}"))
    }

    /// Fetches the manifest `reference` names from the first endpoint that has
    /// it. Returns the endpoint that answered, so blobs come from it too.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        auth: Option<&RegistryAuth>,
    ) -> Result<(Endpoint, FetchedManifest), ImageError> {
        let mut errors = Vec::new();
        for ep in self.endpoints(&reference.registry) {
            match self
                .fetch_manifest_at(
                    &ep,
                    &reference.repository,
                    reference.manifest_reference(),
                    auth,
                )
                .await
            {
                Ok(m) => return Ok((ep, m)),
                Err(e) if ep.mirror => {
                    tracing::debug!(mirror = %ep.base, error = %e, "mirror failed, trying next endpoint");
                    errors.push(format!("mirror {}: {e}", ep.base));
                }
                Err(e) => {
                    if errors.is_empty() {
                        return Err(e);
                    }
                    return Err(match e {
                        ImageError::Registry { registry, reason } => ImageError::Registry {
                            registry,
                            reason: format!("{reason} (after {})", errors.join("; ")),
                        },
                        other => other,
                    });
                }
            }
        }
        unreachable!("endpoints() always ends with the registry itself")
    }

    /// Fetches one manifest by tag or digest at `ep`, with the size limit.
    pub async fn fetch_manifest_at(
        &self,
        ep: &Endpoint,
        repository: &str,
        reference: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<FetchedManifest, ImageError> {
        let resp = self
            .get(
                ep,
                repository,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
                auth,
            )
            .await?;
        let what = format!("manifest {repository}:{reference}");
        let bytes = read_limited(ep, resp, &what, crate::manifest::MAX_MANIFEST_BYTES).await?;
        let digest = crate::content::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(ImageError::DigestMismatch {
                digest: reference.to_owned(),
                expected: reference.to_owned(),
                actual: digest,
            });
        }
        Ok(FetchedManifest { bytes, digest })
    }

    /// Starts a blob download; the caller streams the body.
    pub async fn fetch_blob(
        &self,
        ep: &Endpoint,
        repository: &str,
        digest: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Response, ImageError> {
        let resp = self
            .get(ep, repository, &format!("blobs/{digest}"), None, auth)
            .await?;
        check_status(ep, resp, &format!("blob {repository}@{digest}"))
    }
}

fn check_status(ep: &Endpoint, resp: Response, what: &str) -> Result<Response, ImageError> {
    match resp.status() {
        s if s.is_success() => Ok(resp),
        StatusCode::NOT_FOUND => Err(ImageError::RegistryNotFound {
            registry: ep.host.clone(),
            what: what.to_owned(),
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ImageError::Unauthorized {
            registry: ep.host.clone(),
            repository: what.to_owned(),
            reason: resp.status().to_string(),
        }),
        s => Err(ImageError::Registry {
            registry: ep.host.clone(),
            reason: format!("{what}: HTTP {s}"),
        }),
    }
}

/// Reads a small body (manifest, config), refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    ep: &Endpoint,
    resp: Response,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, ImageError> {
    let mut resp = check_status(ep, resp, what)?;
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(ImageError::TooLarge {
            what: "manifest",
            digest: what.to_owned(),
            size: len,
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ImageError::Registry {
        registry: ep.host.clone(),
        reason: format!("{what}: {}", error_chain(&e)),
    })? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: "manifest",
                digest: what.to_owned(),
                size: out.len() as u64,
                limit,
            });
        }
    }
    Ok(out)
}

/// An error and its causes, `: `-separated (reqwest's Display hides the
/// cause, e.g. which certificate check failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `Bearer realm="…",service="…"` into the scheme and its parameters.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        params.insert(k, value.to_owned());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
    }

    #[test]
    fn mirrors_come_first_and_keep_scheme_rules() {
        let cfg: RegistryConfig = serde_json::from_str(
            r#"{"registry.k8s.io":{"mirrors":["127.0.0.1:5000","https://m.example"]},
                "plain.example":{"insecure":true}}"#,
        )
        .unwrap();
        let c = RegistryClient::new(cfg);
        let eps = c.endpoints("registry.k8s.io");
        let bases: Vec<_> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://127.0.0.1:5000",
                "https://m.example",
                "https://registry.k8s.io"
            ]
        );
        assert_eq!(c.endpoints("plain.example")[0].base, "http://plain.example");
        assert_eq!(
            c.endpoints("docker.io")[0].base,
            "https://registry-1.docker.io"
        );
    }

    #[test]
    fn reads_the_daemon_toml() {
        #[derive(Deserialize)]
        struct Daemon {
            registries: RegistryConfig,
        }
        let d: Daemon = toml::from_str(
            r#"
            [registries."registry.k8s.io"]
            mirrors = ["http://127.0.0.1:5000"]
            [registries."127.0.0.1:5000"]
            insecure = true
            [registries."private.example"]
            ca_files = ["/etc/carrack/ca.pem"]
            auth = { username = "u", password = "p" }
            "#,
        )
        .unwrap();
        let h = &d.registries.hosts;
        assert_eq!(h["registry.k8s.io"].mirrors, ["http://127.0.0.1:5000"]);
        assert!(h["127.0.0.1:5000"].insecure);
        assert_eq!(h["private.example"].auth.as_ref().unwrap().username, "u");
        assert!(toml::from_str::<Daemon>("[registries.x]\nmirror = []\n").is_err());
    }

    #[test]
    fn decodes_auth_field() {
        let a = RegistryAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:q"),
            ..Default::default()
        };
        assert_eq!(a.basic(), Some(("u".into(), "p:q".into())));
    }
}
