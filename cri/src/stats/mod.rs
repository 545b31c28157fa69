//! Container and pod sandbox statistics, as kubelet reads them to evict,
//! schedule and report (ContainerStats, PodSandboxStats and their List
//! forms), and the cAdvisor-named metrics built from the same samples
//! ([`metrics`]).
//!
//! CPU and memory come from the cgroups (via `carrack-cgroups`, which reads
//! v1, v2 and hybrid hosts alike: nothing here looks at a controller file),
//! the writable layer from the image store's `rootfs_usage` (a figure the
//! store keeps up to date in the background, `carrack_image::usage`: no
//! file tree is walked here, and its timestamp is when it was measured),
//! network counters from inside the pod's network namespace ([`network`]).
//!
//! Pressure (PSI: the `psi` of CPU and memory, and `io`, which carries only
//! the I/O pressure) comes from the cgroup2 directory's `*.pressure` files:
//! on a cgroup v2 or hybrid host; none on a host without cgroup2, nor where
//! the kernel has PSI off (`psi=0`).
//!
//! `usage_nano_cores` is a rate: the [`Sampler`] keeps the last CPU sample
//! of every container and pod and divides the CPU time used since then by
//! the wall time elapsed. The first sample of a container has no rate.
//!
//! The cgroups and network counters are read either at each call, or, with
//! `stats_collection_seconds` set, by a pass over every pod and container
//! in the background ([`collection`]), the calls answering from its
//! samples.
//!
//! This module does not decide which containers exist: the RuntimeService
//! passes the records; nor does it know the store.

pub mod collection;
pub mod metrics;
pub mod network;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use carrack_image::ImageStore;
use carrack_proto::cri;

use crate::store::{ContainerRecord, SandboxRecord};

/// The interface kubelet treats as the pod's own (`network.default_interface`).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// A memory limit at or above this is "no limit" (v1 reports
/// PAGE_COUNTER_MAX rounded to pages, v2 "max").
const UNLIMITED: u64 = 1 << 62;

fn now_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// Whether stats are read for a container in `state`: those with a cgroup
/// (created or running); an exited container's cgroup is gone.
pub fn sampled(state: crate::store::ContainerState) -> bool {
    matches!(
        state,
        crate::store::ContainerState::Created | crate::store::ContainerState::Running
    )
}

/// One CPU sample: when, and the cumulative CPU time at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    at_nanos: i64,
    usage_nanos: u64,
}

/// The CPU rate over the interval between two samples, in nanocores
/// (1e9 = one core busy); None without a usable previous sample.
fn nano_cores(prev: Option<CpuSample>, now: CpuSample) -> Option<u64> {
    let prev = prev?;
    let wall = now.at_nanos.checked_sub(prev.at_nanos)?;
    if wall <= 0 || now.usage_nanos < prev.usage_nanos {
        return None;
    }
    let used = (now.usage_nanos - prev.usage_nanos) as u128;
    Some((used * 1_000_000_000 / wall as u128) as u64)
}

/// Keeps the last CPU sample per container and per pod, for rates, each
/// container's cgroup path (read once from its bundle), and, when
/// collecting, the collection's samples. The cgroups are opened in the
/// layout `crate::pod_cgroup::host_hierarchy` found once.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Mutex<HashMap<String, CpuSample>>,
    cgroup_paths: Mutex<HashMap<String, String>>,
    /// The samples of the background collection; None: read at each call.
    collected: Option<collection::Collected>,
}

/// What a container's cgroup said at one moment.
#[derive(Debug, Clone, Default)]
struct ContainerSample {
    cpu: Option<cri::CpuUsage>,
    memory: Option<cri::MemoryUsage>,
    swap: Option<cri::SwapUsage>,
    io: Option<cri::IoUsage>,
}

/// What a pod's cgroup and network namespace said at one moment.
#[derive(Debug, Clone, Default)]
struct PodSample {
    cpu: Option<cri::CpuUsage>,
    memory: Option<cri::MemoryUsage>,
    process: Option<cri::ProcessUsage>,
    network: Option<cri::NetworkUsage>,
    io: Option<cri::IoUsage>,
}

impl Sampler {
    /// A sampler that reads at each call (`collect` false) or answers from
    /// the samples of [`Sampler::collect`].
    pub fn new(collect: bool) -> Sampler {
        Sampler {
            collected: collect.then(Default::default),
            ..Default::default()
        }
    }

    /// Records `now` for `key` and returns the rate since the previous one.
    fn rate(&self, key: &str, now: CpuSample) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert(key.to_owned(), now);
        nano_cores(prev, now)
    }

    /// Forgets the sample of a removed container or pod sandbox `id`.
    pub fn forget(&self, id: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.remove(id);
        last.remove(&format!("pod:{id}"));
        drop(last);
        let mut paths = self.cgroup_paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.remove(id);
        drop(paths);
        if let Some(c) = &self.collected {
            c.forget(id);
        }
    }

    /// The container's cgroup: `linux.cgroupsPath` of its bundle's
    /// config.json (what the runtime was told; read once, it never
    /// changes), else the pod cgroup's child named by the id.
    fn container_cgroup_path(
        &self,
        c: &ContainerRecord,
        sb: Option<&SandboxRecord>,
    ) -> Option<String> {
        let mut paths = self.cgroup_paths.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = paths.get(&c.id) {
            return Some(p.clone());
        }
        if let Some(p) = spec_cgroup_path(c) {
            paths.insert(c.id.clone(), p.clone());
            return Some(p);
        }
        sb.map(|s| crate::pod_cgroup::member_cgroups_path(&s.cgroup_path, &c.id))
    }

    /// CPU and memory of one cgroup as CRI reports them, and its process
    /// count when `count_processes` (pods report one, containers do not);
    /// None when the cgroup cannot be read (not created yet, or already
    /// removed).
    fn cgroup_usage(
        &self,
        key: &str,
        cgroup_path: &str,
        id: &str,
        count_processes: bool,
    ) -> Option<CgroupUsage> {
        let cg = crate::pod_cgroup::open_cgroup(cgroup_path, id).ok()?;
        let st = cg.stats_of(carrack_cgroups::Detail::CpuMemory).ok()?;
        let ts = now_nanos();
        let sample = CpuSample {
            at_nanos: ts,
            usage_nanos: st.cpu.usage.total,
        };
        let cpu = cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: value(st.cpu.usage.total),
            usage_nano_cores: self.rate(key, sample).and_then(value),
            psi: st.cpu.psi.as_ref().map(psi),
        };
        let processes = if count_processes {
            cg.pids().map(|p| p.len() as u64).unwrap_or(0)
        } else {
            0
        };
        Some(CgroupUsage {
            cpu,
            memory: memory_usage(&st.memory, ts),
            swap: swap_usage(&st.memory, ts),
            io: st.blkio.psi.as_ref().map(|p| cri::IoUsage {
                timestamp: ts,
                psi: Some(psi(p)),
            }),
            processes,
        })
    }

    /// Reads the cgroup of container `c` of the pod `sb`.
    fn read_container(&self, c: &ContainerRecord, sb: Option<&SandboxRecord>) -> ContainerSample {
        let usage = self
            .container_cgroup_path(c, sb)
            .and_then(|path| self.cgroup_usage(&c.id, &path, &c.id, false));
        match usage {
            Some(u) => ContainerSample {
                cpu: Some(u.cpu),
                memory: Some(u.memory),
                swap: u.swap,
                io: u.io,
            },
            None => ContainerSample::default(),
        }
    }

    /// Reads the cgroup, process count and network counters of pod `sb`.
    fn read_pod(&self, sb: &SandboxRecord) -> PodSample {
        let ts = now_nanos();
        let usage = self.cgroup_usage(
            &format!("pod:{}", sb.id),
            &crate::pod_cgroup::cgroupfs_path(&sb.cgroup_path),
            &sb.id,
            true,
        );
        let network = pod_network(sb, ts);
        match usage {
            Some(u) => PodSample {
                cpu: Some(u.cpu),
                memory: Some(u.memory),
                process: Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: value(u.processes),
                }),
                network,
                io: u.io,
            },
            None => PodSample {
                network,
                ..Default::default()
            },
        }
    }

    /// The stats of one container of the pod `sb`.
    pub fn container_stats(
        &self,
        images: &ImageStore,
        c: &ContainerRecord,
        sb: Option<&SandboxRecord>,
    ) -> cri::ContainerStats {
        let sample = match &self.collected {
            Some(collected) => collected.container(c, || self.read_container(c, sb)),
            None => self.read_container(c, sb),
        };
        let writable_layer = images
            .rootfs_usage(&c.id)
            .ok()
            .map(|u| cri::FilesystemUsage {
                timestamp: u.measured_at.map_or_else(now_nanos, unix_nanos),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: u.path.to_string_lossy().into_owned(),
                }),
                used_bytes: value(u.used_bytes),
                inodes_used: value(u.inodes_used),
            });
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: sample.cpu,
            memory: sample.memory,
            writable_layer,
            swap: sample.swap,
            io: sample.io,
        }
    }

    /// The stats of a pod sandbox: its cgroup (which holds its containers'),
    /// its network, its process count, and `containers`' stats.
    pub fn pod_stats(
        &self,
        images: &ImageStore,
        sb: &SandboxRecord,
        containers: &[impl std::borrow::Borrow<ContainerRecord>],
    ) -> cri::PodSandboxStats {
        let sample = match &self.collected {
            Some(collected) => collected.pod(sb, || self.read_pod(sb)),
            None => self.read_pod(sb),
        };
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: sample.cpu,
                memory: sample.memory,
                network: sample.network,
                process: sample.process,
                containers: containers
                    .iter()
                    .map(|c| self.container_stats(images, c.borrow(), Some(sb)))
                    .collect(),
                io: sample.io,
            }),
            windows: None,
        }
    }
}

/// What one cgroup's files say, in CRI's terms.
struct CgroupUsage {
    cpu: cri::CpuUsage,
    memory: cri::MemoryUsage,
    swap: Option<cri::SwapUsage>,
    /// I/O pressure, where the kernel reports it.
    io: Option<cri::IoUsage>,
    processes: u64,
}

/// A cgroup's pressure as the CRI has it: the same lines, the total in
/// nanoseconds (the kernel counts microseconds).
fn psi(p: &carrack_cgroups::Psi) -> cri::PsiStats {
    let line = |d: &carrack_cgroups::PsiData| cri::PsiData {
        total: d.total.saturating_mul(1000),
        avg10: d.avg10,
        avg60: d.avg60,
        avg300: d.avg300,
    };
    cri::PsiStats {
        full: Some(line(&p.full)),
        some: Some(line(&p.some)),
    }
}

/// Memory as kubelet reads it; `available_bytes` only under a limit.
fn memory_usage(m: &carrack_cgroups::MemoryStats, ts: i64) -> cri::MemoryUsage {
    let limit = m.usage.limit;
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: value(m.working_set),
        available_bytes: (limit > 0 && limit < UNLIMITED)
            .then(|| limit.saturating_sub(m.working_set))
            .and_then(value),
        usage_bytes: value(m.usage.usage),
        rss_bytes: value(m.rss),
        page_faults: value(m.pgfault),
        major_page_faults: value(m.pgmajfault),
        psi: m.psi.as_ref().map(psi),
    }
}

/// Swap in use: memory+swap minus memory (both hierarchies report the sum);
/// None without swap accounting (v1 without memsw files reports 0). The
/// available swap is not reported: v1 limits memory+swap, v2 swap alone.
fn swap_usage(m: &carrack_cgroups::MemoryStats, ts: i64) -> Option<cri::SwapUsage> {
    if m.swap_usage.usage == 0 || m.swap_usage.usage < m.usage.usage {
        return None;
    }
    Some(cri::SwapUsage {
        timestamp: ts,
        swap_usage_bytes: value(m.swap_usage.usage - m.usage.usage),
        swap_available_bytes: None,
    })
}

/// `linux.cgroupsPath` of the container's bundle, when it has one.
fn spec_cgroup_path(c: &ContainerRecord) -> Option<String> {
    std::fs::read(c.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(str::to_owned))
}

/// The pod's interfaces other than loopback, `eth0` as the default one;
/// None for host-network pods (their traffic is the node's) or when the
/// namespace cannot be read.
fn pod_network(sb: &SandboxRecord, ts: i64) -> Option<cri::NetworkUsage> {
    if sb.netns.is_empty() {
        return None;
    }
    let ifaces = match network::read_pod_interfaces(Path::new(&sb.netns)) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(sandbox = sb.id, "network stats: {e}");
            return None;
        }
    };
    let interfaces: Vec<cri::NetworkInterfaceUsage> = ifaces
        .into_iter()
        .filter(|i| i.name != "lo")
        .map(|i| cri::NetworkInterfaceUsage {
            name: i.name,
            rx_bytes: value(i.rx_bytes),
            rx_errors: value(i.rx_errors),
            tx_bytes: value(i.tx_bytes),
            tx_errors: value(i.tx_errors),
        })
        .collect();
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .cloned(),
        interfaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: i64, usage: u64) -> CpuSample {
        CpuSample {
            at_nanos: at,
            usage_nanos: usage,
        }
    }

    #[test]
    fn nano_cores_is_cpu_time_over_wall_time() {
        assert_eq!(nano_cores(None, s(10, 10)), None);
        // Half a second of CPU in one second of wall time: half a core.
        assert_eq!(
            nano_cores(Some(s(0, 0)), s(1_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        // Two cores busy.
        assert_eq!(
            nano_cores(Some(s(0, 100)), s(1_000_000_000, 2_000_000_100)),
            Some(2_000_000_000)
        );
        // No time passed, or the counter went back (a new cgroup): no rate.
        assert_eq!(nano_cores(Some(s(5, 0)), s(5, 10)), None);
        assert_eq!(nano_cores(Some(s(0, 10)), s(5, 5)), None);
    }

    #[test]
    fn available_bytes_only_under_a_limit_and_swap_only_with_accounting() {
        let mut m = carrack_cgroups::MemoryStats::default();
        m.usage.usage = 300;
        m.working_set = 200;
        m.usage.limit = 1000;
        let u = memory_usage(&m, 7);
        assert_eq!(u.available_bytes.unwrap().value, 800);
        assert_eq!(u.working_set_bytes.unwrap().value, 200);
        assert_eq!(u.usage_bytes.unwrap().value, 300);
        m.usage.limit = 9_223_372_036_854_771_712; // v1 "no limit"
        assert!(memory_usage(&m, 7).available_bytes.is_none());
        m.usage.limit = u64::MAX; // v2 "max"
        assert!(memory_usage(&m, 7).available_bytes.is_none());

        assert!(swap_usage(&m, 7).is_none(), "no swap accounting");
        m.swap_usage.usage = 350;
        assert_eq!(
            swap_usage(&m, 7).unwrap().swap_usage_bytes.unwrap().value,
            50
        );
    }

    fn record(id: &str, bundle: &Path) -> ContainerRecord {
        ContainerRecord {
            bundle: bundle.to_owned(),
            ..crate::store::fixtures::container(id, "pod")
        }
    }

    /// The bundle's spec is read once per container: stats of a full node
    /// read no file per container but the cgroup's.
    #[test]
    fn a_containers_cgroup_path_is_read_from_its_bundle_once() {
        let bundle = tempfile::tempdir().unwrap();
        let spec = bundle.path().join("config.json");
        std::fs::write(&spec, r#"{"linux":{"cgroupsPath":"/kubepods/pod1/c1"}}"#).unwrap();
        let sm = Sampler::default();
        let c = record("c1", bundle.path());
        assert_eq!(
            sm.container_cgroup_path(&c, None).as_deref(),
            Some("/kubepods/pod1/c1")
        );
        std::fs::remove_file(&spec).unwrap();
        assert_eq!(
            sm.container_cgroup_path(&c, None).as_deref(),
            Some("/kubepods/pod1/c1"),
            "read again"
        );
        // Forgotten with the container; without a spec, none is cached.
        sm.forget("c1");
        assert_eq!(sm.container_cgroup_path(&c, None), None);
        std::fs::write(&spec, r#"{"linux":{"cgroupsPath":"/kubepods/pod1/c1"}}"#).unwrap();
        assert_eq!(
            sm.container_cgroup_path(&c, None).as_deref(),
            Some("/kubepods/pod1/c1")
        );
    }

    #[test]
    fn pressure_totals_are_nanoseconds() {
        let p = carrack_cgroups::Psi {
            some: carrack_cgroups::PsiData {
                avg10: 2.5,
                avg60: 1.0,
                avg300: 0.5,
                total: 1500,
            },
            full: carrack_cgroups::PsiData::default(),
        };
        let c = psi(&p);
        let some = c.some.unwrap();
        assert_eq!(
            (some.total, some.avg10, some.avg60, some.avg300),
            (1_500_000, 2.5, 1.0, 0.5)
        );
        assert_eq!(c.full.unwrap(), cri::PsiData::default());
        let mut m = carrack_cgroups::MemoryStats::default();
        assert!(memory_usage(&m, 1).psi.is_none(), "no pressure file: none");
        m.psi = Some(p);
        assert_eq!(
            memory_usage(&m, 1).psi.unwrap().some.unwrap().total,
            1_500_000
        );
    }

    #[test]
    fn sampler_keeps_the_last_sample_per_key() {
        let sm = Sampler::default();
        assert_eq!(sm.rate("a", s(0, 0)), None);
        assert_eq!(sm.rate("b", s(0, 0)), None);
        assert_eq!(sm.rate("a", s(100, 50)), Some(500_000_000));
        assert_eq!(sm.rate("a", s(200, 150)), Some(1_000_000_000));
        sm.forget("a");
        assert_eq!(sm.rate("a", s(300, 200)), None);
        assert_eq!(sm.rate("b", s(100, 100)), Some(1_000_000_000));
        assert_eq!(sm.rate("pod:p", s(0, 0)), None);
        sm.forget("p");
        assert_eq!(sm.rate("pod:p", s(10, 10)), None);
    }
}
