//! Exec, Attach and PortForward sessions for carrackd: the CRI side of
//! `carrack-streaming`.
//!
//! - `backend`: the [`carrack_streaming::StreamingBackend`] carrackd gives
//!   the server, which runs each session against the container's shim:
//!   `exec_session` (shim Exec + Start + Wait, stdio over the shim's Attach
//!   stream, ResizePty), `attach_session` (the init process's stdio) and
//!   `pod_port` (a TCP connection dialled inside the pod's network
//!   namespace);
//! - `shim_stdio`: the copying between the client's streams and a shim
//!   Attach stream, shared by exec and attach.
//!
//! This module owns the server's lifetime ([`Streaming`]) and reaches the
//! daemon only through [`SessionTargets`] (find a running container, a
//! connection to its shim, a pod's network namespace). The Exec, Attach and
//! PortForward RPCs (checking the request, handing out the URL) are in
//! `crate::server`; the server's settings are `crate::config`'s.

mod attach_session;
mod backend;
mod exec_session;
mod pod_port;
mod shim_stdio;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use carrack_shim::ShimClient;
use carrack_streaming::{BackendError, BoxFuture, StreamingError, StreamingServer};

use crate::config::StreamingSettings;

/// A running container, as a session needs it.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    /// Created with stdin (`ContainerConfig.stdin`).
    pub stdin: bool,
    /// Its stdin closes when the first attached client's does
    /// (`ContainerConfig.stdin_once`).
    pub stdin_once: bool,
    /// Created with a terminal (`ContainerConfig.tty`).
    pub tty: bool,
    /// Its bundle, whose `config.json` holds the process an exec starts from.
    pub bundle: PathBuf,
}

/// What the streaming sessions need of the daemon, and no more.
pub trait SessionTargets: Send + Sync {
    /// The container `id` names when it is running; `NotFound` otherwise.
    fn running_container(&self, id: &str) -> Result<RunningContainer, BackendError>;
    /// A connection to the shim of container `id` (a full id).
    fn shim(&self, id: &str) -> BoxFuture<'_, Result<ShimClient, BackendError>>;
    /// The network namespace file of pod sandbox `id` (empty: the host's
    /// network); `NotFound` when there is no such sandbox.
    fn pod_netns(&self, id: &str) -> Result<String, BackendError>;
}

/// The daemon's handle on its streaming server (absent until started).
#[derive(Default)]
pub struct Streaming {
    server: Mutex<Option<StreamingServer>>,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = self.with_server(|s| s.local_addr()).ok();
        f.debug_struct("Streaming").field("addr", &addr).finish()
    }
}

/// The streaming server is not running (not started yet, or stopped).
#[derive(Debug, thiserror::Error)]
#[error("the streaming server is not running")]
pub struct NotRunning;

impl Streaming {
    /// Starts the server with `settings`, its sessions running against
    /// `targets` (held weakly: the daemon owns this handle); returns its
    /// address.
    pub async fn start(
        &self,
        targets: Weak<dyn SessionTargets>,
        settings: &StreamingSettings,
    ) -> Result<SocketAddr, StreamingError> {
        let backend = Arc::new(backend::ShimBackend::new(targets));
        let server = StreamingServer::start(settings.server_config(), backend).await?;
        let addr = server.local_addr();
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        Ok(addr)
    }

    /// Stops accepting streaming connections.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = server {
            s.shutdown().await;
        }
    }

    /// Runs `f` on the server (to hand out a URL), when it runs.
    pub fn with_server<T>(&self, f: impl FnOnce(&StreamingServer) -> T) -> Result<T, NotRunning> {
        let g = self.server.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(f).ok_or(NotRunning)
    }
}
