//! Start-up: finishes what a crash interrupted. A half-made container or
//! sandbox (its row still `Creating`) is destroyed; every other container
//! is matched with its shim (reconnected, and watched again if it runs, or
//! recorded exited with the exit the shim kept, or lost if the shim is
//! gone); a Ready sandbox whose network namespace or infra process is gone
//! becomes NotReady, and a live infra process is watched again. Image
//! volumes whose container has no row are unmounted.

use std::path::Path;
use std::sync::Arc;

use carrack_proto::shim as sp;
use carrack_shim::ShimClient;
use tracing::info;

use super::Daemon;
use crate::store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};

impl Daemon {
    /// Finishes what a crash interrupted; reconnects to every shim.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        for c in self.store.containers()? {
            self.recover_container(c).await;
        }
        for s in self.store.sandboxes()? {
            self.recover_sandbox(s).await;
        }
        self.remove_orphan_views()?;
        Ok(())
    }

    /// Unmounts the image volumes of containers that have no record (a
    /// removal interrupted after the row went).
    fn remove_orphan_views(&self) -> anyhow::Result<()> {
        let containers: std::collections::HashSet<String> =
            self.store.containers()?.into_iter().map(|c| c.id).collect();
        for (owner, _, _) in self.images.views()? {
            if !containers.contains(&owner) {
                info!(
                    container = owner,
                    "removing the image volumes of a container gone"
                );
                self.images.unmount_views(&owner)?;
            }
        }
        Ok(())
    }

    async fn recover_container(self: &Arc<Self>, c: ContainerRecord) {
        if c.state == ContainerState::Creating {
            info!(container = c.id, "cleaning up a half-created container");
            self.destroy_container(&c).await;
            return;
        }
        if c.state == ContainerState::Exited {
            return;
        }
        match self.reconnect_shim(&c.id).await {
            None => {
                self.mark_lost(&c.id, "the shim died while carrackd was away")
                    .await
            }
            Some(st) => match sp::Status::try_from(st.status).unwrap_or(sp::Status::Unknown) {
                sp::Status::Stopped => self.record_exit(&c.id, &st.exit.unwrap_or_default()).await,
                sp::Status::Running | sp::Status::Paused => {
                    let _g = self.records.lock().await;
                    if let Ok(Some(mut r)) = self.container(&c.id) {
                        r.state = ContainerState::Running;
                        let _ = self.store.update_container(&r);
                    }
                    drop(_g);
                    self.watch(c.id.clone());
                }
                _ => {}
            },
        }
    }

    /// Connects to container `id`'s shim again (and keeps the connection);
    /// its init process's state, None when the shim does not answer.
    async fn reconnect_shim(&self, id: &str) -> Option<sp::StateResponse> {
        let socket = carrack_shim::socket_path(&self.shim_dir(), id);
        let mut s = ShimClient::connect(&socket).await.ok()?;
        let hs = s
            .task
            .handshake(sp::HandshakeRequest { id: id.to_owned() })
            .await;
        let st = s
            .task
            .state(sp::StateRequest {
                id: id.to_owned(),
                exec_id: String::new(),
            })
            .await;
        self.keep_shim(id, s);
        match (hs, st) {
            (Ok(_), Ok(st)) => Some(st.into_inner()),
            _ => None,
        }
    }

    async fn recover_sandbox(self: &Arc<Self>, s: SandboxRecord) {
        match s.state {
            SandboxState::Creating => {
                info!(sandbox = s.id, "cleaning up a half-created sandbox");
                self.destroy_sandbox(&s).await;
                let _ = self.store.delete_sandbox(&s.id);
            }
            SandboxState::Ready
                if (!s.netns.is_empty() && !Path::new(&s.netns).exists())
                    || s.infra.is_some_and(|i| !i.is_running()) =>
            {
                let mut s = s;
                s.state = SandboxState::NotReady;
                let _ = self.store.update_sandbox(&s);
            }
            SandboxState::Ready if s.infra.is_some() => {
                if let Some(infra) = s.infra {
                    self.watch_infra(s.id.clone(), infra);
                }
            }
            _ => {}
        }
    }
}
