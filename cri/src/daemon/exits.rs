//! Exits: a watcher per running container waits on its shim for the init
//! process's exit and records it; a container whose shim is gone is ended
//! and recorded as lost; a watcher per pod infra process marks the pod
//! NotReady when the infra process (its shared PID namespace) goes, unless
//! StopPodSandbox is ending it ([`Stopping`]).

use std::sync::Arc;

use carrack_proto::shim as sp;
use tracing::{info, warn};

use super::{Daemon, now_nanos};
use crate::events::ContainerEventKind;
use crate::pod_infra::InfraProcess;
use crate::store::{ContainerState, SandboxState};

impl Daemon {
    /// Records an exit of container `id`.
    pub(crate) async fn record_exit(&self, id: &str, exit: &sp::ExitStatus) {
        let _g = self.records.lock().await;
        let Ok(Some(mut c)) = self.container(id) else {
            return;
        };
        if c.state == ContainerState::Exited && c.finished_at != 0 {
            return;
        }
        c.state = ContainerState::Exited;
        c.exit_code = exit.exit_code;
        c.finished_at = if exit.exited_at_unix_nanos > 0 {
            exit.exited_at_unix_nanos
        } else {
            now_nanos()
        };
        c.reason = if exit.oom_killed {
            "OOMKilled".into()
        } else if exit.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        if let Err(e) = self.store.update_container(&c) {
            warn!(container = id, "recording exit: {e}");
        }
        self.emit(ContainerEventKind::Stopped, &c).await;
        info!(container = id, code = exit.exit_code, "container exited");
    }

    /// Watches the init process of `id` until it exits.
    pub(crate) fn watch(self: &Arc<Self>, id: String) {
        let d = self.clone();
        tokio::spawn(async move {
            let Ok(mut shim) = d.shim(&id).await else {
                return;
            };
            let r = shim
                .task
                .wait(sp::WaitRequest {
                    id: id.clone(),
                    exec_id: String::new(),
                })
                .await;
            match r {
                Ok(w) => {
                    let exit = w.into_inner().exit.unwrap_or_default();
                    d.record_exit(&id, &exit).await;
                }
                Err(e) => {
                    // The shim went away: the container cannot be running.
                    if d.shim_alive(&id).await {
                        return;
                    }
                    d.mark_lost(&id, &format!("the shim died ({})", e.message()))
                        .await;
                }
            }
        });
    }

    /// Whether container `id`'s shim answers a fresh connection.
    async fn shim_alive(&self, id: &str) -> bool {
        self.forget_shim(id);
        match self.shim(id).await {
            Ok(mut s) => s
                .task
                .handshake(sp::HandshakeRequest { id: id.into() })
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Container `id` lost its shim (`why`): ends it and records it exited.
    pub(crate) async fn mark_lost(&self, id: &str, why: &str) {
        let _g = self.records.lock().await;
        let Ok(Some(mut c)) = self.container(id) else {
            return;
        };
        if c.state == ContainerState::Exited {
            return;
        }
        // Without its shim nobody reaps or watches the container: end it,
        // so that the state reported (exited) is true.
        self.runtime_force_delete(&c).await;
        c.state = ContainerState::Exited;
        c.exit_code = 255;
        c.finished_at = now_nanos();
        c.reason = "Error".into();
        c.message = why.to_owned();
        let _ = self.store.update_container(&c);
        self.emit(ContainerEventKind::Stopped, &c).await;
        warn!(container = id, "{why}");
    }

    /// Watches the infra process of sandbox `sandbox_id` and marks the
    /// sandbox NotReady when it exits (its PID namespace, and every
    /// container in it, is gone then), so that kubelet sees the pod needs
    /// making again.
    pub(crate) fn watch_infra(self: &Arc<Self>, sandbox_id: String, infra: InfraProcess) {
        let d = self.clone();
        tokio::spawn(async move {
            if crate::pod_pid::infra_exit(&sandbox_id, infra).await {
                d.infra_exited(&sandbox_id, infra).await;
            }
        });
    }

    /// The infra process `infra` of sandbox `id` exited: a Ready sandbox
    /// it belongs to becomes NotReady (its PID namespace is gone).
    async fn infra_exited(&self, id: &str, infra: InfraProcess) {
        let _g = self.records.lock().await;
        let Ok(Some(mut s)) = self.sandbox(id) else {
            return;
        };
        let stopping = self
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id);
        if stopping || s.state != SandboxState::Ready || s.infra != Some(infra) {
            return;
        }
        s.state = SandboxState::NotReady;
        if let Err(e) = self.store.update_sandbox(&s) {
            warn!(sandbox = id, "recording the infra process's exit: {e}");
        }
        drop(_g);
        warn!(
            sandbox = id,
            pid = infra.pid,
            "the pod's infra process exited"
        );
        self.emit_event(ContainerEventKind::Stopped, id, id, None)
            .await;
    }
}

/// A sandbox id in `Daemon::stopping` while StopPodSandbox runs: the exit
/// of its infra process is expected then.
pub(crate) struct Stopping<'a> {
    daemon: &'a Daemon,
    id: String,
}

impl<'a> Stopping<'a> {
    /// Marks sandbox `id` as being stopped until the guard drops.
    pub(crate) fn mark(daemon: &'a Daemon, id: &str) -> Stopping<'a> {
        daemon
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
        Stopping {
            daemon,
            id: id.to_owned(),
        }
    }
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.daemon
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
