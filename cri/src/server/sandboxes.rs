//! The pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox, StreamPodSandboxes (its pages) and
//! UpdatePodSandboxResources.

use std::collections::HashMap;
use std::sync::Arc;

use carrack_proto::cri;

use super::pages;
use crate::cri_error::CriError;
use crate::cri_records::{sandbox_item, sandbox_status};
use crate::daemon::{Daemon, now_nanos};
use crate::sandbox;

/// RunPodSandbox: creates and starts a pod-level sandbox; it is Ready
/// when this returns.
pub(super) async fn run_pod_sandbox(
    d: &Arc<Daemon>,
    r: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, CriError> {
    let config = r
        .config
        .ok_or_else(|| CriError::invalid("config", "missing"))?;
    let id = sandbox::run(d, config, &r.runtime_handler).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

/// StopPodSandbox: stops every running process of the sandbox and
/// reclaims its network resources. Idempotent: an unknown id succeeds.
pub(super) async fn stop_pod_sandbox(
    d: &Arc<Daemon>,
    r: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, CriError> {
    sandbox::stop(d, &r.pod_sandbox_id).await?;
    Ok(cri::StopPodSandboxResponse {})
}

/// RemovePodSandbox: removes the sandbox, stopping and removing its
/// containers first. Idempotent: an unknown id succeeds.
pub(super) async fn remove_pod_sandbox(
    d: &Arc<Daemon>,
    r: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, CriError> {
    sandbox::remove(d, &r.pod_sandbox_id).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

/// PodSandboxStatus: the status of the sandbox; with `verbose`, the info
/// map (`crate::verbose_info`).
pub(super) fn pod_sandbox_status(
    d: &Daemon,
    r: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, CriError> {
    let sb = d.sandbox(&r.pod_sandbox_id)?.ok_or_else(|| {
        CriError::NotFound(format!("pod sandbox {:?} not found", r.pod_sandbox_id))
    })?;
    let info = match r.verbose {
        true => crate::verbose_info::sandbox(d.config(), &sb),
        false => HashMap::new(),
    };
    Ok(cri::PodSandboxStatusResponse {
        status: Some(sandbox_status(&sb)),
        info,
        containers_statuses: vec![],
        timestamp: now_nanos(),
    })
}

/// UpdatePodSandboxResources: the pod's overhead and resources after an
/// in-place resize, applied to its cgroup and recorded, all or nothing.
pub(super) async fn update_pod_sandbox_resources(
    d: &Daemon,
    r: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse, CriError> {
    sandbox::update_resources(d, &r.pod_sandbox_id, r.overhead, r.resources).await?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}

/// ListPodSandbox: the sandboxes the filter selects.
pub(super) fn list_pod_sandbox(
    d: &Daemon,
    r: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, CriError> {
    Ok(cri::ListPodSandboxResponse {
        items: pod_sandboxes(d, r.filter)?,
    })
}

/// StreamPodSandboxes: ListPodSandbox's items in pages.
pub(super) fn stream_pod_sandboxes(
    d: &Daemon,
    r: cri::StreamPodSandboxesRequest,
) -> Result<Vec<cri::StreamPodSandboxesResponse>, CriError> {
    Ok(pages::split(
        pod_sandboxes(d, r.filter)?,
        d.config().stream_page_bytes,
        |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes },
    ))
}

/// The items of ListPodSandbox: the sandboxes `filter` selects.
fn pod_sandboxes(
    d: &Daemon,
    filter: Option<cri::PodSandboxFilter>,
) -> Result<Vec<cri::PodSandbox>, CriError> {
    let f = filter.unwrap_or_default();
    Ok(sandbox::list(d, &f)
        .iter()
        .map(|s| sandbox_item(s))
        .collect())
}
