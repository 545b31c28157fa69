//! End-to-end: Exec, Attach and PortForward through the real carrackd (with
//! carrack-shim and runc), driven through CRI, the returned URLs used with
//! the project's own streaming client over SPDY/3.1 and WebSocket.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carrack_e2e::carrackd::{Carrackd, TestImage, require_carrackd_stack};
use carrack_e2e::cri_client::{container_config, pod_config, wait_exited};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;
use carrack_streaming::TerminalSize;
use carrack_streaming::client::{self, ClientError, ExecIo, PortForwarder};
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, mpsc};
use tonic::Code;
use tonic::transport::Channel;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 170;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim"])
}

/// Output received by the client: collected, with a wake-up on each write.
#[derive(Clone, Default)]
struct Output {
    buf: Arc<Mutex<Vec<u8>>>,
    written: Arc<Notify>,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    fn writer(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Unpin> {
        Box::new(OutputWriter(self.clone()))
    }

    /// Waits (up to `secs`) until the output contains `needle`.
    async fn wait_for(&self, needle: &str, secs: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.written.notified();
            if self.text().contains(needle) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.text().contains(needle);
            }
        }
    }
}

struct OutputWriter(Output);

impl tokio::io::AsyncWrite for OutputWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.buf.lock().unwrap().extend_from_slice(data);
        self.0.written.notify_waiters();
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A stdin for the client: the test writes to the returned half.
fn stdin_pipe() -> (DuplexStream, Box<dyn tokio::io::AsyncRead + Send + Unpin>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    (ours, Box::new(theirs))
}

/// Which streaming transport a check uses.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Spdy,
    WebSocket,
}

async fn run_session(t: Transport, url: String, io: ExecIo) -> Result<i32, ClientError> {
    match t {
        Transport::Spdy => client::exec(&url, &[], io).await,
        Transport::WebSocket => client::exec_ws(&url, &[], io).await,
    }
}

/// A daemon with the busybox image pulled and one ready pod.
struct Pod {
    rt: RuntimeServiceClient<Channel>,
    _img: ImageServiceClient<Channel>,
    image: String,
    pod_id: String,
    config: cri::PodSandboxConfig,
    // Dropped last: kills the daemon and removes what it made.
    daemon: Carrackd,
    _registry: TestImage,
}

impl Pod {
    async fn start(name: &str) -> Pod {
        let CriStack {
            image: registry,
            daemon,
            rt,
            img,
            logs,
            pod: pod_id,
            ..
        } = CriStack::with_pod(Carrackd::options().test_network(NETWORK_BASE), |logs| {
            pod_config(name, logs)
        })
        .await;
        Pod {
            rt,
            _img: img,
            image: registry.name.clone(),
            pod_id,
            config: pod_config(name, &logs),
            daemon,
            _registry: registry,
        }
    }

    async fn create(&mut self, cc: cri::ContainerConfig) -> String {
        self.rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.pod_id.clone(),
                config: Some(cc),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("create: {e}\n{}", self.daemon.log()))
            .into_inner()
            .container_id
    }

    async fn run(&mut self, cc: cri::ContainerConfig) -> String {
        let id = self.create(cc).await;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", self.daemon.log()));
        id
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], flags: Flags) -> String {
        self.rt
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: flags.tty,
                stdin: flags.stdin,
                stdout: flags.stdout,
                stderr: flags.stderr,
            })
            .await
            .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}"))
            .into_inner()
            .url
    }

    async fn attach_url(&mut self, id: &str, flags: Flags) -> String {
        self.rt
            .attach(cri::AttachRequest {
                container_id: id.into(),
                tty: flags.tty,
                stdin: flags.stdin,
                stdout: flags.stdout,
                stderr: flags.stderr,
            })
            .await
            .unwrap_or_else(|e| panic!("Attach {id}: {e}"))
            .into_inner()
            .url
    }

    async fn port_forward_url(&mut self, ports: &[i32]) -> String {
        self.rt
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: self.pod_id.clone(),
                port: ports.to_vec(),
            })
            .await
            .unwrap_or_else(|e| panic!("PortForward {ports:?}: {e}"))
            .into_inner()
            .url
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

const OUT: Flags = Flags {
    tty: false,
    stdin: false,
    stdout: true,
    stderr: false,
};
const OUT_ERR: Flags = Flags {
    tty: false,
    stdin: false,
    stdout: true,
    stderr: true,
};
const IN_OUT: Flags = Flags {
    tty: false,
    stdin: true,
    stdout: true,
    stderr: false,
};
const TTY: Flags = Flags {
    tty: true,
    stdin: true,
    stdout: true,
    stderr: false,
};

fn sleeper(name: &str, image: &str) -> cri::ContainerConfig {
    container_config(name, image, &["sleep", "3600"])
}

/// Polls the container's `ps` (bounded) until `ok` holds.
async fn wait_for_ps(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["ps".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        let ps = String::from_utf8_lossy(&r.stdout).into_owned();
        if ok(&ps) {
            return;
        }
        assert!(Instant::now() < deadline, "ps never showed {what}:\n{ps}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_exec_stdin_exit_codes_tty_and_single_use() {
    if !prerequisites() {
        return;
    }
    let mut pod = Pod::start("exec").await;
    let image = pod.image.clone();
    let ctr = pod.run(sleeper("app", &image)).await;

    for t in [Transport::Spdy, Transport::WebSocket] {
        // stdin reaches the process and its end closes the process's stdin.
        let url = pod.exec_url(&ctr, &["cat"], IN_OUT).await;
        let (mut stdin, client_stdin) = stdin_pipe();
        let out = Output::default();
        let payload: String = (0..2000).map(|i| format!("line {i} via {t:?}\n")).collect();
        let session = tokio::spawn(run_session(
            t,
            url.clone(),
            ExecIo {
                stdin: Some(client_stdin),
                stdout: Some(out.writer()),
                ..Default::default()
            },
        ));
        stdin.write_all(payload.as_bytes()).await.unwrap();
        drop(stdin);
        let code = session
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{t:?} cat: {e}"));
        assert_eq!(code, 0, "{t:?}");
        assert_eq!(out.text(), payload, "{t:?}: cat echoed what it read");

        // Exit codes, zero and not, and stdout apart from stderr.
        let url = pod
            .exec_url(
                &ctr,
                &["sh", "-c", "echo out; echo err >&2; exit 7"],
                OUT_ERR,
            )
            .await;
        let (out, err) = (Output::default(), Output::default());
        let code = run_session(
            t,
            url.clone(),
            ExecIo {
                stdout: Some(out.writer()),
                stderr: Some(err.writer()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{t:?} exit 7: {e}"));
        assert_eq!(code, 7, "{t:?}: the non-zero exit code reaches the client");
        assert_eq!(out.text(), "out\n", "{t:?}");
        assert_eq!(err.text(), "err\n", "{t:?}");
        let url = pod.exec_url(&ctr, &["true"], OUT).await;
        let code = run_session(
            t,
            url.clone(),
            ExecIo {
                stdout: Some(Output::default().writer()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(code, 0, "{t:?}");

        // A used token is refused; so is one for another kind of session.
        let err = run_session(
            t,
            url.clone(),
            ExecIo {
                stdout: Some(Output::default().writer()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 404, .. }),
            "{t:?}: replayed token: {err}"
        );

        // A terminal: sizes from the client are what `stty size` sees.
        let url = pod
            .exec_url(&ctr, &["sh", "-c", "while read l; do stty size; done"], TTY)
            .await;
        let (mut stdin, client_stdin) = stdin_pipe();
        let (sizes, resize) = mpsc::unbounded_channel();
        let out = Output::default();
        let mut session = tokio::spawn(run_session(
            t,
            url.clone(),
            ExecIo {
                stdin: Some(client_stdin),
                stdout: Some(out.writer()),
                tty: true,
                resize: Some(resize),
                ..Default::default()
            },
        ));
        for (rows, cols) in [(40u16, 100u16), (50, 120)] {
            sizes
                .send(TerminalSize {
                    width: cols,
                    height: rows,
                })
                .unwrap();
            // The resize and the line travel separately: ask again until
            // the new size shows (bounded).
            let deadline = Instant::now() + Duration::from_secs(20);
            let want = format!("{rows} {cols}");
            loop {
                if stdin.write_all(b"size?\n").await.is_err() {
                    let r = (&mut session).await.unwrap();
                    panic!("{t:?}: tty session ended early: {r:?}: {:?}", out.text());
                }
                if out.wait_for(&want, 1).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{t:?}: stty never printed {want:?}: {:?}",
                    out.text()
                );
            }
        }
        // ^D on the terminal: `read` sees end of input and sh exits 0.
        stdin.write_all(b"\x04").await.unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), session)
            .await
            .expect("tty exec ends after ^D")
            .unwrap()
            .unwrap_or_else(|e| panic!("{t:?} tty: {e}"));
        assert_eq!(code, 0, "{t:?}");
        drop(stdin);
    }

    // Bulk output (what `kubectl cp` relies on) arrives whole.
    let url = pod
        .exec_url(&ctr, &["sh", "-c", "head -c 8000000 /dev/zero"], OUT)
        .await;
    let out = Output::default();
    let code = client::exec(
        &url,
        &[],
        ExecIo {
            stdout: Some(out.writer()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        out.buf.lock().unwrap().len(),
        8_000_000,
        "bytes lost on the way"
    );

    // A client that goes away ends its exec, even one that writes nothing
    // (WebSocket: dropping the client closes its connection).
    let url = pod.exec_url(&ctr, &["sleep", "1001"], OUT).await;
    let session = tokio::spawn(run_session(
        Transport::WebSocket,
        url,
        ExecIo {
            stdout: Some(Output::default().writer()),
            ..Default::default()
        },
    ));
    wait_for_ps(&mut pod.rt, &ctr, "the exec running", |ps| {
        ps.contains("sleep 1001")
    })
    .await;
    session.abort();
    wait_for_ps(&mut pod.rt, &ctr, "the exec ended", |ps| {
        !ps.contains("sleep 1001")
    })
    .await;

    // A command that cannot run fails the session, not with success.
    let url = pod.exec_url(&ctr, &["/no/such/binary"], OUT).await;
    let r = client::exec(
        &url,
        &[],
        ExecIo {
            stdout: Some(Output::default().writer()),
            ..Default::default()
        },
    )
    .await;
    assert!(
        !matches!(r, Ok(0)),
        "missing binary reported success: {r:?}"
    );

    // Every exec process was removed from the shim: the container's
    // process list is back to its init process.
    let ps = pod
        .rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["ps".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        !ps.contains("cat") && !ps.contains("stty"),
        "leftover exec processes:\n{ps}"
    );
    // ... and the shim kept no exec spec, pid file or console socket.
    let shim_dir = pod.daemon.dir.join("state/shims").join(&ctr);
    let left: Vec<String> = std::fs::read_dir(&shim_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-") || (n.starts_with('c') && n.ends_with(".sock")))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", shim_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_attach_output_fan_out_and_stdin() {
    if !prerequisites() {
        return;
    }
    let mut pod = Pod::start("attach").await;
    let image = pod.image.clone();
    let ticker = pod
        .run(container_config(
            "ticker",
            &image,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
        ))
        .await;

    // Two clients at once, one per transport: each gets the output.
    let mut sessions = Vec::new();
    let mut outputs = Vec::new();
    for t in [Transport::Spdy, Transport::WebSocket] {
        let url = pod.attach_url(&ticker, OUT).await;
        let out = Output::default();
        sessions.push(tokio::spawn(run_session(
            t,
            url.clone(),
            ExecIo {
                stdout: Some(out.writer()),
                ..Default::default()
            },
        )));
        outputs.push((t, out));
    }
    for (t, out) in &outputs {
        assert!(
            out.wait_for("tick", 20).await,
            "{t:?}: no output attached: {:?}",
            out.text()
        );
    }
    pod.rt
        .stop_container(cri::StopContainerRequest {
            container_id: ticker.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    for ((t, _), s) in outputs.iter().zip(sessions) {
        let r = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("attach ends when the container exits")
            .unwrap();
        assert_eq!(r.unwrap_or_else(|e| panic!("{t:?}: {e}")), 0, "{t:?}");
    }

    // A container started with stdin (StdinOnce): what the client writes
    // reaches it, and the client's end of stdin closes the container's.
    let mut cc = container_config("reader", &image, &["cat"]);
    cc.stdin = true;
    cc.stdin_once = true;
    let reader = pod.run(cc).await;
    let url = pod.attach_url(&reader, IN_OUT).await;
    let (mut stdin, client_stdin) = stdin_pipe();
    let out = Output::default();
    let session = tokio::spawn(run_session(
        Transport::Spdy,
        url.clone(),
        ExecIo {
            stdin: Some(client_stdin),
            stdout: Some(out.writer()),
            ..Default::default()
        },
    ));
    stdin.write_all(b"ping from attach\n").await.unwrap();
    assert!(
        out.wait_for("ping from attach\n", 20).await,
        "{:?}",
        out.text()
    );
    drop(stdin);
    let r = tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .expect("StdinOnce: cat ends when the attached stdin closes")
        .unwrap();
    assert_eq!(r.unwrap(), 0);
    let st = wait_exited(&mut pod.rt, &reader, 20).await;
    assert_eq!(st.exit_code, 0);

    // A container with a terminal: the attached client's sizes reach its
    // pty, its keys reach the shell (^D ends it).
    let mut cc = container_config(
        "terminal",
        &image,
        &["sh", "-c", "while read l; do stty size; done"],
    );
    cc.stdin = true;
    cc.tty = true;
    let terminal = pod.run(cc).await;
    for (t, rows, cols) in [
        (Transport::WebSocket, 33u16, 77u16),
        (Transport::Spdy, 44, 88),
    ] {
        let url = pod.attach_url(&terminal, TTY).await;
        let (mut stdin, client_stdin) = stdin_pipe();
        let (sizes, resize) = mpsc::unbounded_channel();
        let out = Output::default();
        let mut session = tokio::spawn(run_session(
            t,
            url.clone(),
            ExecIo {
                stdin: Some(client_stdin),
                stdout: Some(out.writer()),
                tty: true,
                resize: Some(resize),
                ..Default::default()
            },
        ));
        sizes
            .send(TerminalSize {
                width: cols,
                height: rows,
            })
            .unwrap();
        let want = format!("{rows} {cols}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if stdin.write_all(b"size?\n").await.is_err() {
                let r = (&mut session).await.unwrap();
                panic!("{t:?}: tty attach ended early: {r:?}: {:?}", out.text());
            }
            if out.wait_for(&want, 1).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{t:?}: attached stty never printed {want:?}: {:?}",
                out.text()
            );
        }
        if matches!(t, Transport::Spdy) {
            stdin.write_all(b"\x04").await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(30), session)
                .await
                .expect("attach ends when the shell exits on ^D")
                .unwrap();
            assert_eq!(r.unwrap(), 0);
        } else {
            // The first client leaves; the container keeps running for
            // the next one.
            session.abort();
        }
    }
    let st = wait_exited(&mut pod.rt, &terminal, 20).await;
    assert_eq!(st.exit_code, 0);

    // Attach to an exited container is refused.
    let e = pod
        .rt
        .attach(cri::AttachRequest {
            container_id: reader.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

/// Sends an HTTP/1.0 GET over `conn` and reads the answer until `needle`
/// shows or the peer closes.
async fn http_get<S>(conn: &mut S, needle: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_port_forward_to_httpd_in_the_pod() {
    if !prerequisites() {
        return;
    }
    let mut pod = Pod::start("pf").await;
    let image = pod.image.clone();
    // Listening on the pod's loopback only: reachable only from inside
    // the pod's network namespace.
    let web = pod
        .run(container_config(
            "web",
            &image,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-port-forward > /www/index.html && exec httpd -f -p 127.0.0.1:18080 -h /www",
            ],
        ))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = pod
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: ["wget", "-q", "-O-", "http://127.0.0.1:18080/index.html"]
                    .map(String::from)
                    .to_vec(),
                timeout: 5,
            })
            .await
            .unwrap()
            .into_inner();
        if String::from_utf8_lossy(&r.stdout).contains("hello-port-forward") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "httpd never answered inside the pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The host's loopback is another network: nothing listens there.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 18080)).is_err(),
        "something on the host listens on 18080: the test cannot tell the networks apart"
    );

    // SPDY: two connections over one session.
    let url = pod.port_forward_url(&[18080]).await;
    let fwd = PortForwarder::connect(&url).await.unwrap();
    for _ in 0..2 {
        let mut conn = fwd.open(18080).await.unwrap();
        let answer = http_get(&mut conn.data, "hello-port-forward").await;
        assert!(answer.contains("200 OK"), "{answer}");
        assert!(answer.contains("hello-port-forward"), "{answer}");
    }
    // A port outside the request's list is refused on the error stream.
    let mut conn = fwd.open(18081).await.unwrap();
    let mut msg = String::new();
    conn.error.read_to_string(&mut msg).await.unwrap();
    assert!(msg.contains("18081"), "{msg}");
    fwd.close().await;

    // The token was single-use.
    let e = PortForwarder::connect(&url)
        .await
        .err()
        .expect("replayed token refused");
    assert!(matches!(e, ClientError::Refused { status: 404, .. }), "{e}");

    // Any port allowed; a port nobody listens on reports the dial error.
    let url = pod.port_forward_url(&[]).await;
    let fwd = PortForwarder::connect(&url).await.unwrap();
    let mut conn = fwd.open(18082).await.unwrap();
    let mut msg = String::new();
    conn.error.read_to_string(&mut msg).await.unwrap();
    assert!(msg.contains("18082") && msg.contains("refused"), "{msg}");
    fwd.close().await;

    // WebSocket.
    let url = pod.port_forward_url(&[18080]).await;
    let mut ws = client::port_forward_ws(&url, &[18080]).await.unwrap();
    let answer = http_get(&mut ws.conns[0], "hello-port-forward").await;
    assert!(answer.contains("hello-port-forward"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bad_requests_rejected_with_codes() {
    if !prerequisites() {
        return;
    }
    let mut pod = Pod::start("bad").await;
    let image = pod.image.clone();
    let running = pod.run(sleeper("running", &image)).await;
    let created = pod.create(sleeper("created", &image)).await;
    let exec = |id: &str, cmd: &[&str], f: Flags| cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: f.tty,
        stdin: f.stdin,
        stdout: f.stdout,
        stderr: f.stderr,
    };
    let none = Flags::default();
    let tty_err = Flags {
        tty: true,
        stdout: true,
        stderr: true,
        stdin: false,
    };
    let cases: Vec<(&str, cri::ExecRequest, Code, &str)> = vec![
        (
            "unknown",
            exec("nope", &["true"], OUT),
            Code::NotFound,
            "nope",
        ),
        (
            "empty id",
            exec("", &["true"], OUT),
            Code::InvalidArgument,
            "container_id",
        ),
        (
            "no cmd",
            exec(&running, &[], OUT),
            Code::InvalidArgument,
            "cmd",
        ),
        (
            "no streams",
            exec(&running, &["true"], none),
            Code::InvalidArgument,
            "stdout",
        ),
        (
            "tty+stderr",
            exec(&running, &["true"], tty_err),
            Code::InvalidArgument,
            "tty",
        ),
        (
            "created",
            exec(&created, &["true"], OUT),
            Code::FailedPrecondition,
            &created,
        ),
    ];
    for (what, req, code, field) in cases {
        let e = pod.rt.exec(req).await.unwrap_err();
        assert_eq!(e.code(), code, "Exec {what}: {e:?}");
        assert!(e.message().contains(field), "Exec {what}: {e:?}");
    }
    let attach = |id: &str, f: Flags| cri::AttachRequest {
        container_id: id.into(),
        tty: f.tty,
        stdin: f.stdin,
        stdout: f.stdout,
        stderr: f.stderr,
    };
    let cases: Vec<(&str, cri::AttachRequest, Code, &str)> = vec![
        ("unknown", attach("nope", OUT), Code::NotFound, "nope"),
        (
            "no streams",
            attach(&running, none),
            Code::InvalidArgument,
            "stdout",
        ),
        (
            "tty+stderr",
            attach(&running, tty_err),
            Code::InvalidArgument,
            "tty",
        ),
        (
            "created",
            attach(&created, OUT),
            Code::FailedPrecondition,
            &created,
        ),
        (
            "stdin",
            attach(&running, IN_OUT),
            Code::InvalidArgument,
            "stdin",
        ),
    ];
    for (what, req, code, field) in cases {
        let e = pod.rt.attach(req).await.unwrap_err();
        assert_eq!(e.code(), code, "Attach {what}: {e:?}");
        assert!(e.message().contains(field), "Attach {what}: {e:?}");
    }
    let pf = |id: &str, ports: &[i32]| cri::PortForwardRequest {
        pod_sandbox_id: id.into(),
        port: ports.to_vec(),
    };
    let pod_id = pod.pod_id.clone();
    let cases: Vec<(&str, cri::PortForwardRequest, Code, &str)> = vec![
        ("unknown", pf("nope", &[80]), Code::NotFound, "nope"),
        (
            "empty id",
            pf("", &[80]),
            Code::InvalidArgument,
            "pod_sandbox_id",
        ),
        ("port 0", pf(&pod_id, &[0]), Code::InvalidArgument, "port"),
        (
            "port 70000",
            pf(&pod_id, &[70000]),
            Code::InvalidArgument,
            "port",
        ),
    ];
    for (what, req, code, field) in cases {
        let e = pod.rt.port_forward(req).await.unwrap_err();
        assert_eq!(e.code(), code, "PortForward {what}: {e:?}");
        assert!(e.message().contains(field), "PortForward {what}: {e:?}");
    }
    // A URL of one kind is no good for another: an attach token on the
    // exec path is refused (and spent).
    let url = pod.attach_url(&running, OUT).await;
    let wrong = url.replace("/attach/", "/exec/");
    let e = client::exec(
        &wrong,
        &[],
        ExecIo {
            stdout: Some(Output::default().writer()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Refused { status: 404, .. }), "{e}");

    // A stopped sandbox cannot be forwarded to.
    pod.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
    let e = pod.rt.port_forward(pf(&pod_id, &[80])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}
