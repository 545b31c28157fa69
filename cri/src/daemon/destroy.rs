//! The destroy paths: everything a sandbox or a container may have is
//! removed, whatever state it got to. Idempotent and best effort (a failure
//! is logged and the rest still removed): they undo failed requests,
//! half-made leftovers found at start-up, and RemovePodSandbox and
//! RemoveContainer.

use std::path::Path;
use std::time::Duration;

use carrack_proto::shim as sp;
use carrack_shim::ShimClient;
use tracing::warn;

use super::Daemon;
use crate::pod_host;
use crate::store::{ContainerRecord, SandboxRecord};

impl Daemon {
    /// Removes everything a sandbox may have (idempotent, best effort): its
    /// network, infra process, pinned namespaces, files and pod cgroup. The
    /// row is the caller's.
    pub(crate) async fn destroy_sandbox(&self, s: &SandboxRecord) {
        self.sampler.forget(&s.id);
        let ns = self.ns_dir(&s.id);
        if !s.netns.is_empty()
            && let Err(e) = self
                .network
                .teardown(&s.id, Path::new(&s.netns), &s.config)
                .await
        {
            warn!(sandbox = s.id, "{e}");
        }
        if let Some(infra) = &s.infra
            && let Err(e) = infra.kill()
        {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = crate::pod_pid::kill_unrecorded_infra(s) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = pod_host::release_namespaces(&ns) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Some(parent) = ns.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if let Err(e) = pod_host::remove_files(&self.sandbox_dir(&s.id)) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = crate::pod_cgroup::remove(s).await {
            warn!(sandbox = s.id, "removing the pod cgroup: {e}");
        }
    }

    /// `<runtime> --root R delete --force <id>`: kills and deletes the
    /// container when its shim is gone.
    pub(crate) async fn runtime_force_delete(&self, c: &ContainerRecord) {
        let Some((_, h)) = self.cfg.handler(&c.runtime_handler) else {
            return;
        };
        let out = tokio::process::Command::new(&h.binary)
            .arg("--root")
            .arg(&h.root)
            .args(["delete", "--force", &c.id])
            .output()
            .await;
        if let Ok(o) = out
            && !o.status.success()
        {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("not exist") {
                warn!(container = c.id, "runtime delete --force: {}", err.trim());
            }
        }
    }

    /// Removes a container's shim, image volumes, rootfs, bundle and row
    /// (idempotent).
    pub(crate) async fn destroy_container(&self, c: &ContainerRecord) {
        let socket = carrack_shim::socket_path(&self.shim_dir(), &c.id);
        let shim = match self.forget_shim(&c.id) {
            Some(s) => Some(s),
            None if socket.exists() => ShimClient::connect(&socket).await.ok(),
            None => None,
        };
        match shim {
            Some(s) => end_through_shim(s, &c.id).await,
            None => self.runtime_force_delete(c).await,
        }
        if let Err(e) = self.images.unmount_views(&c.id) {
            warn!(container = c.id, "removing its image volumes: {e}");
        }
        let rootfs = c.bundle.join("rootfs");
        if let Err(e) = self.images.remove_rootfs(&c.id, &rootfs) {
            warn!(container = c.id, "removing rootfs: {e}");
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        let _ = std::fs::remove_dir_all(self.shim_dir().join(&c.id));
        let _ = self.store.delete_container(&c.id);
        self.sampler.forget(&c.id);
    }
}

/// Kills every process of container `id` (waiting up to 10 s for the
/// exit), deletes it from the runtime and shuts its shim down.
async fn end_through_shim(mut s: ShimClient, id: &str) {
    let _ = s
        .task
        .kill(sp::KillRequest {
            id: id.to_owned(),
            exec_id: String::new(),
            signal: 9,
            all: true,
        })
        .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        s.task.wait(sp::WaitRequest {
            id: id.to_owned(),
            exec_id: String::new(),
        }),
    )
    .await;
    let _ = s
        .task
        .delete(sp::DeleteRequest {
            id: id.to_owned(),
            exec_id: String::new(),
        })
        .await;
    let _ = s
        .task
        .shutdown(sp::ShutdownRequest {
            id: id.to_owned(),
            now: true,
        })
        .await;
}
