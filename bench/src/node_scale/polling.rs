//! kubelet's steady polling of a full node: PLEG's relist (ListPodSandbox +
//! ListContainers) every second, and every ten seconds the stats the
//! eviction manager and the summary API read (ListPodSandboxStats,
//! ListContainerStats, ImageFsInfo); and the CPU the runtime spends
//! answering it (daemon and shims, user + system, from `/proc`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use carrack_bench::procs::cpu_time;
use carrack_proto::cri;
use tokio::time::MissedTickBehavior;

use crate::target::Target;

/// The polling pattern.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    /// How long to poll.
    pub window: Duration,
    /// PLEG's relist period.
    pub relist: Duration,
    /// The stats period.
    pub stats: Duration,
}

/// What a polling window measured.
#[derive(Debug, Default)]
pub struct Polled {
    /// Latencies per RPC.
    pub calls: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU of the daemon over the window.
    pub daemon_cpu: Duration,
    /// CPU of the shims over the window.
    pub shim_cpu: Duration,
}

/// The CPU time of `pids` now, summed (processes gone count nothing).
fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| cpu_time(p)).sum()
}

/// Polls `t` as kubelet does for `pattern.window`.
pub async fn poll(t: &Target, pattern: Pattern) -> Result<Polled> {
    let shims = t.shims();
    let daemon: Vec<u32> = t.daemon_pid.into_iter().collect();
    let (d0, s0) = (cpu_of(&daemon), cpu_of(&shims));
    let deadline = tokio::time::Instant::now() + pattern.window;
    let relist = relist_loop(t.runtime.clone(), pattern.relist, deadline);
    let stats = stats_loop(t, pattern.stats, deadline);
    let (relisted, stated) = tokio::try_join!(relist, stats)?;
    let (d1, s1) = (cpu_of(&daemon), cpu_of(&shims));
    let mut calls = relisted;
    calls.extend(stated);
    Ok(Polled {
        calls,
        daemon_cpu: d1.saturating_sub(d0),
        shim_cpu: s1.saturating_sub(s0),
    })
}

type Calls = BTreeMap<&'static str, Vec<Duration>>;

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

async fn relist_loop(
    mut rt: cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    period: Duration,
    deadline: tokio::time::Instant,
) -> Result<Calls> {
    let mut calls = Calls::new();
    let mut tick = ticker(period);
    while tick.tick().await < deadline {
        let t = Instant::now();
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .context("ListPodSandbox")?;
        calls.entry("ListPodSandbox").or_default().push(t.elapsed());
        let t = Instant::now();
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .context("ListContainers")?;
        calls.entry("ListContainers").or_default().push(t.elapsed());
    }
    Ok(calls)
}

async fn stats_loop(t: &Target, period: Duration, deadline: tokio::time::Instant) -> Result<Calls> {
    let (mut rt, mut images) = (t.runtime.clone(), t.images.clone());
    let mut calls = Calls::new();
    let mut tick = ticker(period);
    while tick.tick().await < deadline {
        let s = Instant::now();
        rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
            .context("ListPodSandboxStats")?;
        calls
            .entry("ListPodSandboxStats")
            .or_default()
            .push(s.elapsed());
        let s = Instant::now();
        rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .context("ListContainerStats")?;
        calls
            .entry("ListContainerStats")
            .or_default()
            .push(s.elapsed());
        let s = Instant::now();
        images
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .context("ImageFsInfo")?;
        calls.entry("ImageFsInfo").or_default().push(s.elapsed());
    }
    Ok(calls)
}

/// How many of the runtime's containers report at least `bytes` in their
/// writable layer (ListContainerStats), and how many report one at all.
pub async fn writable_layers_at_least(t: &Target, bytes: u64) -> Result<(usize, usize)> {
    let stats = t
        .runtime
        .clone()
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats;
    let used: Vec<u64> = stats
        .iter()
        .filter_map(|s| s.writable_layer.as_ref()?.used_bytes.as_ref())
        .map(|v| v.value)
        .collect();
    Ok((used.iter().filter(|&&u| u >= bytes).count(), used.len()))
}
