//! The registry bearer-token flow: a real docker-registry behind a small
//! token-checking proxy with its own token endpoint (the way Docker Hub and
//! most registries work: 401 with `WWW-Authenticate: Bearer realm=…`, a token
//! from the realm, the request again with `Authorization: Bearer …`).
//!
//! The token endpoint issues a token for basic credentials
//! (`carrack`/`s3cret`) or for the refresh-token grant with the identity token
//! `id-token-1`; the proxy also accepts the fixed registry token
//! `registry-token-1`.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use carrack_e2e::image_builder::{Compression, ImageSpec, Layer};
use carrack_e2e::registry::Registry;
use carrack_image::{ImageError, RegistryAuth, RegistryConfig};
use common::{TestDir, prerequisites, push, store};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

struct Proxy {
    upstream: String,
    realm: String,
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
}

fn basic_ok(h: Option<&hyper::header::HeaderValue>) -> bool {
    use base64::Engine;
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b) = v.strip_prefix("Basic ") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .is_ok_and(|d| d == b"carrack:s3cret")
}

async fn handle(
    p: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |s: StatusCode, body: String| {
        Ok(Response::builder()
            .status(s)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    let path = req.uri().path().to_owned();
    if path == "/token" {
        p.token_requests.fetch_add(1, Ordering::SeqCst);
        let query = req.uri().query().unwrap_or("").to_owned();
        let ok = if req.method() == hyper::Method::POST {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            body.contains("grant_type=refresh_token") && body.contains("refresh_token=id-token-1")
        } else {
            query.contains("scope=repository%3Ae2e%2Fprivate%3Apull")
                && basic_ok(req.headers().get("authorization"))
        };
        if !ok {
            return reply(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"DENIED"}]}"#.into(),
            );
        }
        let tok = format!("tok-{}", p.token_requests.load(Ordering::SeqCst));
        p.tokens.lock().unwrap().insert(tok.clone());
        return reply(
            StatusCode::OK,
            format!(r#"{{"token":"{tok}","access_token":"{tok}"}}"#),
        );
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid =
        bearer.is_some_and(|t| t == "registry-token-1" || p.tokens.lock().unwrap().contains(&t));
    if !valid {
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                "www-authenticate",
                format!(
                    r#"Bearer realm="{}",service="carrack-test",scope="repository:e2e/private:pull""#,
                    p.realm
                ),
            )
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let client = reqwest::Client::new();
    let mut fwd = client.get(format!("{}{}", p.upstream, req.uri()));
    if let Some(a) = req.headers().get("accept") {
        fwd = fwd.header("accept", a.clone());
    }
    let resp = fwd.send().await.unwrap();
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = resp.bytes().await.unwrap();
    Ok(out.body(Full::new(body)).unwrap())
}

async fn start_proxy(upstream: &str) -> (SocketAddr, Arc<Proxy>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = Arc::new(Proxy {
        upstream: format!("http://{upstream}"),
        realm: format!("http://{addr}/token"),
        tokens: Mutex::new(HashSet::new()),
        token_requests: AtomicUsize::new(0),
    });
    let proxy = p.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(proxy.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_with_each_credential_kind() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("bearer");
    let reg = Registry::start().unwrap();
    let spec = ImageSpec::new(vec![
        Layer::new(Compression::Gzip).file("hello", b"hi", 0o644),
    ]);
    let (built, _) = push(&reg, dir.path(), "e2e/private", "v1", &spec);
    let (addr, proxy) = start_proxy(&reg.host()).await;
    let reference = format!("{addr}/e2e/private:v1");

    let s = store(&dir.path().join("anon"), RegistryConfig::default()).await;
    let err = s.pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");

    // Basic credentials exchanged for a token; the token is reused.
    let s = store(&dir.path().join("basic"), RegistryConfig::default()).await;
    let auth = RegistryAuth {
        username: "carrack".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let img = s.pull(&reference, Some(auth.clone())).await.unwrap();
    assert_eq!(img.id, built.config_digest);
    let token_requests = proxy.token_requests.load(Ordering::SeqCst);
    s.pull(&reference, Some(auth)).await.unwrap();
    assert_eq!(proxy.token_requests.load(Ordering::SeqCst), token_requests);

    // Identity token: the OAuth2 refresh-token grant.
    let s = store(&dir.path().join("identity"), RegistryConfig::default()).await;
    let auth = RegistryAuth {
        identity_token: "id-token-1".into(),
        ..Default::default()
    };
    assert_eq!(
        s.pull(&reference, Some(auth)).await.unwrap().id,
        built.config_digest
    );

    // Registry token: sent as is, no token request.
    let before = proxy.token_requests.load(Ordering::SeqCst);
    let s = store(&dir.path().join("regtoken"), RegistryConfig::default()).await;
    let auth = RegistryAuth {
        registry_token: "registry-token-1".into(),
        ..Default::default()
    };
    assert_eq!(
        s.pull(&reference, Some(auth)).await.unwrap().id,
        built.config_digest
    );
    assert_eq!(proxy.token_requests.load(Ordering::SeqCst), before);
}
