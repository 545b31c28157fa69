//! Publishing container events (GetContainerEvents): each carries the
//! statuses of the pod and of its containers as they are when it leaves,
//! built only when someone listens.

use carrack_proto::cri;

use super::{Daemon, now_nanos};
use crate::cri_records::{container_status, sandbox_status};
use crate::events::ContainerEventKind;
use crate::store::{ContainerRecord, ContainerState};

impl Daemon {
    /// Publishes a lifecycle event of `c` with its pod's statuses as they
    /// are now. Callers hold `records`, so that events leave in the order
    /// the records changed.
    pub(crate) async fn emit(&self, kind: ContainerEventKind, c: &ContainerRecord) {
        self.emit_event(kind, &c.id, &c.sandbox_id, None).await;
    }

    /// Publishes an event of `id` (a container, or the sandbox itself as
    /// kubelet's evented PLEG expects) with the statuses of the pod
    /// `sandbox_id`; `known` stands for a sandbox status no longer in the
    /// store (a removed sandbox).
    pub(crate) async fn emit_event(
        &self,
        kind: ContainerEventKind,
        id: &str,
        sandbox_id: &str,
        known: Option<cri::PodSandboxStatus>,
    ) {
        if !self.events.has_subscribers() {
            return;
        }
        let sandbox = match known {
            Some(s) => Some(s),
            None => self.sandbox_status_now(sandbox_id),
        };
        let containers = self
            .store
            .containers()
            .unwrap_or_default()
            .iter()
            .filter(|x| x.sandbox_id == sandbox_id && x.state != ContainerState::Creating)
            .map(container_status)
            .collect();
        self.events
            .publish(kind, id, now_nanos(), sandbox, containers);
    }

    /// The PodSandboxStatus of `sandbox_id` as the RPC answers it, when
    /// someone listens to events.
    pub(crate) fn sandbox_status_now(&self, sandbox_id: &str) -> Option<cri::PodSandboxStatus> {
        if !self.events.has_subscribers() {
            return None;
        }
        let sb = self.sandbox(sandbox_id).ok()??;
        Some(sandbox_status(&sb))
    }
}
