//! Cgroup statistics, in the JSON shape of `runc events --stats` (its `data`
//! object), so that tools reading runc's output read ours.
//!
//! Pressure stall information ([`Psi`]) comes from the cgroup2 directory's
//! `cpu.pressure`, `memory.pressure` and `io.pressure`: every cgroup2
//! directory has them (kernel 4.20 and later, unless booted with `psi=0`),
//! whichever controllers it has, so a hybrid host reports them too; a host
//! without cgroup2 has none.

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
    /// CPU pressure (`cpu.pressure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
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
    /// Memory pressure (`memory.pressure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
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
    /// I/O pressure (`io.pressure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
}

/// Pressure stall information of one resource: its `some` line (at least
/// one task stalled) and `full` line (every non-idle task stalled).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// Some tasks stalled.
    pub some: PsiData,
    /// All non-idle tasks stalled (zero where the kernel has no such line:
    /// `cpu.pressure` before Linux 5.13).
    pub full: PsiData,
}

/// One line of a pressure file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiData {
    /// Share of the last 10 s stalled, in percent.
    pub avg10: f64,
    /// Share of the last 60 s stalled, in percent.
    pub avg60: f64,
    /// Share of the last 300 s stalled, in percent.
    pub avg300: f64,
    /// Time stalled in all, microseconds.
    pub total: u64,
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

/// Parses a pressure file (`some avg10=0.12 avg60=… avg300=… total=…`, then
/// the same for `full`); None when it has no `some` line.
pub(crate) fn parse_pressure(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut some = false;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let data = match it.next() {
            Some("some") => {
                some = true;
                &mut psi.some
            }
            Some("full") => &mut psi.full,
            _ => continue,
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => data.avg10 = v.parse().ok()?,
                "avg60" => data.avg60 = v.parse().ok()?,
                "avg300" => data.avg300 = v.parse().ok()?,
                "total" => data.total = v.parse().ok()?,
                _ => {}
            }
        }
    }
    some.then_some(psi)
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
    fn pressure_files() {
        let psi = parse_pressure(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=789\n",
        )
        .unwrap();
        assert_eq!(psi.some.avg10, 1.5);
        assert_eq!(psi.some.avg60, 0.25);
        assert_eq!(psi.some.total, 123456);
        assert_eq!(psi.full.avg10, 0.5);
        assert_eq!(psi.full.total, 789);
        // cpu.pressure of kernels before 5.13: no full line.
        let cpu = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n").unwrap();
        assert_eq!((cpu.some.total, cpu.full), (42, PsiData::default()));
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x total=1\n"), None);
    }

    #[test]
    fn serializes_like_runc() {
        let json = serde_json::to_value(Stats::default()).unwrap();
        assert!(json["cpu"]["throttling"].get("throttledPeriods").is_some());
        assert!(json["blkio"].get("ioServiceBytesRecursive").is_some());
        assert!(json["memory"].get("swap_usage").is_some());
        assert!(json["cpu"].get("psi").is_none(), "no pressure: no key");
        let mut s = Stats::default();
        s.memory.psi = Some(Psi::default());
        let json = serde_json::to_value(s).unwrap();
        assert!(json["memory"]["psi"]["some"].get("avg10").is_some());
        assert!(json["memory"]["psi"]["full"].get("total").is_some());
    }
}
