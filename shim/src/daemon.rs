//! Starting a shim so that it outlives its starter (and carrackd), and the
//! shim's serving loop.
//!
//! `carrack-shim start` creates the shim directory, spawns `carrack-shim
//! serve` in a new session with its stdio away from the caller, and returns
//! once the served socket accepts connections (the child reports readiness
//! through an inherited pipe). When the starter exits, the shim is
//! re-parented (to init or the nearest subreaper): it is no child of
//! carrackd, so a daemon restart or crash does not touch it.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use carrack_proto::shim::task_server::TaskServer;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

use crate::reaper::Reaper;
use crate::runtime_cmd::OciRuntime;
use crate::task::{Shim, TaskService};

/// The shim's error at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The id is not usable as a directory name.
    #[error("id {0:?}: must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    /// A shim already serves this id.
    #[error("a shim for {0:?} is already running")]
    AlreadyRunning(String),
    /// The serving process failed before it was ready.
    #[error("the shim did not start: {0}")]
    NotReady(String),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// How one shim is configured (the flags of `start` and `serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The container id.
    pub id: String,
    /// The OCI runtime binary.
    pub runtime: PathBuf,
    /// The runtime's --root.
    pub runtime_root: Option<PathBuf>,
    /// Parent of the shim directories (`<state_dir>/<id>/shim.sock`).
    pub state_dir: PathBuf,
}

impl ServeConfig {
    /// The directory of this shim.
    pub fn dir(&self) -> PathBuf {
        self.state_dir.join(&self.id)
    }
}

/// Checks an id for use as a path component.
pub fn validate_id(id: &str) -> Result<(), DaemonError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(DaemonError::InvalidId(id.to_owned()))
    }
}

/// `carrack-shim start`: spawns the serving shim and waits until it is
/// ready. Returns the socket path.
pub fn start(cfg: &ServeConfig) -> Result<PathBuf, DaemonError> {
    validate_id(&cfg.id)?;
    let dir = cfg.dir();
    let socket = dir.join("shim.sock");
    let running = crate::socket_path::dialable(&socket)
        .is_ok_and(|(p, _dir)| std::os::unix::net::UnixStream::connect(p).is_ok());
    if running {
        return Err(DaemonError::AlreadyRunning(cfg.id.clone()));
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(io(format!("creating {}", cfg.state_dir.display())))?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
        .map_err(io("opening shim.log"))?;
    let (ready_r, ready_w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
    let exe = std::env::current_exe().map_err(io("finding the shim binary"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--id")
        .arg(&cfg.id)
        .arg("--runtime")
        .arg(&cfg.runtime);
    cmd.arg("--state-dir")
        .arg(&cfg.state_dir)
        .arg("--ready-fd")
        .arg("3");
    if let Some(root) = &cfg.runtime_root {
        cmd.arg("--runtime-root").arg(root);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd.current_dir("/");
    let ready_fd = ready_w.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::dup2(ready_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io("spawning the shim"))?;
    drop(ready_w);
    let mut report = String::new();
    std::fs::File::from(ready_r)
        .read_to_string(&mut report)
        .map_err(io("waiting for the shim"))?;
    if report.trim() != "ok" {
        let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        let msg = if report.trim().is_empty() {
            log.lines().last().unwrap_or("it exited").to_owned()
        } else {
            report
        };
        return Err(DaemonError::NotReady(msg.trim().to_owned()));
    }
    Ok(socket)
}

/// `carrack-shim serve`: the shim itself. Reports readiness on `ready_fd`
/// once the socket listens, serves until Shutdown, then removes its
/// directory.
pub fn serve(cfg: &ServeConfig, ready_fd: Option<i32>) -> Result<(), DaemonError> {
    let ready = ready_fd.map(|fd| {
        // SAFETY: the starter passed this descriptor to us and nothing else owns it.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    });
    let result = serve_inner(cfg, ready);
    if let Err(e) = &result {
        eprintln!("carrack-shim {}: {e}", cfg.id);
    }
    result
}

fn report(ready: &mut Option<std::fs::File>, msg: &str) {
    if let Some(mut f) = ready.take() {
        use std::io::Write;
        let _ = f.write_all(msg.as_bytes());
    }
}

fn serve_inner(cfg: &ServeConfig, mut ready: Option<std::fs::File>) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    let res = rt.block_on(async {
        // SAFETY: prctl with an integer argument; marks us as the reaper of
        // the container's orphans.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(io("PR_SET_CHILD_SUBREAPER")(std::io::Error::last_os_error()));
        }
        let reaper = Reaper::start().map_err(io("installing the SIGCHLD handler"))?;
        let dir = cfg.dir();
        let socket = dir.join("shim.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = crate::socket_path::dialable(&socket)
            .and_then(|(p, _dir)| tokio::net::UnixListener::bind(p))
            .map_err(io(format!("listening on {}", socket.display())))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod shim.sock"))?;
        std::fs::write(dir.join("shim.pid"), std::process::id().to_string())
            .map_err(io("writing shim.pid"))?;
        let runtime = OciRuntime {
            binary: cfg.runtime.clone(),
            root: cfg.runtime_root.clone(),
            log: dir.join("runtime.log"),
            reaper: reaper.clone(),
            systemd_cgroup: Default::default(),
        };
        let shutdown = Arc::new(Notify::new());
        let shim = Shim::new(&cfg.id, &dir, runtime, reaper, shutdown.clone());
        report(&mut ready, "ok\n");
        let server = tonic::transport::Server::builder()
            .add_service(TaskServer::new(TaskService(shim)))
            .serve_with_incoming(UnixListenerStream::new(listener));
        tokio::select! {
            r = server => r.map_err(|e| DaemonError::Serve(e.to_string()))?,
            _ = shutdown.notified() => {
                // Let the Shutdown reply reach the client before we go.
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(())
    });
    if let Err(e) = &res {
        report(&mut ready, &format!("{e}\n"));
        return res;
    }
    let _ = std::fs::remove_dir_all(cfg.dir());
    Ok(())
}

/// The socket of the shim of `id` under `state_dir`.
pub fn socket_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(id).join("shim.sock")
}
