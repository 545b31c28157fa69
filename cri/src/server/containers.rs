//! The container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ListContainers, StreamContainers (its pages),
//! ContainerStatus, UpdateContainerResources and ReopenContainerLog.

use std::collections::HashMap;
use std::sync::Arc;

use carrack_proto::cri;

use super::pages;
use crate::container;
use crate::cri_error::CriError;
use crate::cri_records::{container_item, container_status as status_of};
use crate::daemon::Daemon;

/// CreateContainer: creates a container in the pod sandbox; it is Created
/// (not running) when this returns.
pub(super) async fn create_container(
    d: &Arc<Daemon>,
    r: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, CriError> {
    let config = r
        .config
        .ok_or_else(|| CriError::invalid("config", "missing"))?;
    let id = container::create(d, &r.pod_sandbox_id, config).await?;
    Ok(cri::CreateContainerResponse { container_id: id })
}

/// StartContainer: starts the Created container.
pub(super) async fn start_container(
    d: &Arc<Daemon>,
    r: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, CriError> {
    container::start(d, &r.container_id).await?;
    Ok(cri::StartContainerResponse {})
}

/// StopContainer: stops a running container with a grace period of
/// `timeout` seconds. Idempotent: an unknown or stopped one succeeds.
pub(super) async fn stop_container(
    d: &Arc<Daemon>,
    r: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, CriError> {
    container::stop(d, &r.container_id, r.timeout).await?;
    Ok(cri::StopContainerResponse {})
}

/// RemoveContainer: removes the container, killing it first if it runs.
/// Idempotent: an unknown id succeeds.
pub(super) async fn remove_container(
    d: &Arc<Daemon>,
    r: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, CriError> {
    container::remove(d, &r.container_id).await?;
    Ok(cri::RemoveContainerResponse {})
}

/// ListContainers: the containers the filter selects.
pub(super) fn list_containers(
    d: &Daemon,
    r: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, CriError> {
    Ok(cri::ListContainersResponse {
        containers: containers(d, r.filter)?,
    })
}

/// StreamContainers: ListContainers' items in pages.
pub(super) fn stream_containers(
    d: &Daemon,
    r: cri::StreamContainersRequest,
) -> Result<Vec<cri::StreamContainersResponse>, CriError> {
    Ok(pages::split(
        containers(d, r.filter)?,
        d.config().stream_page_bytes,
        |containers| cri::StreamContainersResponse { containers },
    ))
}

/// The items of ListContainers: the containers `filter` selects.
fn containers(
    d: &Daemon,
    filter: Option<cri::ContainerFilter>,
) -> Result<Vec<cri::Container>, CriError> {
    let f = filter.unwrap_or_default();
    Ok(container::list(d, &f)
        .iter()
        .map(|c| container_item(c))
        .collect())
}

/// ContainerStatus: the status of the container; with `verbose`, the info
/// map with its init's pid from its shim (`crate::verbose_info`).
pub(super) async fn container_status(
    d: &Daemon,
    r: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, CriError> {
    let c = container::find(d, &r.container_id)?;
    let info = match r.verbose {
        true => crate::verbose_info::container(d.config(), &c, d.container_pid(&c).await),
        false => HashMap::new(),
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(status_of(&c)),
        info,
    })
}

/// UpdateContainerResources: applies the Linux resources to a created or
/// running container.
pub(super) async fn update_container_resources(
    d: &Daemon,
    r: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, CriError> {
    container::update_resources(d, &r.container_id, r.linux).await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

/// ReopenContainerLog: has the running container's log file reopened
/// (kubelet rotated it).
pub(super) async fn reopen_container_log(
    d: &Daemon,
    r: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, CriError> {
    container::reopen_log(d, &r.container_id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}
