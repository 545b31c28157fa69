//! Carrack's streaming server: exec, attach and port-forward for `kubectl`
//! and `crictl`, over SPDY/3.1 (the upgrade the Kubernetes clients speak)
//! and WebSocket ([`ws`], `v5.channel.k8s.io`/`v4.channel.k8s.io`).
//!
//! carrackd's Exec, Attach and PortForward RPCs call
//! [`StreamingServer::exec_url`], [`StreamingServer::attach_url`] or
//! [`StreamingServer::port_forward_url`]; each returns a URL holding a
//! single-use token that expires after [`StreamingConfig::token_ttl`]
//! (default one minute). A second or late use is answered `404 Not Found`.
//! When the client connects, the server negotiates the newest protocol the
//! client offers in `X-Stream-Protocol-Version` (`v4.channel.k8s.io` down to
//! `channel.k8s.io` for exec and attach, `portforward.k8s.io` for
//! port-forward), upgrades to SPDY/3.1, collects the client's streams by
//! their `streamType` header and calls the [`StreamingBackend`] that
//! carrackd implements:
//!
//! ```ignore
//! let server = StreamingServer::start(StreamingConfig::default(), Arc::new(MyBackend)).await?;
//! let url = server.exec_url(&ExecSpec { container_id, cmd, tty, stdin, stdout, stderr })?;
//! ```
//!
//! Exec's exit code reaches the client on the error stream: with v4 as a
//! Kubernetes `Status` JSON (`Success`, or `Failure` with reason
//! `NonZeroExitCode` and an `ExitCode` cause), with v1–v3 as a message.
//!
//! [`client`] is the project's own client for the same protocol (used by
//! the tests and the e2e suite).
//!
//! A WebSocket upgrade (`Upgrade: websocket`) negotiates
//! `Sec-WebSocket-Protocol` to the newest of `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` the client offers; see [`ws`] for the channel
//! framing.
//!
//! Port-forward over WebSocket (`portforward.k8s.io`) takes its ports from
//! the URL's `port` query parameters.
//!
//! With [`StreamingConfig::tls`] the server speaks HTTPS ([`tls`]) and
//! hands out `https://` URLs.
//!
//! Not done yet: the base64 WebSocket variants.

pub mod client;
mod server;
pub mod spdy;
pub mod tls;
mod token;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use server::StreamingServer;

/// How long a closing side goes on reading once its write side is shut,
/// waiting for the peer to close too. Closing a socket with unread bytes in
/// its receive queue (a peer's SPDY WINDOW_UPDATEs, a WebSocket pong) makes
/// the kernel answer with a reset, and a reset makes the peer's kernel
/// discard what it had received but its program had not read yet: the end
/// of an exec's output and its exit status.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Lets a connection's read side (`reader`, which ends at the peer's
/// close) run for up to [`CLOSE_LINGER`], then stops it; stopped too if
/// this future is dropped first.
pub(crate) async fn linger(reader: tokio::task::JoinHandle<()>) {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _stop = AbortOnDrop(reader.abort_handle());
    let _ = tokio::time::timeout(CLOSE_LINGER, reader).await;
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed stdin reader.
pub type BoxReader = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed stdout/stderr writer.
pub type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A bidirectional byte stream (a forwarded port's connection).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// What an Exec call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Container to run in.
    pub container_id: String,
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// Allocate a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// What an Attach call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    /// Container to attach to.
    pub container_id: String,
    /// The container has a terminal.
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// What a PortForward call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardSpec {
    /// Pod sandbox whose network namespace is dialled.
    pub pod_sandbox_id: String,
    /// Ports the client may forward; empty allows any.
    pub ports: Vec<u16>,
}

/// A terminal size from the client's resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's streams handed to the backend. A `None` was not requested.
/// Writers send end-of-stream when dropped or shut down.
pub struct ProcessIo {
    /// Client's stdin; ends when the client closes it.
    pub stdin: Option<BoxReader>,
    /// To the client's stdout.
    pub stdout: Option<BoxWriter>,
    /// To the client's stderr (never with a terminal).
    pub stderr: Option<BoxWriter>,
    /// Terminal sizes, with a terminal only.
    pub resize: Option<mpsc::UnboundedReceiver<TerminalSize>>,
    /// Fires when the client's connection ends before the session does.
    pub client_gone: ClientGone,
}

/// Tells a backend that the client went away (its connection ended), so an
/// exec can be ended and an attach detached even when nothing is written.
#[derive(Debug)]
pub struct ClientGone(Option<tokio::sync::oneshot::Receiver<()>>);

impl ClientGone {
    /// A pair: the server fires the sender when the connection ends.
    pub(crate) fn new() -> (tokio::sync::oneshot::Sender<()>, ClientGone) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, ClientGone(Some(rx)))
    }

    /// One that never fires.
    pub fn never() -> ClientGone {
        ClientGone(None)
    }

    /// Resolves once the client's connection has ended; never resolves if
    /// it does not end while the session runs.
    pub async fn wait(self) {
        if let Some(rx) = self.0
            && rx.await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

/// A backend failure, reported to the client on the error stream.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The container or sandbox does not exist (or is not running).
    #[error("{0} not found")]
    NotFound(String),
    /// Anything else, with a message for the user.
    #[error("{0}")]
    Failed(String),
}

/// What carrackd implements: run the streams against real containers.
pub trait StreamingBackend: Send + Sync + 'static {
    /// Runs `spec.cmd` in the container with `io`; returns its exit code.
    fn exec(&self, spec: ExecSpec, io: ProcessIo) -> BoxFuture<'static, Result<i32, BackendError>>;
    /// Joins the running container's stdio until it exits or the client leaves.
    fn attach(
        &self,
        spec: AttachSpec,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), BackendError>>;
    /// Copies `stream` to and from `port` inside the sandbox's network namespace.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: Box<dyn AsyncReadWrite>,
    ) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// Listen address; port 0 picks a free port.
    pub addr: std::net::SocketAddr,
    /// How long a URL's token stays valid.
    pub token_ttl: Duration,
    /// How long to wait for the client to open all its streams.
    pub stream_creation_timeout: Duration,
    /// Serve HTTPS with this certificate and key (URLs are then `https://`).
    pub tls: Option<tls::TlsFiles>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl: Duration::from_secs(60),
            stream_creation_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The listen address could not be bound.
    #[error("streaming server cannot listen on {addr}: {source}")]
    Bind {
        /// Address from [`StreamingConfig::addr`].
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A request field is unusable.
    #[error("invalid streaming request: {0}")]
    InvalidRequest(String),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Exec and attach subprotocols, newest first.
pub const CHANNEL_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward subprotocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
