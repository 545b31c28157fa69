//! What carrackd uses to start a shim and talk to it.
//!
//! ```no_run
//! # async fn f() -> Result<(), carrack_shim::ShimError> {
//! use carrack_shim::{ShimOptions, start_shim};
//! let opts = ShimOptions::new("ctr1", "/usr/local/bin/carrack-runtime");
//! let mut shim = start_shim(&opts).await?;
//! let hello = shim.task.handshake(carrack_proto::shim::HandshakeRequest { id: "ctr1".into() }).await;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use carrack_proto::shim::task_client::TaskClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Errors starting or reaching a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The shim binary could not be run.
    #[error("running {binary}: {source}")]
    Spawn {
        /// The shim binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `carrack-shim start` failed.
    #[error("starting the shim for {id}: {message}")]
    Start {
        /// The container id.
        id: String,
        /// What the shim said.
        message: String,
    },
    /// The socket could not be reached.
    #[error("connecting to the shim at {socket}: {message}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        message: String,
    },
}

/// How to start one container's shim.
#[derive(Debug, Clone)]
pub struct ShimOptions {
    /// The container id (also the shim directory's name).
    pub id: String,
    /// The OCI runtime the shim drives.
    pub runtime: PathBuf,
    /// The runtime's --root, if not its default.
    pub runtime_root: Option<PathBuf>,
    /// Parent of the shim directories (default /run/carrack/shims).
    pub state_dir: PathBuf,
    /// The carrack-shim binary (default: beside the current executable).
    pub shim_binary: PathBuf,
}

impl ShimOptions {
    /// Options with the defaults: state in /run/carrack/shims, the shim
    /// binary beside the current executable (or on PATH).
    pub fn new(id: &str, runtime: impl Into<PathBuf>) -> ShimOptions {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("carrack-shim")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("carrack-shim"));
        ShimOptions {
            id: id.to_owned(),
            runtime: runtime.into(),
            runtime_root: None,
            state_dir: PathBuf::from("/run/carrack/shims"),
            shim_binary: beside,
        }
    }
}

/// A connection to one shim.
#[derive(Debug, Clone)]
pub struct ShimClient {
    /// The Task API client.
    pub task: TaskClient<Channel>,
    /// The socket it is connected to.
    pub socket: PathBuf,
}

impl ShimClient {
    /// Connects to a running shim's socket.
    pub async fn connect(socket: &Path) -> Result<ShimClient, ShimError> {
        let path = socket.to_path_buf();
        let err = |message: String| ShimError::Connect {
            socket: socket.to_path_buf(),
            message,
        };
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::]:0")
            .map_err(|e| err(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let (dial, _dir) = crate::socket_path::dialable(&path)?;
                    Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(dial).await?))
                }
            }))
            .await
            .map_err(|e| {
                err(format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ))
            })?;
        Ok(ShimClient {
            task: TaskClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    /// SIGKILLs process `exec_id` of container `id` and waits until the
    /// shim has reaped it. Best effort: for cleanup paths, where an error
    /// (the process already gone) changes nothing.
    pub async fn kill_and_reap(&mut self, id: &str, exec_id: &str) {
        use carrack_proto::shim::{KillRequest, WaitRequest};
        let _ = self
            .task
            .kill(KillRequest {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                signal: 9,
                all: false,
            })
            .await;
        let _ = self
            .task
            .wait(WaitRequest {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await;
    }
}

/// Starts the shim of `opts.id` (`carrack-shim start …`) and connects to it.
pub async fn start_shim(opts: &ShimOptions) -> Result<ShimClient, ShimError> {
    let mut cmd = tokio::process::Command::new(&opts.shim_binary);
    cmd.arg("start")
        .arg("--id")
        .arg(&opts.id)
        .arg("--runtime")
        .arg(&opts.runtime);
    cmd.arg("--state-dir").arg(&opts.state_dir);
    if let Some(root) = &opts.runtime_root {
        cmd.arg("--runtime-root").arg(root);
    }
    let out = cmd.output().await.map_err(|source| ShimError::Spawn {
        binary: opts.shim_binary.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ShimError::Start {
            id: opts.id.clone(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let socket = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ShimClient::connect(Path::new(&socket)).await
}
