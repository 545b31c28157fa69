//! Cgroup statistics, in the JSON shape of `runc events --stats` (its `data`
//! object), so that tools reading runc's output read ours.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How much of a cgroup's statistics to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// CPU time used and memory (usage, limit, swap usage, `memory.stat`):
    /// what CRI's container and pod stats report, read from 5 files where
    /// [`Detail::Full`] reads some 30. The other fields stay zero.
    CpuMemory,
    /// Everything `runc events --stats` reports.
    Full,
}

/// Everything read from the cgroup at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Memory usage and limits.
    pub memory: MemoryStats,
    /// Process count.
    pub pids: PidsStats,
    /// Block I/O.
    pub blkio: BlkioStats,
    /// Huge page usage by page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, HugetlbStats>,
}

/// CPU statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuStats {
    /// CPU time used.
    pub usage: CpuUsage,
    /// CFS throttling.
    pub throttling: Throttling,
}

/// CPU time, nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// All CPU time.
    pub total: u64,
    /// Per CPU (v1 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// Time in kernel mode.
    pub kernel: u64,
    /// Time in user mode.
    pub user: u64,
}

/// CFS throttling counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    /// Enforcement periods elapsed.
    pub periods: u64,
    /// Periods in which the group was throttled.
    pub throttled_periods: u64,
    /// Total throttled time, nanoseconds.
    pub throttled_time: u64,
}

/// Memory statistics, bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Page cache.
    pub cache: u64,
    /// Memory (without swap).
    pub usage: MemoryData,
    /// Memory plus swap.
    #[serde(rename = "swap_usage")]
    pub swap_usage: MemoryData,
    /// Usage minus inactive file pages: what kubelet evicts on.
    pub working_set: u64,
    /// Anonymous memory (rss).
    pub rss: u64,
    /// Page faults.
    pub pgfault: u64,
    /// Major page faults.
    pub pgmajfault: u64,
    /// Times the OOM killer killed a process of this cgroup.
    pub oom_kill: u64,
    /// The raw memory.stat counters.
    pub stats: BTreeMap<String, u64>,
}

/// One memory counter set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryData {
    /// Current usage.
    pub usage: u64,
    /// Highest usage seen (v1 only).
    pub max_usage: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
    /// The limit (u64::MAX when unlimited).
    pub limit: u64,
}

/// Process counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Processes now.
    pub current: u64,
    /// The limit, 0 when unlimited.
    pub limit: u64,
}

/// Block I/O counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlkioStats {
    /// Bytes per device and operation.
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations per device and operation.
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// One block I/O counter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlkioEntry {
    /// Device major.
    pub major: u64,
    /// Device minor.
    pub minor: u64,
    /// "Read", "Write", "Total", …
    pub op: String,
    /// The counter.
    pub value: u64,
}

/// Huge page usage of one page size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HugetlbStats {
    /// Bytes in use.
    pub usage: u64,
    /// Highest usage (v1 only).
    pub max_usage: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Parses `key value` lines (memory.stat, cpu.stat, memory.events).
pub(crate) fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Parses a single number, with "max" as u64::MAX.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_max() {
        let m = parse_flat_keyed("anon 10\nfile 20\nbogus\n");
        assert_eq!(m["anon"], 10);
        assert_eq!(m.len(), 2);
        assert_eq!(parse_u64("max\n"), Some(u64::MAX));
        assert_eq!(parse_u64("42\n"), Some(42));
    }

    #[test]
    fn serializes_like_runc() {
        let json = serde_json::to_value(Stats::default()).unwrap();
        assert!(json["cpu"]["throttling"].get("throttledPeriods").is_some());
        assert!(json["blkio"].get("ioServiceBytesRecursive").is_some());
        assert!(json["memory"].get("swap_usage").is_some());
    }
}
