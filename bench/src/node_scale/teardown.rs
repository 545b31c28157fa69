//! Stopping and removing every pod at once (kubelet on a drain: for each pod
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox), then
//! the pod cgroups the bench asked for, as kubelet removes its own.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use carrack_proto::cri::{
    RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tokio::task::JoinSet;

use crate::start::Pod;
use crate::target::Target;

/// Stops and removes `pods` concurrently; returns the wall time, or the
/// first error after every pod was tried.
pub async fn remove_all(t: &Target, pods: &[Pod]) -> Result<Duration> {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for pod in pods.iter().cloned() {
        let mut rt = t.runtime.clone();
        set.spawn(async move {
            if !pod.container.is_empty() {
                rt.stop_container(StopContainerRequest {
                    container_id: pod.container.clone(),
                    timeout: 0,
                })
                .await
                .map_err(|e| anyhow!("StopContainer {}: {e}", pod.container))?;
                rt.remove_container(RemoveContainerRequest {
                    container_id: pod.container.clone(),
                })
                .await
                .map_err(|e| anyhow!("RemoveContainer {}: {e}", pod.container))?;
            }
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox.clone(),
            })
            .await
            .map_err(|e| anyhow!("StopPodSandbox {}: {e}", pod.sandbox))?;
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox.clone(),
            })
            .await
            .map_err(|e| anyhow!("RemovePodSandbox {}: {e}", pod.sandbox))?;
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.context("pod removal task")? {
            first_error.get_or_insert(e);
        }
    }
    let took = started.elapsed();
    match first_error {
        Some(e) => Err(e.context(format!("{}: removing the pods", t.name))),
        None => Ok(took),
    }
}

/// Removes the pods' cgroups (and what is left inside them); returns how
/// many could not be removed.
pub fn remove_pod_cgroups(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| {
            carrack_cgroups::Cgroup::open(&p.cgroup_parent, "node-scale")
                .and_then(|cg| cg.delete())
                .inspect_err(|e| eprintln!("node-scale: pod cgroup {}: {e}", p.cgroup_parent))
                .is_err()
        })
        .count()
}
