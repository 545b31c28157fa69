//! End-to-end tests of the streaming server with the crate's own client and
//! a fake backend that runs real host processes (pipes, or a real pty for
//! TTY exec) and dials real TCP ports on 127.0.0.1.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use carrack_streaming::client::{self, ClientError, ExecIo, PortForwarder};
use carrack_streaming::{
    AsyncReadWrite, AttachSpec, BackendError, BoxFuture, ExecSpec, PortForwardSpec, ProcessIo,
    StreamingBackend, StreamingConfig, StreamingServer, TerminalSize,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

struct HostBackend;

fn set_winsize(fd: &OwnedFd, s: TerminalSize) {
    let ws = libc::winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is an open pty master owned by the caller; ws is a valid winsize.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

async fn run(spec: ExecSpec, io: ProcessIo) -> Result<i32, BackendError> {
    let fail = |e: io::Error| BackendError::Failed(e.to_string());
    let mut cmd = tokio::process::Command::new(&spec.cmd[0]);
    cmd.args(&spec.cmd[1..]).kill_on_drop(true);
    if spec.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| fail(e.into()))?;
        let slave = std::fs::File::from(pty.slave);
        cmd.stdin(slave.try_clone().map_err(fail)?)
            .stdout(slave.try_clone().map_err(fail)?)
            .stderr(slave);
        let mut child = cmd.spawn().map_err(fail)?;
        drop(cmd);
        let master = pty.master;
        let mut reader =
            tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(fail)?));
        let mut writer =
            tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(fail)?));
        if let Some(mut rx) = io.resize {
            tokio::spawn(async move {
                while let Some(s) = rx.recv().await {
                    set_winsize(&master, s);
                }
            });
        }
        if let Some(mut stdin) = io.stdin {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stdin, &mut writer).await;
            });
        }
        let mut out = io.stdout;
        let copier = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // EIO once the child's side is closed ends the copy.
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(o) = out.as_mut()
                    && o.write_all(&buf[..n]).await.is_err()
                {
                    break;
                }
            }
        });
        let status = child.wait().await.map_err(fail)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), copier).await;
        return Ok(status.code().unwrap_or(128));
    }
    cmd.stdin(if io.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(fail)?;
    if let (Some(mut from), Some(mut to)) = (io.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        });
    }
    let mut pumps = Vec::new();
    for (src, dst) in [
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn AsyncRead + Send + Unpin>,
            io.stdout,
        ),
        (Box::new(child.stderr.take().unwrap()), io.stderr),
    ] {
        let mut src = src;
        pumps.push(tokio::spawn(async move {
            match dst {
                Some(mut d) => {
                    let _ = tokio::io::copy(&mut src, &mut d).await;
                    let _ = d.shutdown().await;
                }
                None => {
                    let _ = tokio::io::copy(&mut src, &mut tokio::io::sink()).await;
                }
            }
        }));
    }
    let status = child.wait().await.map_err(fail)?;
    for p in pumps {
        let _ = p.await;
    }
    Ok(status.code().unwrap_or(128))
}

impl StreamingBackend for HostBackend {
    fn exec(&self, spec: ExecSpec, io: ProcessIo) -> BoxFuture<'static, Result<i32, BackendError>> {
        Box::pin(run(spec, io))
    }
    fn attach(
        &self,
        spec: AttachSpec,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async move {
            if spec.container_id != "running" {
                return Err(BackendError::NotFound(format!(
                    "container {}",
                    spec.container_id
                )));
            }
            let mut out = io.stdout.unwrap();
            out.write_all(b"attached\n").await.unwrap();
            if let Some(mut i) = io.stdin {
                let _ = tokio::io::copy(&mut i, &mut out).await;
            }
            Ok(())
        })
    }
    fn port_forward(
        &self,
        _sandbox: String,
        port: u16,
        mut stream: Box<dyn AsyncReadWrite>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async move {
            let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| BackendError::Failed(format!("dial 127.0.0.1:{port}: {e}")))?;
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
            Ok(())
        })
    }
}

/// An `AsyncWrite` into a shared buffer.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn server(cfg: StreamingConfig) -> StreamingServer {
    StreamingServer::start(cfg, Arc::new(HostBackend))
        .await
        .unwrap()
}

fn spec(cmd: &[&str], stdin: bool, tty: bool) -> ExecSpec {
    ExecSpec {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

async fn exec_capture(
    url: &str,
    protocols: &[&str],
    stdin: Option<&'static [u8]>,
) -> (Result<i32, ClientError>, String, String) {
    let (out, err) = (Sink::default(), Sink::default());
    let r = client::exec(
        url,
        protocols,
        ExecIo {
            stdin: stdin.map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(err.clone())),
            ..Default::default()
        },
    )
    .await;
    (r, out.text(), err.text())
}

#[tokio::test]
async fn exec_stdin_echo_over_v4() {
    let s = server(StreamingConfig::default()).await;
    let url = s.exec_url(&spec(&["cat"], true, false)).unwrap();
    let (code, out, _) = exec_capture(&url, &[], Some(b"hello through spdy\n")).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out, "hello through spdy\n");
    s.shutdown().await;
}

#[tokio::test]
async fn exec_non_zero_exit_code_reaches_client_via_v4_status() {
    let s = server(StreamingConfig::default()).await;
    let url = s
        .exec_url(&spec(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        ))
        .unwrap();
    let (code, out, err) = exec_capture(&url, &["v4.channel.k8s.io"], None).await;
    assert_eq!(code.unwrap(), 3);
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    s.shutdown().await;
}

#[tokio::test]
async fn older_protocols_report_failure_as_text_and_newest_offered_is_chosen() {
    let s = server(StreamingConfig::default()).await;
    // An unknown newer protocol is skipped in favour of v3.
    let url = s
        .exec_url(&spec(&["sh", "-c", "exit 7"], false, false))
        .unwrap();
    let (code, _, _) = exec_capture(
        &url,
        &["v9.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"],
        None,
    )
    .await;
    match code {
        Err(ClientError::Remote(m)) => assert!(m.contains("exit code 7"), "{m}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    let url = s.exec_url(&spec(&["true"], false, false)).unwrap();
    let (code, _, _) = exec_capture(&url, &["v2.channel.k8s.io"], None).await;
    assert_eq!(code.unwrap(), 0);
    let url = s.exec_url(&spec(&["true"], false, false)).unwrap();
    let (code, _, _) = exec_capture(&url, &["v5.channel.k8s.io"], None).await;
    assert!(
        matches!(code, Err(ClientError::Refused { status: 403, .. })),
        "{code:?}"
    );
    s.shutdown().await;
}

/// Runs `while read l; do stty size; done` in a real pty, sends a resize,
/// then newlines until `stty size` reports it (bounded: the resize and
/// stdin are separate streams, so the first line may race the resize).
async fn tty_resize_roundtrip(websocket: bool) {
    let s = server(StreamingConfig::default()).await;
    let url = s
        .exec_url(&spec(
            &["sh", "-c", "while read l; do stty size; done"],
            true,
            true,
        ))
        .unwrap();
    let (mut stdin_w, stdin_r) = tokio::io::duplex(1024);
    let (out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (rtx, rrx) = mpsc::unbounded_channel();
    let io = ExecIo {
        stdin: Some(Box::new(stdin_r)),
        stdout: Some(Box::new(out_w)),
        stderr: None,
        tty: true,
        resize: Some(rrx),
    };
    let task = tokio::spawn(async move {
        if websocket {
            client::exec_ws(&url, &[], io).await
        } else {
            client::exec(&url, &[], io).await
        }
    });
    let mut lines = tokio::io::BufReader::new(out_r).lines();
    rtx.send(TerminalSize {
        width: 123,
        height: 45,
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut ok = false;
    for _ in 0..20 {
        stdin_w.write_all(b"\n").await.unwrap();
        // Each newline produces the tty's echo and one `stty size` line.
        let line = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let l = lines.next_line().await.unwrap().unwrap();
                let l = l.trim().to_string();
                if !l.is_empty() {
                    return l;
                }
            }
        })
        .await
        .expect("stty size answered");
        if line == "45 123" {
            ok = true;
            break;
        }
        seen.push(line);
    }
    assert!(ok, "never saw 45 123, saw {seen:?}");
    // End of input on a terminal is the EOF character, as a user types it.
    stdin_w.write_all(b"\x04").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code.unwrap(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn tty_resize_is_seen_by_stty_size() {
    tty_resize_roundtrip(false).await;
}

#[tokio::test]
async fn websocket_tty_resize_is_seen_by_stty_size() {
    tty_resize_roundtrip(true).await;
}

#[tokio::test]
async fn attach_joins_and_unknown_container_is_reported() {
    let s = server(StreamingConfig::default()).await;
    let a = |id: &str| AttachSpec {
        container_id: id.into(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: false,
    };
    let url = s.attach_url(&a("running")).unwrap();
    let out = Sink::default();
    let code = client::exec(
        &url,
        &[],
        ExecIo {
            stdin: Some(Box::new(&b"typed\n"[..])),
            stdout: Some(Box::new(out.clone())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out.text(), "attached\ntyped\n");
    let url = s.attach_url(&a("gone")).unwrap();
    let code = client::exec(
        &url,
        &[],
        ExecIo {
            stdout: Some(Box::new(Sink::default())),
            stdin: Some(Box::new(&b""[..])),
            ..Default::default()
        },
    )
    .await;
    match code {
        Err(ClientError::Remote(m)) => assert!(m.contains("container gone not found"), "{m}"),
        other => panic!("expected remote error, got {other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_execs() {
    let s = Arc::new(server(StreamingConfig::default()).await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = s
            .exec_url(&spec(
                &["sh", "-c", &format!("cat; echo done {i}; exit {i}")],
                true,
                false,
            ))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let input: &'static [u8] =
                Box::leak(format!("input {i}\n").into_bytes().into_boxed_slice());
            let (code, out, _) = exec_capture(&url, &[], Some(input)).await;
            (i, code.unwrap(), out)
        }));
    }
    for t in tasks {
        let (i, code, out) = t.await.unwrap();
        assert_eq!(code, i);
        assert_eq!(out, format!("input {i}\ndone {i}\n"));
    }
}

#[tokio::test]
async fn replayed_token_is_refused() {
    let s = server(StreamingConfig::default()).await;
    let url = s.exec_url(&spec(&["true"], false, false)).unwrap();
    let (code, _, _) = exec_capture(&url, &[], None).await;
    assert_eq!(code.unwrap(), 0);
    let (code, _, _) = exec_capture(&url, &[], None).await;
    assert!(
        matches!(code, Err(ClientError::Refused { status: 404, .. })),
        "{code:?}"
    );
    // A token for exec does not open a port-forward either.
    let url = s.exec_url(&spec(&["true"], false, false)).unwrap();
    let pf = PortForwarder::connect(&url.replace("/exec/", "/portforward/")).await;
    assert!(matches!(pf, Err(ClientError::Refused { status: 404, .. })));
    s.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let s = server(StreamingConfig {
        token_ttl: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let url = s.exec_url(&spec(&["true"], false, false)).unwrap();
    // Let the token's lifetime pass: the passage of time is what is tested.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, _, _) = exec_capture(&url, &[], None).await;
    assert!(
        matches!(code, Err(ClientError::Refused { status: 404, .. })),
        "{code:?}"
    );
    s.shutdown().await;
}

async fn echo_server(tag: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut reply = tag.as_bytes().to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if c.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn port_forward_several_ports_and_connections() {
    let (a, b) = (echo_server("A:").await, echo_server("B:").await);
    let s = server(StreamingConfig::default()).await;
    let url = s
        .port_forward_url(&PortForwardSpec {
            pod_sandbox_id: "pod".into(),
            ports: vec![a, b],
        })
        .unwrap();
    let pf = Arc::new(PortForwarder::connect(&url).await.unwrap());
    let mut tasks = Vec::new();
    for (i, port, tag) in [(0, a, "A:"), (1, b, "B:"), (2, a, "A:"), (3, b, "B:")] {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pf.open(port).await.unwrap();
            let msg = format!("conn {i} ").repeat(2000);
            conn.data.write_all(msg.as_bytes()).await.unwrap();
            let want = msg.len() + tag.len();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while got.len() < want {
                let n = conn.data.read(&mut buf).await.unwrap();
                assert!(n > 0, "stream ended early");
                got.extend_from_slice(&buf[..n]);
            }
            let got = String::from_utf8(got).unwrap();
            assert!(got.starts_with(tag));
            assert_eq!(got.replace(tag, ""), msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A port that is not forwarded gets an error on its error stream.
    let mut conn = pf.open(1).await.unwrap();
    let mut msg = String::new();
    conn.error.read_to_string(&mut msg).await.unwrap();
    assert!(
        msg.contains("port 1 is not among the forwarded ports"),
        "{msg}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn port_forward_dial_failure_is_reported() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = server(StreamingConfig::default()).await;
    let url = s
        .port_forward_url(&PortForwardSpec {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let pf = PortForwarder::connect(&url).await.unwrap();
    let mut conn = pf.open(closed).await.unwrap();
    let mut msg = String::new();
    conn.error.read_to_string(&mut msg).await.unwrap();
    assert!(
        msg.contains(&format!("error forwarding port {closed} to pod pod")),
        "{msg}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_v5_exec_stdin_echo_exit_code_and_close_signal() {
    let s = server(StreamingConfig::default()).await;
    // `cat` only ends when the v5 close signal closes its stdin. The close
    // signal goes client to server only: the client fails on a message on
    // channel 255 (or any channel a server must not write to).
    let url = s
        .exec_url(&spec(
            &["sh", "-c", "cat; echo bye >&2; exit 5"],
            true,
            false,
        ))
        .unwrap();
    let (out, err) = (Sink::default(), Sink::default());
    let code = client::exec_ws(
        &url,
        &["v5.channel.k8s.io", "v4.channel.k8s.io"],
        ExecIo {
            stdin: Some(Box::new(&b"over websocket\n"[..])),
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(err.clone())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code.unwrap(), 5);
    assert_eq!(out.text(), "over websocket\n");
    assert_eq!(err.text(), "bye\n");
    // Replayed over WebSocket too.
    let code = client::exec_ws(&url, &[], ExecIo::default()).await;
    assert!(
        matches!(code, Err(ClientError::Refused { status: 404, .. })),
        "{code:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_v4_exec_success() {
    let s = server(StreamingConfig::default()).await;
    let url = s
        .exec_url(&spec(&["sh", "-c", "echo v4 ok"], false, false))
        .unwrap();
    let out = Sink::default();
    let code = client::exec_ws(
        &url,
        &["v4.channel.k8s.io"],
        ExecIo {
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(Sink::default())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out.text(), "v4 ok\n");

    s.shutdown().await;
}

#[tokio::test]
async fn websocket_port_forward_two_ports_and_dial_error() {
    let (a, b) = (echo_server("A:").await, echo_server("B:").await);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = server(StreamingConfig::default()).await;
    let url = s
        .port_forward_url(&PortForwardSpec {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let mut fwd = client::port_forward_ws(&url, &[a, b, closed])
        .await
        .unwrap();
    for (i, (conn, tag)) in fwd.conns.iter_mut().zip(["A:", "B:"]).enumerate() {
        let msg = format!("ws payload {i} ").repeat(3000);
        conn.write_all(msg.as_bytes()).await.unwrap();
        let want = msg.len() + tag.len();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while got.len() < want {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "forwarded connection ended early");
            got.extend_from_slice(&buf[..n]);
        }
        // The echo server tags every chunk it reads.
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with(tag));
        assert!(got.replace(tag, "") == msg, "port {i} echoed wrong bytes");
    }
    let (port, msg) = tokio::time::timeout(Duration::from_secs(10), fwd.errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(port, closed);
    assert!(
        msg.contains(&format!("error forwarding port {closed}")),
        "{msg}"
    );
    // The token was single-use for WebSocket port-forward too.
    assert!(matches!(
        client::port_forward_ws(&url, &[a]).await,
        Err(ClientError::Refused { status: 404, .. })
    ));
    s.shutdown().await;
}

#[tokio::test]
async fn large_output_arrives_whole_over_both_transports() {
    let s = server(StreamingConfig::default()).await;
    let cmd = ["sh", "-c", "yes carrack-streaming | head -n 50000"];
    let want = "carrack-streaming\n".repeat(50000);
    let url = s.exec_url(&spec(&cmd, false, false)).unwrap();
    let (code, out, _) = exec_capture(&url, &[], None).await;
    assert_eq!(code.unwrap(), 0);
    assert!(
        out == want,
        "SPDY stdout has {} bytes, want {}",
        out.len(),
        want.len()
    );
    let url = s.exec_url(&spec(&cmd, false, false)).unwrap();
    let out = Sink::default();
    let code = client::exec_ws(
        &url,
        &[],
        ExecIo {
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(Sink::default())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code.unwrap(), 0);
    let out = out.text();
    assert!(
        out == want,
        "WebSocket stdout has {} bytes, want {}",
        out.len(),
        want.len()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn exec_over_tls_with_the_servers_ca_and_plain_http_refused() {
    if !carrack_e2e::prerequisite::require_file("/usr/bin/openssl", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = carrack_e2e::tls::make_certs(dir.path());
    let s = server(StreamingConfig {
        tls: Some(carrack_streaming::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..Default::default()
    })
    .await;
    let url = s.exec_url(&spec(&["cat"], true, false)).unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    client::trust_ca_file(&ca).unwrap();
    let (code, out, _) = exec_capture(&url, &[], Some(b"hello over tls\n")).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out, "hello over tls\n");

    // The same server does not answer plain HTTP.
    let plain = s
        .exec_url(&spec(&["true"], false, false))
        .unwrap()
        .replacen("https://", "http://", 1);
    let (code, _, _) = exec_capture(&plain, &[], None).await;
    assert!(code.is_err(), "plain HTTP to a TLS server must fail");
    s.shutdown().await;

    // A key that is not the certificate's is refused, naming the file.
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = carrack_e2e::tls::make_certs(other.path());
    let e = StreamingServer::start(
        StreamingConfig {
            tls: Some(carrack_streaming::tls::TlsFiles {
                cert: cert.clone(),
                key: other_key,
            }),
            ..Default::default()
        },
        Arc::new(HostBackend),
    )
    .await
    .err()
    .expect("mismatched key refused")
    .to_string();
    assert!(e.contains(cert.to_str().unwrap()), "{e}");
    let e = StreamingServer::start(
        StreamingConfig {
            tls: Some(carrack_streaming::tls::TlsFiles {
                cert: dir.path().join("missing.pem"),
                key,
            }),
            ..Default::default()
        },
        Arc::new(HostBackend),
    )
    .await
    .err()
    .expect("missing cert refused")
    .to_string();
    assert!(e.contains("missing.pem"), "{e}");
}
