//! Figures read from `/proc`: memory (RSS, PSS) and CPU time of processes,
//! and finding processes by name, command line or cgroup.

use std::time::Duration;

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, "VmRSS:")
}

/// Pss of a process in KiB (smaps_rollup).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&rollup, "Pss:")
}

/// The first word after `key` in a `/proc` file of `Key: value` lines.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.parse().ok()
}

/// User plus system CPU time of a process, all its threads (those that
/// exited included), from `/proc/<pid>/stat`; children are not counted.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself: fields are counted from the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// PIDs of the live processes named `comm` whose command line contains
/// `marker` (every one when it is empty). Zombies are left out: shims of
/// removed pods that exited under a PID 1 that does not reap them hold no
/// memory and use no CPU.
pub fn processes(comm: &str, marker: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            field(&status, "Name:") == Some(comm)
                && field(&status, "State:") != Some("Z")
                && (marker.is_empty() || cmdline(pid).contains(marker))
        })
        .collect()
}

/// PIDs of the live processes in a cgroup whose path (in any hierarchy)
/// contains `needle`.
pub fn processes_in_cgroups(needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.contains(needle)))
        })
        .collect()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_from_the_last_parenthesis() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 1 1";
        assert_eq!(stat_cpu_ticks(line), Some(12));
        assert_eq!(stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_found_and_has_cpu_time() {
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(processes(comm.trim(), "").contains(&me));
        assert!(!processes(comm.trim(), "no such marker \u{1}").contains(&me));
        assert!(cpu_time(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
    }
}
