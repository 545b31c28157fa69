//! The HTTP server: token lookup, protocol negotiation, SPDY upgrade and
//! the exec/attach/port-forward stream handling.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::spdy::frame::header;
use crate::spdy::{IncomingStream, Session, Stream};
use crate::token::{Pending, Tokens};
use crate::ws;
use crate::{
    AttachSpec, BackendError, BoxReader, BoxWriter, CHANNEL_PROTOCOLS, ClientGone, ExecSpec,
    PORT_FORWARD_PROTOCOL, PortForwardSpec, ProcessIo, StreamingBackend, StreamingConfig,
    StreamingError, TerminalSize,
};

/// The running streaming server.
pub struct StreamingServer {
    addr: SocketAddr,
    /// `http` or `https`, for the URLs.
    scheme: &'static str,
    tokens: Arc<Tokens>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct Ctx {
    tokens: Arc<Tokens>,
    backend: Arc<dyn StreamingBackend>,
    cfg: StreamingConfig,
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection, plain or TLS.
async fn serve_connection<I>(ctx: Arc<Ctx>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

impl StreamingServer {
    /// Binds `cfg.addr` and serves until [`StreamingServer::shutdown`].
    pub async fn start(
        cfg: StreamingConfig,
        backend: Arc<dyn StreamingBackend>,
    ) -> Result<Self, StreamingError> {
        let listener =
            TcpListener::bind(cfg.addr)
                .await
                .map_err(|source| StreamingError::Bind {
                    addr: cfg.addr,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind {
                addr: cfg.addr,
                source,
            })?;
        let acceptor = cfg.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let tokens = Arc::new(Tokens::new(cfg.token_ttl));
        let ctx = Arc::new(Ctx {
            tokens: tokens.clone(),
            backend,
            cfg,
        });
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stop_rx => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "streaming accept failed");
                            continue;
                        }
                    },
                };
                let ctx = ctx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_connection(ctx, tcp).await,
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => serve_connection(ctx, tls).await,
                            Err(e) => tracing::debug!(error = %e, "streaming TLS handshake failed"),
                        },
                    }
                });
            }
        });
        Ok(Self {
            addr,
            scheme,
            tokens,
            stop: Some(stop_tx),
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, kind: &str, p: Pending) -> String {
        format!(
            "{}://{}/{kind}/{}",
            self.scheme,
            self.addr,
            self.tokens.insert(p)
        )
    }

    /// A single-use URL for an exec.
    pub fn exec_url(&self, spec: &ExecSpec) -> Result<String, StreamingError> {
        if spec.cmd.is_empty() {
            return Err(StreamingError::InvalidRequest("exec cmd is empty".into()));
        }
        check_streams(spec.stdin, spec.stdout, spec.stderr, spec.tty)?;
        Ok(self.url("exec", Pending::Exec(spec.clone())))
    }

    /// A single-use URL for an attach.
    pub fn attach_url(&self, spec: &AttachSpec) -> Result<String, StreamingError> {
        check_streams(spec.stdin, spec.stdout, spec.stderr, spec.tty)?;
        Ok(self.url("attach", Pending::Attach(spec.clone())))
    }

    /// A single-use URL for a port-forward.
    pub fn port_forward_url(&self, spec: &PortForwardSpec) -> Result<String, StreamingError> {
        if spec.pod_sandbox_id.is_empty() {
            return Err(StreamingError::InvalidRequest(
                "port-forward pod_sandbox_id is empty".into(),
            ));
        }
        Ok(self.url("portforward", Pending::PortForward(spec.clone())))
    }

    /// Stops accepting connections (sessions under way run to their end).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), StreamingError> {
    if !stdin && !stdout && !stderr {
        return Err(StreamingError::InvalidRequest(
            "one of stdin, stdout or stderr must be set".into(),
        ));
    }
    if tty && stderr && !stdout {
        return Err(StreamingError::InvalidRequest(
            "with tty, stderr is merged into stdout: set stdout".into(),
        ));
    }
    Ok(())
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = code;
    r
}

fn handle(ctx: Arc<Ctx>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such streaming path {path}"),
        );
    }
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let websocket = upgrade == "websocket";
    if !websocket && upgrade != "spdy/3.1" {
        return text(
            StatusCode::BAD_REQUEST,
            format!("expected Upgrade: SPDY/3.1 or websocket, got {upgrade:?}"),
        );
    }
    let Some(pending) = ctx.tokens.take(token) else {
        return text(
            StatusCode::NOT_FOUND,
            "streaming token unknown, already used or expired",
        );
    };
    let kind_matches = matches!(
        (&pending, kind),
        (Pending::Exec(_), "exec")
            | (Pending::Attach(_), "attach")
            | (Pending::PortForward(_), "portforward")
    );
    if !kind_matches {
        return text(StatusCode::NOT_FOUND, format!("token is not for {kind}"));
    }
    if websocket {
        return websocket_upgrade(ctx, req, pending);
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    let supported: &[&str] = if kind == "portforward" {
        &[PORT_FORWARD_PROTOCOL]
    } else {
        CHANNEL_PROTOCOLS
    };
    // The client lists its protocols newest first: take the first we speak.
    let protocol = if offered.is_empty() {
        // Legacy clients that send no header speak the oldest protocol.
        supported[supported.len() - 1].to_string()
    } else {
        match offered.iter().find(|o| supported.contains(&o.as_str())) {
            Some(p) => p.clone(),
            None => {
                return text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "none of the offered protocols {offered:?} is supported; this server speaks {supported:?}"
                    ),
                );
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let proto = protocol.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let (session, incoming) = Session::start(TokioIo::new(upgraded), false);
        match pending {
            Pending::Exec(spec) => serve_exec(ctx, session, incoming, &proto, spec).await,
            Pending::Attach(spec) => serve_attach(ctx, session, incoming, &proto, spec).await,
            Pending::PortForward(spec) => serve_port_forward(ctx, session, incoming, spec).await,
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(hyper::header::CONNECTION, "Upgrade".parse().unwrap());
    h.insert(hyper::header::UPGRADE, "SPDY/3.1".parse().unwrap());
    if let Ok(v) = protocol.parse() {
        h.insert("X-Stream-Protocol-Version", v);
    }
    r
}

fn websocket_upgrade(
    ctx: Arc<Ctx>,
    mut req: Request<Incoming>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(ws::accept_key)
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without Sec-WebSocket-Key",
        );
    };
    let supported: &[&str] = if matches!(pending, Pending::PortForward(_)) {
        ws::WS_PORT_FORWARD_PROTOCOLS
    } else {
        ws::WS_PROTOCOLS
    };
    let mut pf_ports = Vec::new();
    if let Pending::PortForward(spec) = &pending {
        for (k, v) in req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
        {
            if k != "port" {
                continue;
            }
            match v.parse::<u16>() {
                Ok(p) if p != 0 && (spec.ports.is_empty() || spec.ports.contains(&p)) => {
                    pf_ports.push(p)
                }
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "port {v:?} is not a forwardable port (allowed: {:?})",
                            spec.ports
                        ),
                    );
                }
            }
        }
        if pf_ports.is_empty() || pf_ports.len() > 127 {
            return text(
                StatusCode::BAD_REQUEST,
                "WebSocket port-forward needs 1 to 127 port query parameters",
            );
        }
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let Some(protocol) = offered
        .iter()
        .find(|o| supported.contains(&o.as_str()))
        .cloned()
    else {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "none of the offered WebSocket protocols {offered:?} is supported; this server speaks {supported:?}"
            ),
        );
    };
    let v5 = protocol == "v5.channel.k8s.io";
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(u) => match pending {
                Pending::PortForward(spec) => {
                    serve_ws_port_forward(ctx, TokioIo::new(u), spec, pf_ports).await
                }
                other => serve_ws(ctx, TokioIo::new(u), v5, other).await,
            },
            Err(e) => tracing::warn!(error = %e, "streaming WebSocket upgrade failed"),
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(hyper::header::CONNECTION, "Upgrade".parse().unwrap());
    h.insert(hyper::header::UPGRADE, "websocket".parse().unwrap());
    if let Ok(v) = key.parse() {
        h.insert("Sec-WebSocket-Accept", v);
    }
    if let Ok(v) = protocol.parse() {
        h.insert("Sec-WebSocket-Protocol", v);
    }
    r
}

/// Port-forward over a WebSocket: port i's data on channel 2i, its errors
/// on 2i+1; each channel's first server message is the port (LE u16).
async fn serve_ws_port_forward<T>(ctx: Arc<Ctx>, io: T, spec: PortForwardSpec, ports: Vec<u16>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(ws::writer(wr, out_rx, false));
    let mut to_backend = Vec::new();
    let mut pumps = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let mut m = vec![ch];
            m.extend_from_slice(&port.to_le_bytes());
            let _ = out_tx.send(ws::Out::Binary(m));
        }
        let (mine, theirs) = tokio::io::duplex(64 * 1024);
        let (mut r, w) = tokio::io::split(mine);
        to_backend.push(w);
        let tx = out_tx.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match r.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf[0] = data_ch;
                if tx.send(ws::Out::Binary(buf[..n + 1].to_vec())).is_err() {
                    break;
                }
            }
        }));
        let fut = ctx
            .backend
            .port_forward(spec.pod_sandbox_id.clone(), port, Box::new(theirs));
        let tx = out_tx.clone();
        let sandbox = spec.pod_sandbox_id.clone();
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                let mut m = vec![err_ch];
                m.extend(
                    format!("error forwarding port {port} to pod {sandbox}: {e}").into_bytes(),
                );
                let _ = tx.send(ws::Out::Binary(m));
            }
        });
    }
    while let Ok(Some(m)) = ws::read_message(&mut rd).await {
        match m {
            ws::Message::Ping(p) => {
                let _ = out_tx.send(ws::Out::Pong(p));
            }
            ws::Message::Close => break,
            ws::Message::Data(d) if d.len() < 2 => {}
            ws::Message::Data(d) => {
                let ch = d[0] as usize;
                if ch.is_multiple_of(2) && ch / 2 < to_backend.len() {
                    let _ = to_backend[ch / 2].write_all(&d[1..]).await;
                }
            }
        }
    }
    drop(to_backend);
    for p in pumps {
        p.abort();
    }
    let (done_tx, done_rx) = oneshot::channel();
    let _ = out_tx.send(ws::Out::Close(done_tx));
    let _ = tokio::time::timeout(Duration::from_secs(1), done_rx).await;
    writer.abort();
}

/// Exec or attach over a WebSocket.
async fn serve_ws<T>(ctx: Arc<Ctx>, io: T, v5: bool, pending: Pending)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(ws::writer(wr, out_rx, false));
    let (stdin_flag, stdout_flag, stderr_flag, tty) = match &pending {
        Pending::Exec(s) => (s.stdin, s.stdout, s.stderr, s.tty),
        Pending::Attach(s) => (s.stdin, s.stdout, s.stderr, s.tty),
        Pending::PortForward(_) => return,
    };
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<Bytes>();
    let (resize_tx, resize_rx) = mpsc::unbounded_channel::<TerminalSize>();
    let (gone_tx, client_gone) = ClientGone::new();
    let out = |channel| {
        Box::new(ws::ChannelWriter {
            tx: out_tx.clone(),
            channel,
            closed: false,
        }) as BoxWriter
    };
    let io = ProcessIo {
        stdin: stdin_flag.then(|| {
            Box::new(ws::ChannelReader {
                rx: stdin_rx,
                pending: Bytes::new(),
            }) as BoxReader
        }),
        stdout: stdout_flag.then(|| out(ws::channel::STDOUT)),
        stderr: (stderr_flag && !tty).then(|| out(ws::channel::STDERR)),
        resize: tty.then_some(resize_rx),
        client_gone,
    };
    let pong_tx = out_tx.clone();
    let reader = tokio::spawn(async move {
        let _gone = Fire(Some(gone_tx));
        let mut stdin_tx = Some(stdin_tx);
        while let Ok(Some(m)) = ws::read_message(&mut rd).await {
            match m {
                ws::Message::Ping(p) => {
                    let _ = pong_tx.send(ws::Out::Pong(p));
                }
                ws::Message::Close => break,
                ws::Message::Data(d) if d.is_empty() => {}
                ws::Message::Data(d) => match d[0] {
                    ws::channel::STDIN => {
                        if let Some(t) = &stdin_tx {
                            let _ = t.send(Bytes::copy_from_slice(&d[1..]));
                        }
                    }
                    ws::channel::RESIZE => {
                        if let Ok(size) = serde_json::from_slice::<TerminalSize>(&d[1..]) {
                            let _ = resize_tx.send(size);
                        }
                    }
                    ws::channel::CLOSE if v5 && d.get(1) == Some(&ws::channel::STDIN) => {
                        stdin_tx = None;
                    }
                    other => tracing::warn!(channel = other, "unexpected WebSocket channel"),
                },
            }
        }
    });
    let result = match pending {
        Pending::Exec(spec) => ctx.backend.exec(spec, io).await,
        Pending::Attach(spec) => ctx.backend.attach(spec, io).await.map(|()| 0),
        Pending::PortForward(_) => return,
    };
    if let Some(msg) = status_message(4, &result) {
        let mut m = vec![ws::channel::ERROR];
        m.extend(msg);
        let _ = out_tx.send(ws::Out::Binary(m));
    }
    let (done_tx, done_rx) = oneshot::channel();
    let _ = out_tx.send(ws::Out::Close(done_tx));
    let _ = done_rx.await;
    // The client answers our close frame with its own (or closes): read
    // until then, or a reset could cut off what it has not read yet.
    crate::linger(reader).await;
    let _ = writer.await;
}

fn protocol_version(p: &str) -> u8 {
    match p {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// The client's streams for one exec or attach.
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Which streams the request asked for.
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
}

impl Wanted {
    fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool, version: u8) -> Self {
        Self {
            stdin,
            stdout,
            stderr: stderr && !tty,
            resize: tty && version >= 3,
        }
    }
    fn count(&self) -> usize {
        1 + self.stdin as usize + self.stdout as usize + self.stderr as usize + self.resize as usize
    }
}

/// Accepts the client's streams until every wanted one is open; refuses
/// streams the request did not ask for.
async fn collect_streams(
    ctx: &Ctx,
    session: &Session,
    incoming: &mut mpsc::UnboundedReceiver<IncomingStream>,
    wanted: Wanted,
) -> Option<Streams> {
    let expected = wanted.count();
    let mut s = Streams::default();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + ctx.cfg.stream_creation_timeout;
    while got < expected {
        let next = tokio::time::timeout_at(deadline, incoming.recv()).await;
        let Ok(Some(IncomingStream {
            headers,
            mut stream,
        })) = next
        else {
            tracing::warn!(got, expected, "client did not open its streams");
            session.close().await;
            return None;
        };
        let slot = match header(&headers, "streamtype") {
            Some("error") => &mut s.error,
            Some("stdin") if wanted.stdin => &mut s.stdin,
            Some("stdout") if wanted.stdout => &mut s.stdout,
            Some("stderr") if wanted.stderr => &mut s.stderr,
            Some("resize") if wanted.resize => &mut s.resize,
            other => {
                tracing::warn!(stream_type = ?other, "unexpected stream type");
                stream.reset(crate::spdy::frame::rst::REFUSED_STREAM);
                continue;
            }
        };
        stream.reply();
        if slot.replace(stream).is_none() {
            got += 1;
        }
    }
    Some(s)
}

/// Streams opened after the session's set is complete are refused; the end
/// of `incoming` (the connection ended) fires `gone`.
fn refuse_late_streams(
    mut incoming: mpsc::UnboundedReceiver<IncomingStream>,
    gone: oneshot::Sender<()>,
) {
    tokio::spawn(async move {
        while let Some(mut i) = incoming.recv().await {
            tracing::warn!(headers = ?i.headers, "stream opened after the session started");
            i.stream.reset(crate::spdy::frame::rst::REFUSED_STREAM);
        }
        let _ = gone.send(());
    });
}

/// Fires a [`ClientGone`] sender when dropped (the reader task ended).
struct Fire(Option<oneshot::Sender<()>>);

impl Drop for Fire {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn process_io(s: &mut Streams, client_gone: ClientGone) -> ProcessIo {
    let resize = s.resize.take().map(|r| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_resizes(r, tx));
        rx
    });
    ProcessIo {
        stdin: s.stdin.take().map(|x| Box::new(x) as BoxReader),
        stdout: s.stdout.take().map(|x| Box::new(x) as BoxWriter),
        stderr: s.stderr.take().map(|x| Box::new(x) as BoxWriter),
        resize,
        client_gone,
    }
}

/// Parses the resize stream: concatenated `{"Width":..,"Height":..}` objects.
async fn read_resizes(mut r: Stream, tx: mpsc::UnboundedSender<TerminalSize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        let mut consumed = 0;
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    consumed = it.byte_offset();
                    if tx.send(size).is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "bad resize message");
                    return;
                }
                None => break,
            }
        }
        buf.drain(..consumed);
        if buf.len() > 64 * 1024 {
            return;
        }
    }
}

/// The error stream's message for an exec outcome.
pub(crate) fn status_message(version: u8, result: &Result<i32, BackendError>) -> Option<Vec<u8>> {
    let v = match (version, result) {
        (4, Ok(0)) => serde_json::json!({"metadata": {}, "status": "Success"}),
        (4, Ok(code)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        (4, Err(e)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e.to_string(),
            "reason": "InternalError",
            "code": 500,
        }),
        (_, Ok(0)) => return None,
        (_, Ok(code)) => {
            return Some(
                format!("command terminated with non-zero exit code: exit code {code}")
                    .into_bytes(),
            );
        }
        (_, Err(e)) => return Some(e.to_string().into_bytes()),
    };
    Some(v.to_string().into_bytes())
}

async fn finish(session: Session, mut error: Option<Stream>, msg: Option<Vec<u8>>) {
    if let Some(e) = error.as_mut() {
        if let Some(m) = msg {
            e.send(&m);
        }
        e.finish();
    }
    session.close().await;
}

async fn serve_exec(
    ctx: Arc<Ctx>,
    session: Session,
    mut incoming: mpsc::UnboundedReceiver<IncomingStream>,
    protocol: &str,
    spec: ExecSpec,
) {
    let version = protocol_version(protocol);
    let wanted = Wanted::new(spec.stdin, spec.stdout, spec.stderr, spec.tty, version);
    let Some(mut s) = collect_streams(&ctx, &session, &mut incoming, wanted).await else {
        return;
    };
    let (gone, client_gone) = ClientGone::new();
    let io = process_io(&mut s, client_gone);
    refuse_late_streams(incoming, gone);
    let result = ctx.backend.exec(spec, io).await;
    finish(session, s.error, status_message(version, &result)).await;
}

async fn serve_attach(
    ctx: Arc<Ctx>,
    session: Session,
    mut incoming: mpsc::UnboundedReceiver<IncomingStream>,
    protocol: &str,
    spec: AttachSpec,
) {
    let version = protocol_version(protocol);
    let wanted = Wanted::new(spec.stdin, spec.stdout, spec.stderr, spec.tty, version);
    let Some(mut s) = collect_streams(&ctx, &session, &mut incoming, wanted).await else {
        return;
    };
    let (gone, client_gone) = ClientGone::new();
    let io = process_io(&mut s, client_gone);
    refuse_late_streams(incoming, gone);
    let result = ctx.backend.attach(spec, io).await.map(|()| 0);
    finish(session, s.error, status_message(version, &result)).await;
}

async fn serve_port_forward(
    ctx: Arc<Ctx>,
    session: Session,
    mut incoming: mpsc::UnboundedReceiver<IncomingStream>,
    spec: PortForwardSpec,
) {
    // requestID -> the half (error or data) that arrived first.
    let mut halves: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(IncomingStream {
        headers,
        mut stream,
    }) = incoming.recv().await
    {
        let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
        let request_id = header(&headers, "requestid").unwrap_or("").to_string();
        let kind = header(&headers, "streamtype").unwrap_or("");
        let Some(port) = port.filter(|p| *p != 0) else {
            tracing::warn!(?headers, "port-forward stream without a valid port header");
            stream.reset(crate::spdy::frame::rst::REFUSED_STREAM);
            continue;
        };
        if !matches!(kind, "error" | "data") {
            stream.reset(crate::spdy::frame::rst::REFUSED_STREAM);
            continue;
        }
        stream.reply();
        let entry = halves.entry(format!("{request_id}/{port}")).or_default();
        if kind == "error" {
            entry.0 = Some(stream);
        } else {
            entry.1 = Some(stream);
        }
        if entry.0.is_none() || entry.1.is_none() {
            continue;
        }
        let (Some(mut err), Some(data)) = halves.remove(&format!("{request_id}/{port}")).unwrap()
        else {
            continue;
        };
        if !spec.ports.is_empty() && !spec.ports.contains(&port) {
            err.send(
                format!(
                    "port {port} is not among the forwarded ports {:?}",
                    spec.ports
                )
                .as_bytes(),
            );
            err.finish();
            continue;
        }
        let fut = ctx
            .backend
            .port_forward(spec.pod_sandbox_id.clone(), port, Box::new(data));
        let sandbox = spec.pod_sandbox_id.clone();
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
                err.send(msg.as_bytes());
            }
            err.finish();
        });
    }
    // The client closed the connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close()).await;
}
