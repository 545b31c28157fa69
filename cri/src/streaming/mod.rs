//! Exec, Attach and PortForward for carrackd: the CRI side of
//! `carrack-streaming`.
//!
//! - [`settings`]: the `[streaming]` configuration table;
//! - `requests`: validation of the CRI requests and the single-use URLs;
//! - `backend`: the [`carrack_streaming::StreamingBackend`] carrackd gives
//!   the server, which runs each session against the container's shim:
//!   `exec_session` (shim Exec + Start + Wait, stdio over the shim's Attach
//!   stream, ResizePty), `attach_session` (the init process's stdio) and
//!   `pod_port` (a TCP connection dialled inside the pod's network
//!   namespace);
//! - `shim_stdio`: the copying between the client's streams and a shim
//!   Attach stream, shared by exec and attach.
//!
//! This module owns the server's lifetime ([`Streaming`]); the RPC bodies
//! in `service` only call [`requests`]'s functions.

mod attach_session;
mod backend;
mod exec_session;
mod pod_port;
pub(crate) mod requests;
pub mod settings;
mod shim_stdio;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use carrack_streaming::{StreamingError, StreamingServer};

pub use settings::StreamingSettings;

use crate::service::Daemon;

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
    /// Starts the server for `daemon` with `settings`; returns its address.
    pub async fn start(
        daemon: &Arc<Daemon>,
        settings: &StreamingSettings,
    ) -> Result<SocketAddr, StreamingError> {
        let backend = Arc::new(backend::ShimBackend::new(Arc::downgrade(daemon)));
        let server = StreamingServer::start(settings.server_config(), backend).await?;
        let addr = server.local_addr();
        *daemon
            .streaming
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(server);
        Ok(addr)
    }

    /// Stops accepting streaming connections.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = server {
            s.shutdown().await;
        }
    }

    fn with_server<T>(&self, f: impl FnOnce(&StreamingServer) -> T) -> Result<T, NotRunning> {
        let g = self.server.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(f).ok_or(NotRunning)
    }
}
