//! The pod sandbox manager: RunPodSandbox (`run`), StopPodSandbox
//! (`stop`), RemovePodSandbox (`remove`), UpdatePodSandboxResources
//! (`update_resources`) and the selection of ListPodSandbox (`list`), over
//! the daemon's core. The host-side pieces it makes are
//! `crate::pod_host`'s, `crate::pod_network`'s, `crate::pod_cgroup`'s
//! (and `crate::pod_resize`'s) and `crate::pod_pid`'s; their removal is the
//! core's destroy path.

mod run;
mod update;

use std::path::Path;
use std::sync::Arc;

use carrack_proto::cri;
use tracing::info;

pub(crate) use run::run;
pub(crate) use update::update_resources;

use crate::cri_error::CriError;
use crate::cri_records::{labels_match, sandbox_state};
use crate::daemon::{Daemon, Stopping};
use crate::events::ContainerEventKind;
use crate::phases::{Phase, PhaseClock, Rpc};
use crate::pod_host::SandboxError;
use crate::store::{ContainerRecord, SandboxRecord, SandboxState};

/// A pod network failure: not ready is a precondition, a plugin's refusal
/// carries the plugin's message.
fn network_refusal(e: SandboxError) -> CriError {
    match e {
        SandboxError::NetworkNotReady(_) => CriError::FailedPrecondition(e.to_string()),
        SandboxError::NetworkUnsupported(_) => CriError::Unimplemented(e.to_string()),
        e => CriError::Unknown(e.to_string()),
    }
}

/// The containers of sandbox `id`.
fn containers_of(d: &Daemon, id: &str) -> Result<Vec<ContainerRecord>, CriError> {
    Ok(d.store
        .containers()?
        .into_iter()
        .filter(|c| c.sandbox_id == id)
        .collect())
}

/// Stops the sandbox `id` names (nothing when none): kills its containers,
/// its infra process, tears its network down and releases its namespaces;
/// it is NotReady then. Idempotent. Each phase is timed (`crate::phases`).
pub(crate) async fn stop(d: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let clock = PhaseClock::start(&d.telemetry, Rpc::StopPodSandbox);
    let Some(mut sb) = clock.time(Phase::Db, || d.sandbox(id))? else {
        return Ok(());
    };
    let id = sb.id.clone();
    clock.set_id(&id);
    let containers = clock.time(Phase::Db, || containers_of(d, &id))?;
    let stop_all = async {
        for c in containers {
            d.stop_container(&c, 0).await?;
        }
        Ok::<_, CriError>(())
    };
    clock.time_async(Phase::StopContainers, stop_all).await?;
    let _stopping = Stopping::mark(d, &id);
    if let Some(infra) = &sb.infra {
        clock
            .time(Phase::Infra, || infra.kill())
            .map_err(|e| CriError::Internal(format!("stopping pod sandbox {id}: {e}")))?;
    }
    if !sb.netns.is_empty() {
        let teardown = d.network.teardown(&id, Path::new(&sb.netns), &sb.config);
        clock
            .time_async(Phase::NetworkDel, teardown)
            .await
            .map_err(network_refusal)?;
    }
    clock
        .time(Phase::Namespaces, || {
            crate::pod_host::release_namespaces(&d.ns_dir(&id))
        })
        .map_err(CriError::internal)?;
    let was_ready = sb.state == SandboxState::Ready;
    sb.state = SandboxState::NotReady;
    clock.time(Phase::Db, || d.store.update_sandbox(&sb))?;
    if was_ready {
        d.emit_event(ContainerEventKind::Stopped, &id, &id, None)
            .await;
    }
    info!(sandbox = id, "sandbox stopped");
    Ok(())
}

/// Removes the sandbox `id` names (nothing when none) and its containers,
/// stopping what still runs. Idempotent.
pub(crate) async fn remove(d: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let Some(sb) = d.sandbox(id)? else {
        return Ok(());
    };
    let id = sb.id.clone();
    for c in containers_of(d, &id)? {
        d.stop_container(&c, 0).await?;
        d.destroy_container(&c).await;
        let _g = d.records.lock().await;
        d.emit(ContainerEventKind::Deleted, &c).await;
    }
    let last = d.sandbox_status_now(&id);
    d.destroy_sandbox(&sb).await;
    d.store.delete_sandbox(&id)?;
    if last.is_some() {
        d.emit_event(ContainerEventKind::Deleted, &id, &id, last)
            .await;
    }
    info!(sandbox = id, "sandbox removed");
    Ok(())
}

/// The sandboxes ListPodSandbox's filter `f` selects (not those being
/// made): by id or id prefix, state and labels.
pub(crate) fn list(d: &Daemon, f: &cri::PodSandboxFilter) -> Vec<Arc<SandboxRecord>> {
    d.store
        .sandboxes_shared()
        .into_iter()
        .filter(|s| s.state != SandboxState::Creating)
        .filter(|s| f.id.is_empty() || s.id == f.id || s.id.starts_with(&f.id))
        .filter(|s| {
            f.state
                .as_ref()
                .is_none_or(|v| v.state == sandbox_state(s.state))
        })
        .filter(|s| labels_match(&s.config.labels, &f.label_selector))
        .collect()
}
