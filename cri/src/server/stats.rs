//! The statistics and metrics RPCs: ContainerStats, ListContainerStats,
//! PodSandboxStats, ListPodSandboxStats, ListMetricDescriptors and
//! ListPodSandboxMetrics, and the Stream* forms of the List ones (their
//! pages). The records are chosen here; the samples are `crate::stats`'s
//! (read off the event loop: they read cgroup files and walk writable
//! layers).

use std::collections::HashMap;
use std::sync::Arc;

use carrack_proto::cri;

use super::pages;
use crate::cri_error::CriError;
use crate::cri_records::labels_match;
use crate::daemon::Daemon;
use crate::stats::sampled;
use crate::store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};

/// Runs `f` on a blocking thread with the daemon.
async fn off_loop<T: Send + 'static>(
    d: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> T + Send + 'static,
) -> Result<T, CriError> {
    let d = d.clone();
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(CriError::internal)
}

/// ContainerStats: the stats of one created or running container.
pub(super) async fn container_stats(
    d: &Arc<Daemon>,
    r: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, CriError> {
    let id = r.container_id;
    if id.is_empty() {
        return Err(CriError::invalid("container_id", "must not be empty"));
    }
    let c = d
        .container(&id)?
        .filter(|c| c.state != ContainerState::Creating)
        .ok_or_else(|| CriError::NotFound(format!("container {id:?} not found")))?;
    let stats = off_loop(d, move |d| {
        let sb = d.sandbox(&c.sandbox_id).ok().flatten();
        d.sampler.container_stats(&d.images, &c, sb.as_ref())
    })
    .await?;
    Ok(cri::ContainerStatsResponse { stats: Some(stats) })
}

/// ListContainerStats: the stats of the sampled containers the filter
/// selects (by id prefix, pod id prefix and labels).
pub(super) async fn list_container_stats(
    d: &Arc<Daemon>,
    r: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, CriError> {
    Ok(cri::ListContainerStatsResponse {
        stats: all_container_stats(d, r.filter).await?,
    })
}

/// StreamContainerStats: ListContainerStats' items in pages.
pub(super) async fn stream_container_stats(
    d: &Arc<Daemon>,
    r: cri::StreamContainerStatsRequest,
) -> Result<Vec<cri::StreamContainerStatsResponse>, CriError> {
    Ok(pages::split(
        all_container_stats(d, r.filter).await?,
        d.config().stream_page_bytes,
        |container_stats| cri::StreamContainerStatsResponse { container_stats },
    ))
}

/// The items of ListContainerStats: the stats of the sampled containers
/// `filter` selects.
async fn all_container_stats(
    d: &Arc<Daemon>,
    filter: Option<cri::ContainerStatsFilter>,
) -> Result<Vec<cri::ContainerStats>, CriError> {
    let f = filter.unwrap_or_default();
    off_loop(d, move |d| {
        let sandboxes: HashMap<String, Arc<SandboxRecord>> = d
            .store
            .sandboxes_shared()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let all = d.store.containers_shared();
        Ok::<_, CriError>(
            all.iter()
                .filter(|c| sampled(c.state))
                .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
                .filter(|c| {
                    f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id)
                })
                .filter(|c| labels_match(&c.config.labels, &f.label_selector))
                .map(|c| {
                    let sb = sandboxes.get(&c.sandbox_id).map(|s| &**s);
                    d.sampler.container_stats(&d.images, c, sb)
                })
                .collect(),
        )
    })
    .await?
}

/// PodSandboxStats: the stats of one pod and its sampled containers.
pub(super) async fn pod_sandbox_stats(
    d: &Arc<Daemon>,
    r: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, CriError> {
    let id = r.pod_sandbox_id;
    if id.is_empty() {
        return Err(CriError::invalid("pod_sandbox_id", "must not be empty"));
    }
    let sb = d
        .sandbox(&id)?
        .filter(|s| s.state != SandboxState::Creating)
        .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
    let stats = off_loop(d, move |d| {
        let containers: Vec<ContainerRecord> = d
            .store
            .containers()?
            .into_iter()
            .filter(|c| c.sandbox_id == sb.id && sampled(c.state))
            .collect();
        Ok::<_, CriError>(d.sampler.pod_stats(&d.images, &sb, &containers))
    })
    .await??;
    Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
}

/// ListPodSandboxStats: the stats of the pods the filter selects (by id
/// prefix and labels).
pub(super) async fn list_pod_sandbox_stats(
    d: &Arc<Daemon>,
    r: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
    Ok(cri::ListPodSandboxStatsResponse {
        stats: filtered_pod_stats(d, r.filter).await?,
    })
}

/// StreamPodSandboxStats: ListPodSandboxStats' items in pages.
pub(super) async fn stream_pod_sandbox_stats(
    d: &Arc<Daemon>,
    r: cri::StreamPodSandboxStatsRequest,
) -> Result<Vec<cri::StreamPodSandboxStatsResponse>, CriError> {
    Ok(pages::split(
        filtered_pod_stats(d, r.filter).await?,
        d.config().stream_page_bytes,
        |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
    ))
}

/// The items of ListPodSandboxStats: the stats of the pods `filter`
/// selects.
async fn filtered_pod_stats(
    d: &Arc<Daemon>,
    filter: Option<cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>, CriError> {
    let f = filter.unwrap_or_default();
    all_pod_stats(d, move |s| {
        (f.id.is_empty() || s.id.starts_with(&f.id))
            && labels_match(&s.config.labels, &f.label_selector)
    })
    .await
}

/// ListMetricDescriptors: the descriptors of the metrics
/// ListPodSandboxMetrics reports.
pub(super) fn list_metric_descriptors(
    _: cri::ListMetricDescriptorsRequest,
) -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: crate::stats::metrics::descriptors(),
    }
}

/// ListPodSandboxMetrics: cAdvisor's metrics of every pod and its
/// containers.
pub(super) async fn list_pod_sandbox_metrics(
    d: &Arc<Daemon>,
    _: cri::ListPodSandboxMetricsRequest,
) -> Result<cri::ListPodSandboxMetricsResponse, CriError> {
    Ok(cri::ListPodSandboxMetricsResponse {
        pod_metrics: all_pod_metrics(d).await?,
    })
}

/// StreamPodSandboxMetrics: ListPodSandboxMetrics' items in pages.
pub(super) async fn stream_pod_sandbox_metrics(
    d: &Arc<Daemon>,
    _: cri::StreamPodSandboxMetricsRequest,
) -> Result<Vec<cri::StreamPodSandboxMetricsResponse>, CriError> {
    Ok(pages::split(
        all_pod_metrics(d).await?,
        d.config().stream_page_bytes,
        |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        },
    ))
}

/// The items of ListPodSandboxMetrics: every pod's metrics.
async fn all_pod_metrics(d: &Arc<Daemon>) -> Result<Vec<cri::PodSandboxMetrics>, CriError> {
    let stats = all_pod_stats(d, |_| true).await?;
    Ok(stats
        .iter()
        .map(crate::stats::metrics::pod_metrics)
        .collect())
}

/// The stats of every sandbox `keep` selects (not those being made),
/// with their sampled containers'.
async fn all_pod_stats(
    d: &Arc<Daemon>,
    keep: impl Fn(&SandboxRecord) -> bool + Send + 'static,
) -> Result<Vec<cri::PodSandboxStats>, CriError> {
    off_loop(d, move |d| {
        let sandboxes = d.store.sandboxes_shared();
        let containers = d.store.containers_shared();
        Ok(sandboxes
            .iter()
            .filter(|s| s.state != SandboxState::Creating && keep(s))
            .map(|s| {
                let mine: Vec<&ContainerRecord> = containers
                    .iter()
                    .filter(|c| c.sandbox_id == s.id && sampled(c.state))
                    .map(|c| &**c)
                    .collect();
                d.sampler.pod_stats(&d.images, s, &mine)
            })
            .collect())
    })
    .await?
}
