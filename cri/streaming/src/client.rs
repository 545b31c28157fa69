//! The project's own streaming client (SPDY/3.1): exec and attach with
//! stdin, stdout, stderr, resize and the exit code from the error stream,
//! and port-forward. It speaks what `kubectl`/`crictl` speak, so tests and
//! the e2e suite can drive the server as those clients do.

use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::spdy::{Session, Stream, StreamReader};
use crate::{CHANNEL_PROTOCOLS, PORT_FORWARD_PROTOCOL, TerminalSize};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host:port/path`.
    #[error("streaming URL {0:?} is not http(s)://host:port/path")]
    Url(String),
    /// Connecting or talking to the server failed.
    #[error("streaming connection to {url}: {source}")]
    Io {
        /// URL.
        url: String,
        /// Cause.
        source: io::Error,
    },
    /// The HTTP upgrade failed.
    #[error("streaming upgrade to {url}: {message}")]
    Http {
        /// URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server refused the request (e.g. a used or expired token).
    #[error("streaming server answered HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The error stream reported a failure other than an exit code.
    #[error("remote error: {0}")]
    Remote(String),
    /// The server sent a WebSocket message on a channel a server never
    /// writes to (stdin, resize, or v5's client-to-server close signal):
    /// client-go and crictl print `Unknown stream, discarding message`.
    #[error("the server sent a message on channel {0}, which only clients write to")]
    ServerChannel(u8),
}

/// The CA the SPDY client trusts for `https://` URLs, process-wide (the
/// client's entry points take a URL, as kubectl's do).
static TLS_CONNECTOR: std::sync::RwLock<Option<tokio_rustls::TlsConnector>> =
    std::sync::RwLock::new(None);

/// Trusts the PEM CA certificates in `ca_file` for `https://` streaming
/// URLs (SPDY; the WebSocket client speaks plain HTTP only).
pub fn trust_ca_file(ca_file: &std::path::Path) -> Result<(), crate::tls::TlsError> {
    let connector = crate::tls::connector(ca_file)?;
    *TLS_CONNECTOR.write().expect("TLS connector lock") = Some(connector);
    Ok(())
}

/// Streams for an exec or attach. `None` streams are not requested.
#[derive(Default)]
pub struct ExecIo {
    /// Sent to the process; its end closes the process's stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Receives the process's stdout.
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Receives the process's stderr (not with `tty`).
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The process has a terminal; `resize` feeds its size.
    pub tty: bool,
    /// Terminal sizes to send.
    pub resize: Option<mpsc::UnboundedReceiver<TerminalSize>>,
}

/// Upgrades `url` to SPDY/3.1 offering `protocols`; returns the session and
/// the protocol the server chose.
pub async fn connect(url: &str, protocols: &[&str]) -> Result<(Session, String), ClientError> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => return Err(ClientError::Url(url.into())),
    };
    let (hostport, path) = rest
        .split_once('/')
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let io_err = |source| ClientError::Io {
        url: url.into(),
        source,
    };
    let http_err = |e: hyper::Error| ClientError::Http {
        url: url.into(),
        message: e.to_string(),
    };
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(io_err)?;
    let io: Box<dyn crate::AsyncReadWrite> = if tls {
        let connector = TLS_CONNECTOR
            .read()
            .expect("TLS connector lock")
            .clone()
            .ok_or_else(|| ClientError::Http {
                url: url.into(),
                message: "an https URL needs client::trust_ca_file first".into(),
            })?;
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        Box::new(connector.connect(name, tcp).await.map_err(io_err)?)
    } else {
        Box::new(tcp)
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_err)?;
    tokio::spawn(conn.with_upgrades());
    let mut req = Request::post(format!("/{path}"))
        .header(hyper::header::HOST, hostport)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1");
    for p in protocols {
        req = req.header("X-Stream-Protocol-Version", *p);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
    let mut resp = send.send_request(req).await.map_err(http_err)?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(ClientError::Refused { status, body });
    }
    let chosen = resp
        .headers()
        .get("x-stream-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(http_err)?;
    let (session, _incoming) = Session::start(TokioIo::new(upgraded), true);
    Ok((session, chosen))
}

async fn open(
    session: &Session,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Stream, ClientError> {
    session
        .open(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .await
        .map_err(|source| ClientError::Io {
            url: url.into(),
            source,
        })
}

/// Runs an exec (or attach) at `url` offering `protocols` (newest first;
/// [`CHANNEL_PROTOCOLS`] when empty). Returns the exit code.
pub async fn exec(url: &str, protocols: &[&str], io: ExecIo) -> Result<i32, ClientError> {
    let protocols = if protocols.is_empty() {
        CHANNEL_PROTOCOLS
    } else {
        protocols
    };
    let (session, chosen) = connect(url, protocols).await?;
    let version = match chosen.as_str() {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    };
    let mut error = open(&session, url, &[("streamtype", "error")]).await?;
    let mut tasks = Vec::new();
    let mut stdin_task = None;
    if let Some(mut input) = io.stdin {
        let mut s = open(&session, url, &[("streamtype", "stdin")]).await?;
        stdin_task = Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut input, &mut s).await;
            s.finish();
        }));
    }
    for (kind, out) in [
        ("stdout", io.stdout),
        ("stderr", io.stderr.filter(|_| !io.tty)),
    ] {
        if let Some(mut out) = out {
            let s = open(&session, url, &[("streamtype", kind)]).await?;
            let (mut r, _w) = s.split();
            tasks.push(tokio::spawn(async move {
                tokio::io::copy(&mut r, &mut out).await?;
                out.flush().await
            }));
        }
    }
    let mut resize_task = None;
    if io.tty && version >= 3 {
        let mut s = open(&session, url, &[("streamtype", "resize")]).await?;
        if let Some(mut sizes) = io.resize {
            resize_task = Some(tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let Ok(j) = serde_json::to_vec(&size) else {
                        break;
                    };
                    if s.write_all(&j).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    // A stream that ends without the server's FIN (the connection was lost)
    // is an error: its status, or its output, did not arrive whole.
    let mut msg = Vec::new();
    let mut ended = error.read_to_end(&mut msg).await.map(drop);
    for t in tasks {
        let copied = t.await.unwrap_or_else(|e| Err(io::Error::other(e)));
        ended = ended.and(copied);
    }
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    session.close().await;
    ended.map_err(|source| ClientError::Io {
        url: url.to_string(),
        source,
    })?;
    parse_status(version, &msg)
}

/// Turns the error stream's content into an exit code.
pub fn parse_status(version: u8, msg: &[u8]) -> Result<i32, ClientError> {
    if msg.is_empty() {
        return Ok(0);
    }
    let text = String::from_utf8_lossy(msg).into_owned();
    if version < 4 {
        return Err(ClientError::Remote(text));
    }
    let v: serde_json::Value =
        serde_json::from_slice(msg).map_err(|_| ClientError::Remote(text.clone()))?;
    match v["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if v["reason"] == "NonZeroExitCode" => v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
            .ok_or(ClientError::Remote(text)),
        _ => Err(ClientError::Remote(
            v["message"].as_str().map(str::to_string).unwrap_or(text),
        )),
    }
}

/// A port-forward session: open any number of connections to any ports.
pub struct PortForwarder {
    session: Session,
    url: String,
    next_request: std::sync::atomic::AtomicU64,
}

/// One forwarded connection.
pub struct ForwardedConn {
    /// Bytes to and from the port.
    pub data: Stream,
    /// The server's error text for this connection (empty when fine).
    pub error: StreamReader,
}

impl PortForwarder {
    /// Connects to a port-forward URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let (session, _) = connect(url, &[PORT_FORWARD_PROTOCOL]).await?;
        Ok(Self {
            session,
            url: url.into(),
            next_request: 0.into(),
        })
    }

    /// Opens a connection to `port` in the pod.
    pub async fn open(&self, port: u16) -> Result<ForwardedConn, ClientError> {
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let port = port.to_string();
        let mut error = open(
            &self.session,
            &self.url,
            &[("streamtype", "error"), ("port", &port), ("requestid", &id)],
        )
        .await?;
        error.finish();
        let data = open(
            &self.session,
            &self.url,
            &[("streamtype", "data"), ("port", &port), ("requestid", &id)],
        )
        .await?;
        let (error, _) = error.split();
        Ok(ForwardedConn { data, error })
    }

    /// Closes the session.
    pub async fn close(self) {
        self.session.close().await;
    }
}

/// Runs an exec (or attach) at `url` over WebSocket, offering `protocols`
/// (newest first; `v5.channel.k8s.io` and `v4.channel.k8s.io` when empty).
/// Returns the exit code from the error channel.
pub async fn exec_ws(url: &str, protocols: &[&str], io: ExecIo) -> Result<i32, ClientError> {
    use crate::ws::{self, Message, Out, channel};
    let protocols = if protocols.is_empty() {
        ws::WS_PROTOCOLS
    } else {
        protocols
    };
    let (tcp, chosen) = ws_connect(url, protocols).await?;
    let v5 = chosen == "v5.channel.k8s.io";
    let (mut rd, wr) = tcp.into_split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(ws::writer(wr, out_rx, true));
    let mut side_tasks = Vec::new();
    if let Some(mut input) = io.stdin {
        let tx = out_tx.clone();
        side_tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match input.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf[0] = channel::STDIN;
                if tx.send(Out::Binary(buf[..n + 1].to_vec())).is_err() {
                    return;
                }
            }
            if v5 {
                let _ = tx.send(Out::Binary(vec![channel::CLOSE, channel::STDIN]));
            }
        }));
    }
    if let (true, Some(mut sizes)) = (io.tty, io.resize) {
        let tx = out_tx.clone();
        side_tasks.push(tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let mut m = vec![channel::RESIZE];
                if serde_json::to_writer(&mut m, &size).is_err() || tx.send(Out::Binary(m)).is_err()
                {
                    return;
                }
            }
        }));
    }
    let (mut stdout, mut stderr) = (io.stdout, io.stderr);
    let mut error = Vec::new();
    let mut wrong_channel = None;
    // The server ends with a close frame; a connection that ends without
    // one was lost, and what it carried may not have arrived whole.
    let ended = loop {
        let m = match ws::read_message(&mut rd).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                break Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended without a close frame",
                ));
            }
            Err(e) => break Err(e),
        };
        match m {
            Message::Ping(p) => {
                let _ = out_tx.send(Out::Pong(p));
            }
            Message::Close => break Ok(()),
            Message::Data(d) if d.is_empty() => {}
            Message::Data(d) => {
                let target = match d[0] {
                    channel::STDOUT => stdout.as_mut(),
                    channel::STDERR => stderr.as_mut(),
                    channel::ERROR => {
                        error.extend_from_slice(&d[1..]);
                        None
                    }
                    other => {
                        wrong_channel.get_or_insert(other);
                        None
                    }
                };
                if let Some(t) = target {
                    let _ = t.write_all(&d[1..]).await;
                }
            }
        }
    };
    for t in side_tasks {
        t.abort();
    }
    for w in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = w.flush().await;
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let _ = out_tx.send(Out::Close(done_tx));
    let _ = done_rx.await;
    let _ = writer.await;
    if let Some(c) = wrong_channel {
        return Err(ClientError::ServerChannel(c));
    }
    ended.map_err(|source| ClientError::Io {
        url: url.to_string(),
        source,
    })?;
    parse_status(4, &error)
}

/// WebSocket handshake; returns the connection and the chosen subprotocol.
async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(tokio::net::TcpStream, String), ClientError> {
    use crate::ws;
    use base64::Engine;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let (hostport, path) = rest
        .split_once('/')
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let io_err = |source| ClientError::Io {
        url: url.into(),
        source,
    };
    let mut tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(io_err)?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        protocols.join(", ")
    );
    tcp.write_all(req.as_bytes()).await.map_err(io_err)?;
    // Read the response head byte by byte so no frame bytes are consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tcp.read_u8().await.map_err(io_err)?;
        head.push(b);
        if head.len() > 64 * 1024 {
            return Err(ClientError::Http {
                url: url.into(),
                message: "response head over 64 KiB".into(),
            });
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if status != 101 {
        let len: usize = get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(64 * 1024)];
        let _ = tcp.read_exact(&mut body).await;
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    if get("sec-websocket-accept") != Some(ws::accept_key(&key).as_str()) {
        return Err(ClientError::Http {
            url: url.into(),
            message: "wrong Sec-WebSocket-Accept".into(),
        });
    }
    Ok((tcp, get("sec-websocket-protocol").unwrap_or("").to_string()))
}

/// Connections of a WebSocket port-forward, in the order of the ports asked.
pub struct WsForward {
    /// One byte stream per port.
    pub conns: Vec<tokio::io::DuplexStream>,
    /// Errors the server reported, as (port, message).
    pub errors: mpsc::UnboundedReceiver<(u16, String)>,
}

/// Port-forward over WebSocket (`portforward.k8s.io`): one connection to
/// each of `ports`; channel 2i carries port i's data, 2i+1 its errors, and
/// the first message on each channel is the port (little-endian u16).
pub async fn port_forward_ws(url: &str, ports: &[u16]) -> Result<WsForward, ClientError> {
    use crate::ws::{self, Message, Out};
    let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}{}", query.join("&"));
    let (tcp, _) = ws_connect(&full, &[crate::PORT_FORWARD_PROTOCOL]).await?;
    let (mut rd, wr) = tcp.into_split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(ws::writer(wr, out_rx, true));
    let (err_tx, errors) = mpsc::unbounded_channel();
    let mut conns = Vec::new();
    let mut to_local = Vec::new();
    for (i, _) in ports.iter().enumerate() {
        let (mine, theirs) = tokio::io::duplex(64 * 1024);
        let (mut r, w) = tokio::io::split(mine);
        to_local.push(w);
        conns.push(theirs);
        let tx = out_tx.clone();
        let ch = (2 * i) as u8;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match r.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf[0] = ch;
                if tx.send(Out::Binary(buf[..n + 1].to_vec())).is_err() {
                    break;
                }
            }
        });
    }
    let ports = ports.to_vec();
    tokio::spawn(async move {
        let mut seen_port = vec![false; ports.len() * 2];
        while let Ok(Some(m)) = ws::read_message(&mut rd).await {
            match m {
                Message::Ping(p) => {
                    let _ = out_tx.send(Out::Pong(p));
                }
                Message::Close => break,
                Message::Data(d) if d.is_empty() => {}
                Message::Data(d) => {
                    let ch = d[0] as usize;
                    if ch >= seen_port.len() {
                        continue;
                    }
                    let mut payload = &d[1..];
                    if !seen_port[ch] {
                        // The first message on a channel is its port.
                        seen_port[ch] = true;
                        payload = payload.get(2..).unwrap_or(&[]);
                    }
                    if payload.is_empty() {
                        continue;
                    }
                    if ch.is_multiple_of(2) {
                        let _ = to_local[ch / 2].write_all(payload).await;
                    } else {
                        let msg = String::from_utf8_lossy(payload).into_owned();
                        let _ = err_tx.send((ports[ch / 2], msg));
                    }
                }
            }
        }
    });
    Ok(WsForward { conns, errors })
}
