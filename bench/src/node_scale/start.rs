//! Starting every pod at once, as kubelet does when a node is drained onto
//! (one RunPodSandbox → CreateContainer → StartContainer chain per pod, all
//! chains concurrent on one connection), and waiting until each container
//! has written its data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use carrack_bench::pods::{container_config, pod_config};
use carrack_proto::cri::{
    self, CreateContainerRequest, RunPodSandboxRequest, StartContainerRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::target::Target;

/// What the container writes into its writable layer.
#[derive(Debug, Clone, Copy)]
pub struct Payload {
    /// Files written under /data.
    pub files: usize,
    /// Bytes in each.
    pub file_bytes: usize,
}

/// The line a container logs once its data is written.
const WRITTEN: &str = "node-scale: written";

impl Payload {
    /// The container's command: write the files with the shell's builtins
    /// (a few processes per container, not one per file), say so on
    /// stdout, then sleep.
    fn command(&self) -> Vec<String> {
        let script = format!(
            "mkdir -p /data && s=$(head -c {} /dev/zero | tr '\\0' x) && i=0 && \
             while [ $i -lt {} ]; do printf %s \"$s\" > /data/f$i; i=$((i+1)); done && \
             echo {WRITTEN} && exec sleep 36000",
            self.file_bytes, self.files
        );
        vec!["/bin/sh".into(), "-c".into(), script]
    }

    /// Bytes written per container.
    pub fn bytes(&self) -> u64 {
        (self.files * self.file_bytes) as u64
    }
}

/// A started pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// PodSandbox id.
    pub sandbox: String,
    /// Container id.
    pub container: String,
    /// The pod cgroup the bench asked for.
    pub cgroup_parent: String,
    /// The container's log file.
    pub log: PathBuf,
}

/// What starting all pods measured.
#[derive(Debug, Default)]
pub struct Started {
    /// From the first RunPodSandbox to the last StartContainer's answer.
    pub all_running: Duration,
    /// Per-call latencies: RunPodSandbox, CreateContainer, StartContainer.
    pub calls: BTreeMap<&'static str, Vec<Duration>>,
}

/// Starts `n` pods of `image` at once. Every pod whose sandbox was made
/// is added to `pods`, also when the call fails, for the caller to remove.
pub async fn start_all(
    t: &Target,
    n: usize,
    image: &str,
    payload: Payload,
    log_dir: &Path,
    pods: &mut Vec<Pod>,
) -> Result<Started> {
    let log_dir = log_dir.join(&t.name);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let rt = t.runtime.clone();
        let tag = format!("p{i}");
        let cgroup = format!("{}/pod-{i}", t.cgroup_root());
        let (image, log_dir) = (image.to_owned(), log_dir.clone());
        set.spawn(async move { start_one(rt, &tag, &image, payload, &log_dir, cgroup).await });
    }
    let mut out = Started::default();
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        let (pod, result) = r.context("pod start task")?;
        pods.extend(pod);
        match result {
            Ok(lat) => {
                for (k, d) in lat {
                    out.calls.entry(k).or_default().push(d);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    out.all_running = started.elapsed();
    match first_error {
        Some(e) => Err(e.context(format!("{}: starting {n} pods at once", t.name))),
        None => Ok(out),
    }
}

type Latencies = Vec<(&'static str, Duration)>;

/// One pod's chain; the pod is returned once its sandbox exists (its
/// container id empty if none was created).
async fn start_one(
    mut rt: RuntimeServiceClient<Channel>,
    tag: &str,
    image: &str,
    payload: Payload,
    log_dir: &Path,
    cgroup_parent: String,
) -> (Option<Pod>, Result<Latencies>) {
    let config = pod_config(tag, log_dir, &cgroup_parent);
    if let Err(e) = std::fs::create_dir_all(&config.log_directory) {
        return (None, Err(anyhow!("creating {}: {e}", config.log_directory)));
    }
    let mut pod = Pod {
        sandbox: String::new(),
        container: String::new(),
        cgroup_parent,
        log: PathBuf::from(&config.log_directory).join("c.log"),
    };
    let mut lat = Vec::with_capacity(3);
    let t = Instant::now();
    match rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
    {
        Ok(r) => pod.sandbox = r.into_inner().pod_sandbox_id,
        Err(e) => return (None, Err(anyhow!("RunPodSandbox {tag}: {e}"))),
    }
    lat.push(("RunPodSandbox", t.elapsed()));
    let command = payload.command();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let t = Instant::now();
    match rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.sandbox.clone(),
            config: Some(container_config("writer", image, &command, "c.log")),
            sandbox_config: Some(config),
        })
        .await
    {
        Ok(r) => pod.container = r.into_inner().container_id,
        Err(e) => return (Some(pod), Err(anyhow!("CreateContainer {tag}: {e}"))),
    }
    lat.push(("CreateContainer", t.elapsed()));
    let t = Instant::now();
    let r = rt
        .start_container(StartContainerRequest {
            container_id: pod.container.clone(),
        })
        .await;
    lat.push(("StartContainer", t.elapsed()));
    let result = r
        .map(|_| lat)
        .map_err(|e| anyhow!("StartContainer {tag}: {e}"));
    (Some(pod), result)
}

/// How many of `pods`' containers the runtime lists as running.
pub async fn running(t: &Target, pods: &[Pod]) -> Result<usize> {
    let listed = t
        .runtime
        .clone()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    Ok(pods
        .iter()
        .filter(|p| listed.iter().any(|c| c.id == p.container))
        .count())
}

/// Waits until every container has logged that its data is written;
/// returns how long that took, or fails after `limit`.
pub async fn wait_written(pods: &[Pod], limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut pending: Vec<&Pod> = pods.iter().collect();
    while !pending.is_empty() {
        pending
            .retain(|p| !std::fs::read_to_string(&p.log).is_ok_and(|text| text.contains(WRITTEN)));
        if started.elapsed() > limit {
            bail!(
                "{} containers had not written their data after {limit:?} (e.g. {})",
                pending.len(),
                pending[0].log.display()
            );
        }
        // Polling log files the runtimes write: no event to wait on here.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}
