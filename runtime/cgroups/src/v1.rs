//! cgroup v1: resources written to each controller's own hierarchy, and
//! statistics read from them. Controllers the host has on the unified
//! hierarchy instead (hybrid hosts) are left to `v2`.

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use crate::error::{CgroupError, Result};
use crate::stats::{BlkioEntry, Detail, HugetlbStats, Stats, parse_flat_keyed, parse_u64};
use crate::{Cgroup, read_file, read_optional, write_file};

/// The v1 directory of `controller`, or an error naming the OCI field when
/// the request needs it and neither hierarchy has it.
fn dir_for<'a>(cg: &'a Cgroup, controller: &str, field: &str) -> Result<Option<&'a Path>> {
    match cg.v1_dir(controller) {
        Some(d) => Ok(Some(d)),
        None if cg.layout().on_unified(controller) || cg.layout().v1.is_empty() => Ok(None),
        None => Err(CgroupError::InvalidResource {
            field: field.to_owned(),
            reason: format!("the {controller} controller is not available on this host"),
        }),
    }
}

/// Applies the resources whose controllers live on v1 hierarchies.
pub(crate) fn apply(cg: &Cgroup, r: &LinuxResources) -> Result<()> {
    if let Some(mem) = r.memory()
        && let Some(dir) = dir_for(cg, "memory", "memory")?
    {
        apply_memory(dir, mem.limit(), mem.swap())?;
        if let Some(res) = mem.reservation() {
            write_file(&dir.join("memory.soft_limit_in_bytes"), &res.to_string())?;
        }
        if let Some(sw) = mem.swappiness() {
            if sw > 100 {
                return Err(CgroupError::InvalidResource {
                    field: "memory.swappiness".into(),
                    reason: format!("{sw} is above 100"),
                });
            }
            write_file(&dir.join("memory.swappiness"), &sw.to_string())?;
        }
        if mem.disable_oom_killer() == Some(true) {
            write_file(&dir.join("memory.oom_control"), "1")?;
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(dir) = dir_for(cg, "cpu", "cpu")? {
            if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
                write_file(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            if let Some(period) = cpu.period().filter(|p| *p > 0) {
                write_file(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            }
            if let Some(quota) = cpu.quota().filter(|q| *q != 0) {
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(p) = cpu.realtime_period().filter(|p| *p > 0) {
                write_file(&dir.join("cpu.rt_period_us"), &p.to_string())?;
            }
            if let Some(rt) = cpu.realtime_runtime().filter(|r| *r != 0) {
                write_file(&dir.join("cpu.rt_runtime_us"), &rt.to_string())?;
            }
        }
        if (cpu.cpus().is_some() || cpu.mems().is_some())
            && let Some(dir) = dir_for(cg, "cpuset", "cpu.cpus")?
        {
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_file(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                write_file(&dir.join("cpuset.mems"), mems)?;
            }
        }
    }
    if let Some(pids) = r.pids()
        && let Some(dir) = dir_for(cg, "pids", "pids.limit")?
    {
        let v = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".into()
        };
        write_file(&dir.join("pids.max"), &v)?;
    }
    if let Some(bio) = r.block_io()
        && let Some(dir) = dir_for(cg, "blkio", "blockIO")?
    {
        if let Some(w) = bio.weight() {
            write_weight(dir, &w.to_string())?;
        }
        for d in bio.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                write_weight(dir, &format!("{}:{} {}", d.major(), d.minor(), w))?;
            }
        }
        let throttles = [
            (
                "blkio.throttle.read_bps_device",
                bio.throttle_read_bps_device(),
            ),
            (
                "blkio.throttle.write_bps_device",
                bio.throttle_write_bps_device(),
            ),
            (
                "blkio.throttle.read_iops_device",
                bio.throttle_read_iops_device(),
            ),
            (
                "blkio.throttle.write_iops_device",
                bio.throttle_write_iops_device(),
            ),
        ];
        for (file, list) in throttles {
            for d in list.iter().flatten() {
                write_file(
                    &dir.join(file),
                    &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                )?;
            }
        }
    }
    if let Some(limits) = r.hugepage_limits()
        && let Some(dir) = dir_for(cg, "hugetlb", "hugepageLimits")?
    {
        for l in limits {
            let file = format!("hugetlb.{}.limit_in_bytes", l.page_size());
            write_file(&dir.join(file), &l.limit().to_string())?;
        }
    }
    if let Some(devices) = r.devices()
        && let Some(dir) = cg.v1_dir("devices")
    {
        apply_devices(dir, devices)?;
    }
    Ok(())
}

/// memory.limit_in_bytes must stay ≤ memory.memsw.limit_in_bytes at every
/// step, so the order of the two writes depends on the direction of change.
fn apply_memory(dir: &Path, limit: Option<i64>, swap: Option<i64>) -> Result<()> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let swap_file = dir.join("memory.memsw.limit_in_bytes");
    let has_swap_accounting = swap_file.exists();
    match (limit, swap.filter(|_| has_swap_accounting)) {
        (Some(l), Some(s)) => {
            if s != -1 && l != -1 && s < l {
                return Err(CgroupError::InvalidResource {
                    field: "memory.swap".into(),
                    reason: format!("{s} (memory+swap) is below memory.limit {l}"),
                });
            }
            // Raising: memsw first; lowering: limit first. Try one order,
            // fall back to the other.
            if write_file(&limit_file, &l.to_string()).is_err() {
                write_file(&swap_file, &s.to_string())?;
                write_file(&limit_file, &l.to_string())?;
            } else {
                write_file(&swap_file, &s.to_string())?;
            }
        }
        (Some(l), None) => {
            if write_file(&limit_file, &l.to_string()).is_err() && has_swap_accounting {
                // A lower memsw limit from earlier blocks a raise: lift both.
                write_file(&swap_file, "-1")?;
                write_file(&limit_file, &l.to_string())?;
            }
            if has_swap_accounting && l != -1 && swap.is_none() {
                // Without a swap request the container gets no extra swap,
                // as runc does: memory+swap = memory.
                let _ = write_file(&swap_file, &l.to_string());
            }
        }
        (None, Some(s)) => write_file(&swap_file, &s.to_string())?,
        (None, None) => {}
    }
    Ok(())
}

fn write_weight(dir: &Path, value: &str) -> Result<()> {
    // Kernels with BFQ expose blkio.bfq.weight instead of blkio.weight.
    let plain = dir.join(if value.contains(':') {
        "blkio.weight_device"
    } else {
        "blkio.weight"
    });
    if plain.exists() {
        return write_file(&plain, value);
    }
    let bfq = dir.join(if value.contains(':') {
        "blkio.bfq.weight_device"
    } else {
        "blkio.bfq.weight"
    });
    write_file(&bfq, value)
}

/// One device rule in the v1 devices-cgroup syntax: `c 1:3 rwm`.
pub(crate) fn device_rule(d: &LinuxDeviceCgroup) -> String {
    let typ = d
        .typ()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_else(|| "a".into());
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or("*".to_owned(), |n| n.to_string())
    };
    let access = d
        .access()
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "rwm".into());
    if typ == "a" {
        return "a".into();
    }
    format!("{typ} {}:{} {access}", num(d.major()), num(d.minor()))
}

fn apply_devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for d in rules {
        let file = if d.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write_file(&dir.join(file), &device_rule(d))?;
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with empty cpus and mems, and a task cannot
/// join it until both are set: copy them down from the nearest parent.
pub(crate) fn init_cpuset(dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mut chain = vec![dir.to_path_buf()];
        let mut cur = dir.parent();
        while let Some(p) = cur {
            if !p.join(file).exists() {
                break;
            }
            chain.push(p.to_path_buf());
            cur = p.parent();
        }
        // chain: dir, parent, …, root. Fill from the top down.
        let mut value = String::new();
        for d in chain.iter().rev() {
            let current = read_file(&d.join(file))?.trim().to_owned();
            if current.is_empty() {
                write_file(&d.join(file), &value)?;
            } else {
                value = current;
            }
        }
    }
    Ok(())
}

/// The v1 freezer: write the state and wait until the kernel reports it
/// (FREEZING turns into FROZEN once every task has stopped).
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    let file = dir.join("freezer.state");
    // The v1 freezer has no change notification; its state file is polled,
    // as runc and crun do, with a bounded backoff.
    for attempt in 0..1000u32 {
        write_file(&file, state)?;
        if read_file(&file)?.trim() == state {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(100 * u64::from(attempt.min(100))));
    }
    Err(CgroupError::FreezeTimeout {
        path: dir.to_path_buf(),
        state,
    })
}

/// Reads the statistics of the controllers on v1.
pub(crate) fn read_stats(cg: &Cgroup, stats: &mut Stats, detail: Detail) -> Result<()> {
    let full = detail == Detail::Full;
    if let Some(dir) = cg.v1_dir("cpuacct") {
        stats.cpu.usage.total = read_optional(&dir.join("cpuacct.usage"))
            .and_then(|s| parse_u64(&s))
            .unwrap_or(0);
    }
    if let Some(dir) = cg.v1_dir("cpuacct").filter(|_| full) {
        stats.cpu.usage.percpu = read_optional(&dir.join("cpuacct.usage_percpu"))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // cpuacct.stat is in USER_HZ ticks (100 per second on Linux).
        let ticks = parse_flat_keyed(&read_optional(&dir.join("cpuacct.stat")).unwrap_or_default());
        stats.cpu.usage.user = ticks.get("user").copied().unwrap_or(0) * 10_000_000;
        stats.cpu.usage.kernel = ticks.get("system").copied().unwrap_or(0) * 10_000_000;
    }
    if let Some(dir) = cg.v1_dir("cpu").filter(|_| full) {
        let s = parse_flat_keyed(&read_optional(&dir.join("cpu.stat")).unwrap_or_default());
        stats.cpu.throttling.periods = s.get("nr_periods").copied().unwrap_or(0);
        stats.cpu.throttling.throttled_periods = s.get("nr_throttled").copied().unwrap_or(0);
        stats.cpu.throttling.throttled_time = s.get("throttled_time").copied().unwrap_or(0);
    }
    if let Some(dir) = cg.v1_dir("memory") {
        let num = |f: &str| {
            read_optional(&dir.join(f))
                .and_then(|s| parse_u64(&s))
                .unwrap_or(0)
        };
        let raw = parse_flat_keyed(&read_file(&dir.join("memory.stat"))?);
        let m = &mut stats.memory;
        m.usage.usage = num("memory.usage_in_bytes");
        m.usage.limit = num("memory.limit_in_bytes");
        m.swap_usage.usage = num("memory.memsw.usage_in_bytes");
        if full {
            m.usage.max_usage = num("memory.max_usage_in_bytes");
            m.usage.failcnt = num("memory.failcnt");
            m.swap_usage.max_usage = num("memory.memsw.max_usage_in_bytes");
            m.swap_usage.failcnt = num("memory.memsw.failcnt");
            m.swap_usage.limit = num("memory.memsw.limit_in_bytes");
        }
        m.cache = raw
            .get("total_cache")
            .or(raw.get("cache"))
            .copied()
            .unwrap_or(0);
        m.rss = raw
            .get("total_rss")
            .or(raw.get("rss"))
            .copied()
            .unwrap_or(0);
        m.pgfault = raw
            .get("total_pgfault")
            .or(raw.get("pgfault"))
            .copied()
            .unwrap_or(0);
        m.pgmajfault = raw
            .get("total_pgmajfault")
            .or(raw.get("pgmajfault"))
            .copied()
            .unwrap_or(0);
        let inactive = raw
            .get("total_inactive_file")
            .or(raw.get("inactive_file"))
            .copied()
            .unwrap_or(0);
        m.working_set = m.usage.usage.saturating_sub(inactive);
        if full {
            let oom = parse_flat_keyed(
                &read_optional(&dir.join("memory.oom_control")).unwrap_or_default(),
            );
            m.oom_kill = oom.get("oom_kill").copied().unwrap_or(0);
        }
        m.stats = raw;
    }
    if !full {
        return Ok(());
    }
    if let Some(dir) = cg.v1_dir("pids") {
        stats.pids.current = read_optional(&dir.join("pids.current"))
            .and_then(|s| parse_u64(&s))
            .unwrap_or(0);
        stats.pids.limit = read_optional(&dir.join("pids.max"))
            .and_then(|s| parse_u64(&s))
            .filter(|v| *v != u64::MAX)
            .unwrap_or(0);
    }
    if let Some(dir) = cg.v1_dir("blkio") {
        stats.blkio.io_service_bytes_recursive = parse_blkio(
            &read_optional(&dir.join("blkio.throttle.io_service_bytes_recursive"))
                .unwrap_or_default(),
        );
        stats.blkio.io_serviced_recursive = parse_blkio(
            &read_optional(&dir.join("blkio.throttle.io_serviced_recursive")).unwrap_or_default(),
        );
    }
    if let Some(dir) = cg.v1_dir("hugetlb") {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(size) = name
                .strip_prefix("hugetlb.")
                .and_then(|n| n.strip_suffix(".usage_in_bytes"))
            {
                let num = |f: String| {
                    read_optional(&dir.join(f))
                        .and_then(|s| parse_u64(&s))
                        .unwrap_or(0)
                };
                stats.hugetlb.insert(
                    size.to_owned(),
                    HugetlbStats {
                        usage: num(format!("hugetlb.{size}.usage_in_bytes")),
                        max_usage: num(format!("hugetlb.{size}.max_usage_in_bytes")),
                        failcnt: num(format!("hugetlb.{size}.failcnt")),
                    },
                );
            }
        }
    }
    Ok(())
}

/// `8:0 Read 4096` lines; the per-cgroup `Total` line has no device.
fn parse_blkio(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (dev, op, value) = (it.next()?, it.next()?, it.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_owned(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

    #[test]
    fn device_rules_in_v1_syntax() {
        let all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(device_rule(&all), "a");
        let null = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rw")
            .build()
            .unwrap();
        assert_eq!(device_rule(&null), "c 1:3 rw");
        let any_minor = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(136)
            .build()
            .unwrap();
        assert_eq!(device_rule(&any_minor), "c 136:* rwm");
    }

    #[test]
    fn blkio_lines() {
        let e = parse_blkio("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 4096)
        );
    }
}
