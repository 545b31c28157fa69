//! The container manager: CreateContainer (`create`), StartContainer
//! (`start`), StopContainer (`stop`), RemoveContainer (`remove`),
//! UpdateContainerResources (`update_resources`), ReopenContainerLog
//! (`reopen_log`), ExecSync (`exec_sync`) and the selection of
//! ListContainers (`list`), over the daemon's core. The OCI spec is
//! `crate::spec`'s; the shim runs the container.

mod create;
mod exec_sync;

use std::sync::Arc;

use carrack_proto::cri;
use carrack_proto::shim as sp;
use tracing::info;

pub(crate) use create::create;
pub(crate) use exec_sync::exec_sync;

use crate::cri_error::CriError;
use crate::cri_records::{container_state, labels_match};
use crate::daemon::{Daemon, now_nanos};
use crate::events::ContainerEventKind;
use crate::phases::{Phase, PhaseClock, Rpc};
use crate::store::{ContainerRecord, ContainerState};

/// The container `id` names; NotFound when none.
pub(crate) fn find(d: &Daemon, id: &str) -> Result<ContainerRecord, CriError> {
    d.container(id)?
        .ok_or_else(|| CriError::NotFound(format!("container {id:?} not found")))
}

/// Starts the Created container `id` names; a start the runtime refuses
/// leaves it Exited with reason StartError. Each phase is timed
/// (`crate::phases`).
pub(crate) async fn start(d: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let clock = PhaseClock::start(&d.telemetry, Rpc::StartContainer);
    let c = clock.time(Phase::Db, || find(d, id))?;
    let id = c.id.clone();
    clock.set_id(&id);
    if c.state != ContainerState::Created {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is {:?}, not Created",
            c.state
        )));
    }
    let mut shim = d.shim(&id).await?;
    let start = shim.task.start(sp::StartRequest {
        id: id.clone(),
        exec_id: String::new(),
    });
    let started = clock.time_async(Phase::ShimCall, start).await;
    if let Ok(r) = &started {
        clock.split_runtime(Phase::RuntimeStart, r.get_ref().runtime_nanos);
    }
    let _g = d.records.lock().await;
    let mut c = clock.time(Phase::Db, || find(d, &id))?;
    match started {
        Ok(_) => {
            c.state = ContainerState::Running;
            c.started_at = now_nanos();
            clock.time(Phase::Db, || d.store.update_container(&c))?;
            d.emit(ContainerEventKind::Started, &c).await;
            drop(_g);
            d.watch(id.clone());
            info!(container = id, "container started");
            Ok(())
        }
        Err(e) => {
            c.state = ContainerState::Exited;
            c.finished_at = now_nanos();
            c.exit_code = 128;
            c.reason = "StartError".into();
            c.message = e.message().to_owned();
            d.store.update_container(&c)?;
            d.emit(ContainerEventKind::Stopped, &c).await;
            Err(CriError::Unknown(format!(
                "starting container {id}: {}",
                e.message()
            )))
        }
    }
}

/// Stops the container `id` names (nothing when none) with `timeout`
/// seconds of grace.
pub(crate) async fn stop(d: &Arc<Daemon>, id: &str, timeout: i64) -> Result<(), CriError> {
    if let Some(c) = d.container(id)? {
        d.stop_container(&c, timeout).await?;
    }
    Ok(())
}

/// Removes the container `id` names (nothing when none); a running one is
/// killed first, with no grace period, as containerd and CRI-O do.
pub(crate) async fn remove(d: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let Some(c) = d.container(id)? else {
        return Ok(());
    };
    let id = c.id.clone();
    let c = if c.state == ContainerState::Running {
        d.stop_container(&c, 0).await?;
        d.container(&id)?.unwrap_or(c)
    } else {
        c
    };
    d.destroy_container(&c).await;
    let _g = d.records.lock().await;
    d.emit(ContainerEventKind::Deleted, &c).await;
    drop(_g);
    info!(container = id, "container removed");
    Ok(())
}

/// Applies `resources` to the created or running container `id` names (its
/// cgroup, through the shim) and records them; values the kernel would not
/// take are InvalidArgument naming the field (`linux.<field>`), checked
/// before anything is written.
pub(crate) async fn update_resources(
    d: &Daemon,
    id: &str,
    resources: Option<cri::LinuxContainerResources>,
) -> Result<(), CriError> {
    if let Some(r) = &resources {
        crate::spec::check_resources(r, "linux")?;
    }
    let c = find(d, id)?;
    let id = c.id.clone();
    if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running"
        )));
    }
    let res = resources.ok_or_else(|| CriError::invalid("linux", "missing"))?;
    let mut shim = d.shim(&id).await?;
    shim.task
        .update(sp::UpdateRequest {
            id: id.clone(),
            resources_json: to_oci_resources(&res)?,
        })
        .await
        .map_err(|e| CriError::shim(format!("updating {id}"), &e))?;
    let _g = d.records.lock().await;
    if let Some(mut c) = d.container(&id)? {
        c.resources = Some(res);
        d.store.update_container(&c)?;
    }
    Ok(())
}

/// OCI `linux.resources` of an update: the CRI resources without device
/// rules (those are the container's own, from its creation).
fn to_oci_resources(r: &cri::LinuxContainerResources) -> Result<Vec<u8>, CriError> {
    let mut v = crate::spec::resources(r);
    if let serde_json::Value::Object(m) = &mut v {
        m.remove("devices");
    }
    serde_json::to_vec(&v).map_err(CriError::internal)
}

/// Has the shim of the running container `id` names reopen its log file
/// (after kubelet rotated it).
pub(crate) async fn reopen_log(d: &Daemon, id: &str) -> Result<(), CriError> {
    let c = find(d, id)?;
    let id = c.id.clone();
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running"
        )));
    }
    let mut shim = d.shim(&id).await?;
    shim.task
        .reopen_log(sp::ReopenLogRequest { id: id.clone() })
        .await
        .map_err(|e| CriError::Shim {
            code: e.code(),
            message: e.message().to_owned(),
        })?;
    Ok(())
}

/// The containers ListContainers's filter `f` selects (not those being
/// made): by id or id prefix, pod (id or prefix), state and labels.
pub(crate) fn list(d: &Daemon, f: &cri::ContainerFilter) -> Vec<Arc<ContainerRecord>> {
    d.store
        .containers_shared()
        .into_iter()
        .filter(|c| c.state != ContainerState::Creating)
        .filter(|c| f.id.is_empty() || c.id == f.id || c.id.starts_with(&f.id))
        .filter(|c| {
            f.pod_sandbox_id.is_empty()
                || c.sandbox_id == f.pod_sandbox_id
                || c.sandbox_id.starts_with(&f.pod_sandbox_id)
        })
        .filter(|c| {
            f.state
                .as_ref()
                .is_none_or(|v| v.state == container_state(c.state))
        })
        .filter(|c| labels_match(&c.config.labels, &f.label_selector))
        .collect()
}
