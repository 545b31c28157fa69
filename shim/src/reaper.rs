//! Reaping every child of the shim, as its child subreaper.
//!
//! The container's init process is re-parented to the shim (the runtime that
//! forked it exits), and so is every orphan inside the container. One loop
//! answers SIGCHLD with `waitpid(-1, WNOHANG)` until nothing is left, and
//! hands each status to whoever registered that pid. An exit that arrives
//! before its pid is registered (a short-lived process, a pid file read late)
//! is kept until it is claimed. Nothing else in the shim may call wait: the
//! runtime commands are spawned with std and awaited here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended: the exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode {
    /// Exit code, 128 + signal when killed.
    pub code: i32,
    /// The killing signal, 0 when it exited.
    pub signal: i32,
}

/// Routes exit statuses to the tasks waiting for them.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<ReaperState>,
}

#[derive(Debug, Default)]
struct ReaperState {
    waiters: HashMap<i32, oneshot::Sender<ExitCode>>,
    unclaimed: HashMap<i32, ExitCode>,
}

/// Orphans of the container that nobody claims are forgotten past this many.
const MAX_UNCLAIMED: usize = 1024;

impl Reaper {
    /// Starts the SIGCHLD loop on the current tokio runtime. Call before the
    /// first child is spawned.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// The exit of `pid`, once it happens (at once if it already has).
    pub fn wait(&self, pid: i32) -> oneshot::Receiver<ExitCode> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().expect("reaper lock");
        match st.unclaimed.remove(&pid) {
            Some(code) => {
                let _ = tx.send(code);
            }
            None => {
                st.waiters.insert(pid, tx);
            }
        }
        rx
    }

    fn reap_all(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitCode { code, signal: 0 }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitCode {
                        code: 128 + sig as i32,
                        signal: sig as i32,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let mut st = self.state.lock().expect("reaper lock");
            match st.waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(code);
                }
                None => {
                    if st.unclaimed.len() >= MAX_UNCLAIMED {
                        st.unclaimed.clear();
                    }
                    st.unclaimed.insert(pid.as_raw(), code);
                }
            }
        }
    }
}
