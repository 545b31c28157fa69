//! carrackd's own Prometheus `/metrics` endpoint: CRI calls by method and
//! gRPC code with their latencies, the phases of the pod lifecycle's calls
//! (`crate::phases` times them), image pulls (bytes and duration),
//! containers and sandboxes by state, and the number of shims.
//!
//! It is off by default; `metrics_address` in the config turns it on (a
//! bare port listens on loopback only). The text exposition format is
//! written by hand: it is a few lines of `name{labels} value`, and a
//! Prometheus client crate would bring a global registry and more
//! dependencies than the whole endpoint (the workspace keeps few).
//!
//! RPCs are measured by [`RpcMetricsLayer`], a tower layer around the tonic
//! services: the method is the request path, the code the `grpc-status` of
//! the response headers (tonic puts an error there, "trailers-only"; a
//! response without it is OK, since a call that fails later, mid-stream,
//! reports its code in trailers this layer does not read), the latency the
//! time to the response headers (for GetContainerEvents: to the stream's
//! start).
//!
//! This module does not count containers itself: [`Census`] comes from the
//! daemon at scrape time.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Latency buckets, seconds (upper bounds).
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A cumulative latency histogram.
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braced} {}", self.count);
    }
}

/// Objects carrackd holds, counted when scraped.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Containers by CRI state name (`CONTAINER_RUNNING`, ...).
    pub containers: BTreeMap<String, u64>,
    /// Sandboxes by CRI state name (`SANDBOX_READY`, ...).
    pub sandboxes: BTreeMap<String, u64>,
    /// Shims with a state directory (one per container not yet removed).
    pub shims: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// (method, gRPC code name) → latencies.
    rpcs: BTreeMap<(String, String), Histogram>,
    /// (RPC, phase) → the phase's time in each call.
    phases: BTreeMap<(&'static str, &'static str), Histogram>,
    pulls_ok: u64,
    pulls_failed: u64,
    pull_bytes: u64,
    pull_seconds: Histogram,
}

/// carrackd's counters (cheap to share).
#[derive(Debug, Default)]
pub struct Telemetry {
    counters: Mutex<Counters>,
}

/// The name of a gRPC status code as Prometheus labels show it.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one finished RPC.
    pub fn record_rpc(&self, method: &str, code: tonic::Code, took: Duration) {
        self.counters()
            .rpcs
            .entry((method.to_owned(), code_name(code)))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records the time one call of `rpc` spent in `phase`.
    pub fn record_phase(&self, rpc: &'static str, phase: &'static str, took: Duration) {
        self.counters()
            .phases
            .entry((rpc, phase))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records one image pull: `bytes` of the image when it succeeded.
    pub fn record_pull(&self, bytes: Option<u64>, took: Duration) {
        let mut c = self.counters();
        match bytes {
            Some(b) => {
                c.pulls_ok += 1;
                c.pull_bytes += b;
            }
            None => c.pulls_failed += 1,
        }
        c.pull_seconds.observe(took.as_secs_f64());
    }

    /// The exposition text of every series.
    pub fn render(&self, census: &Census) -> String {
        let c = self.counters();
        let mut out = String::new();
        out.push_str("# HELP carrack_grpc_requests_total CRI calls by method and gRPC code.\n");
        out.push_str("# TYPE carrack_grpc_requests_total counter\n");
        for ((m, code), h) in &c.rpcs {
            let _ = writeln!(
                out,
                "carrack_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {}",
                escape(m),
                code,
                h.count
            );
        }
        out.push_str("# HELP carrack_grpc_request_duration_seconds Time to answer a CRI call.\n");
        out.push_str("# TYPE carrack_grpc_request_duration_seconds histogram\n");
        for ((m, code), h) in &c.rpcs {
            h.write(
                &mut out,
                "carrack_grpc_request_duration_seconds",
                &format!("method=\"{}\",code=\"{}\"", escape(m), code),
            );
        }
        out.push_str(
            "# HELP carrack_pod_start_phase_seconds Time a RunPodSandbox, CreateContainer, StartContainer or StopPodSandbox call spent in one phase (phase \"other\": in none).\n",
        );
        out.push_str("# TYPE carrack_pod_start_phase_seconds histogram\n");
        for ((rpc, phase), h) in &c.phases {
            h.write(
                &mut out,
                "carrack_pod_start_phase_seconds",
                &format!("rpc=\"{rpc}\",phase=\"{phase}\""),
            );
        }
        out.push_str("# HELP carrack_image_pulls_total Image pulls by result.\n");
        out.push_str("# TYPE carrack_image_pulls_total counter\n");
        let _ = writeln!(
            out,
            "carrack_image_pulls_total{{result=\"success\"}} {}",
            c.pulls_ok
        );
        let _ = writeln!(
            out,
            "carrack_image_pulls_total{{result=\"failure\"}} {}",
            c.pulls_failed
        );
        out.push_str(
            "# HELP carrack_image_pull_bytes_total Bytes of the images pulled (manifest sizes of config and layers).\n",
        );
        out.push_str("# TYPE carrack_image_pull_bytes_total counter\n");
        let _ = writeln!(out, "carrack_image_pull_bytes_total {}", c.pull_bytes);
        out.push_str("# HELP carrack_image_pull_duration_seconds Time an image pull took.\n");
        out.push_str("# TYPE carrack_image_pull_duration_seconds histogram\n");
        c.pull_seconds
            .write(&mut out, "carrack_image_pull_duration_seconds", "");
        out.push_str("# HELP carrack_containers Containers by state.\n");
        out.push_str("# TYPE carrack_containers gauge\n");
        for (state, n) in &census.containers {
            let _ = writeln!(out, "carrack_containers{{state=\"{state}\"}} {n}");
        }
        out.push_str("# HELP carrack_sandboxes Pod sandboxes by state.\n");
        out.push_str("# TYPE carrack_sandboxes gauge\n");
        for (state, n) in &census.sandboxes {
            let _ = writeln!(out, "carrack_sandboxes{{state=\"{state}\"}} {n}");
        }
        out.push_str("# HELP carrack_shims Container shims.\n");
        out.push_str("# TYPE carrack_shims gauge\n");
        let _ = writeln!(out, "carrack_shims {}", census.shims);
        out
    }
}

/// Parses `metrics_address`: `host:port`, or a bare port for loopback.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>()
        .map_err(|e| format!("expected host:port or a port (loopback), got {text:?}: {e}"))
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
    census: Arc<dyn Fn() -> Census + Send + Sync>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of
                // spinning on the same error.
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let telemetry = telemetry.clone();
        let census = census.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let telemetry = telemetry.clone();
                let census = census.clone();
                async move {
                    let resp = if req.uri().path() != "/metrics" {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from("only /metrics is served here\n")))
                    } else if req.method() != hyper::Method::GET {
                        Response::builder()
                            .status(StatusCode::METHOD_NOT_ALLOWED)
                            .body(Full::new(Bytes::from("GET /metrics\n")))
                    } else {
                        let census = tokio::task::spawn_blocking(move || census())
                            .await
                            .unwrap_or_default();
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(telemetry.render(&census))))
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The tower layer that records every CRI call in [`Telemetry`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<Telemetry>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            telemetry: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC services.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let telemetry = self.telemetry.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unavailable,
            };
            telemetry.record_rpc(&method, code, started.elapsed());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_method_and_code_and_the_census() {
        let t = Telemetry::default();
        let m = "/runtime.v1.RuntimeService/Version";
        t.record_rpc(m, tonic::Code::Ok, Duration::from_millis(2));
        t.record_rpc(m, tonic::Code::Ok, Duration::from_millis(20));
        t.record_rpc(m, tonic::Code::NotFound, Duration::from_millis(1));
        t.record_pull(Some(1000), Duration::from_secs(1));
        t.record_pull(None, Duration::from_secs(2));
        let census = Census {
            containers: BTreeMap::from([("CONTAINER_RUNNING".into(), 2)]),
            sandboxes: BTreeMap::from([("SANDBOX_READY".into(), 1)]),
            shims: 2,
        };
        let text = t.render(&census);
        for line in [
            format!("carrack_grpc_requests_total{{method=\"{m}\",code=\"Ok\"}} 2"),
            format!("carrack_grpc_requests_total{{method=\"{m}\",code=\"NotFound\"}} 1"),
            format!(
                "carrack_grpc_request_duration_seconds_bucket{{method=\"{m}\",code=\"Ok\",le=\"0.005\"}} 1"
            ),
            format!(
                "carrack_grpc_request_duration_seconds_bucket{{method=\"{m}\",code=\"Ok\",le=\"+Inf\"}} 2"
            ),
            "carrack_image_pulls_total{result=\"success\"} 1".into(),
            "carrack_image_pulls_total{result=\"failure\"} 1".into(),
            "carrack_image_pull_bytes_total 1000".into(),
            "carrack_image_pull_duration_seconds_count 2".into(),
            "carrack_containers{state=\"CONTAINER_RUNNING\"} 2".into(),
            "carrack_sandboxes{state=\"SANDBOX_READY\"} 1".into(),
            "carrack_shims 2".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    /// Each (RPC, phase) is a histogram of its own, in the RPC latencies'
    /// buckets.
    #[test]
    fn renders_a_histogram_per_rpc_and_phase() {
        let t = Telemetry::default();
        t.record_phase(
            "RunPodSandbox",
            "network_add",
            Duration::from_micros(31_250),
        );
        t.record_phase(
            "RunPodSandbox",
            "network_add",
            Duration::from_micros(62_500),
        );
        t.record_phase("RunPodSandbox", "db", Duration::from_micros(200));
        t.record_phase("CreateContainer", "db", Duration::from_millis(3));
        let text = t.render(&Census::default());
        let name = "carrack_pod_start_phase_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        for line in [
            format!("{name}_bucket{{rpc=\"RunPodSandbox\",phase=\"network_add\",le=\"0.025\"}} 0"),
            format!("{name}_bucket{{rpc=\"RunPodSandbox\",phase=\"network_add\",le=\"0.05\"}} 1"),
            format!("{name}_bucket{{rpc=\"RunPodSandbox\",phase=\"network_add\",le=\"0.1\"}} 2"),
            format!("{name}_bucket{{rpc=\"RunPodSandbox\",phase=\"network_add\",le=\"+Inf\"}} 2"),
            format!("{name}_count{{rpc=\"RunPodSandbox\",phase=\"network_add\"}} 2"),
            format!("{name}_sum{{rpc=\"RunPodSandbox\",phase=\"network_add\"}} 0.09375"),
            format!("{name}_bucket{{rpc=\"RunPodSandbox\",phase=\"db\",le=\"0.001\"}} 1"),
            format!("{name}_count{{rpc=\"RunPodSandbox\",phase=\"db\"}} 1"),
            format!("{name}_bucket{{rpc=\"CreateContainer\",phase=\"db\",le=\"0.001\"}} 0"),
            format!("{name}_bucket{{rpc=\"CreateContainer\",phase=\"db\",le=\"0.005\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // As many buckets as the RPC latencies have, and +Inf.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{rpc=\"CreateContainer\"")))
            .count();
        assert_eq!(buckets, BUCKETS.len() + 1);
    }

    /// Answers with the `grpc-status` header it was built with (None: no header).
    #[derive(Clone)]
    struct Answer(Option<&'static str>);

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut r = http::Response::new(());
            if let Some(code) = self.0 {
                r.headers_mut().insert("grpc-status", code.parse().unwrap());
            }
            std::future::ready(Ok(r))
        }
    }

    #[tokio::test]
    async fn the_layer_counts_calls_by_path_and_header_code() {
        use tower::{Layer, Service};
        let t = Arc::new(Telemetry::default());
        let layer = RpcMetricsLayer(t.clone());
        let call = |code: Option<&'static str>, path: &str| {
            let mut svc = layer.layer(Answer(code));
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.call(req)
        };
        call(None, "/runtime.v1.RuntimeService/Version")
            .await
            .unwrap();
        call(Some("0"), "/runtime.v1.RuntimeService/Version")
            .await
            .unwrap();
        call(Some("5"), "/runtime.v1.RuntimeService/ContainerStatus")
            .await
            .unwrap();
        let text = t.render(&Census::default());
        assert!(text.contains(
            "carrack_grpc_requests_total{method=\"/runtime.v1.RuntimeService/Version\",code=\"Ok\"} 2"
        ), "{text}");
        assert!(text.contains(
            "carrack_grpc_requests_total{method=\"/runtime.v1.RuntimeService/ContainerStatus\",code=\"NotFound\"} 1"
        ), "{text}");
    }

    #[test]
    fn address_is_host_port_or_a_loopback_port() {
        assert_eq!(
            parse_address("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]:9000").unwrap(),
            "[::1]:9000".parse().unwrap()
        );
        assert!(
            parse_address("localhost")
                .unwrap_err()
                .contains("localhost")
        );
    }
}
