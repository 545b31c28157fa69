//! cgroup v2 (the unified hierarchy): on a pure v2 host every controller, on
//! a hybrid host only those no v1 hierarchy carries. OCI values are
//! converted where v2 takes another unit (cpu.weight, io.weight, swap).

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::error::{CgroupError, Result, io_err};
use crate::hierarchy::Mode;
use crate::stats::{
    BlkioEntry, Detail, HugetlbStats, Stats, parse_flat_keyed, parse_pressure, parse_u64,
};
use crate::{Cgroup, devices_bpf, read_optional, write_file};

/// Enables, in every ancestor from `root` down to `dir`'s parent, each
/// controller the level offers, so that `dir` gets its interface files.
pub(crate) fn enable_controllers(root: &Path, dir: &Path) -> Result<()> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut level = root.to_path_buf();
    let components: Vec<_> = rel.components().collect();
    for c in components.iter().take(components.len().saturating_sub(1)) {
        enable_at(&level)?;
        level.push(c);
    }
    if !components.is_empty() {
        enable_at(&level)?;
    }
    Ok(())
}

fn enable_at(level: &Path) -> Result<()> {
    let offered = read_optional(&level.join("cgroup.controllers")).unwrap_or_default();
    let enabled = read_optional(&level.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = offered
        .split_whitespace()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&level.join("cgroup.subtree_control"), &missing.join(" "))
}

/// True when this controller is to be driven through the unified hierarchy.
fn owns(cg: &Cgroup, controller: &str) -> bool {
    (cg.layout().mode() == Mode::Unified && controller == "devices")
        || cg.layout().on_unified(controller)
}

fn require(cg: &Cgroup, controller: &str, field: &str) -> Result<bool> {
    if owns(cg, controller) {
        return Ok(true);
    }
    if cg.layout().mode() == Mode::Unified {
        return Err(CgroupError::InvalidResource {
            field: field.to_owned(),
            reason: format!("the {controller} controller is not enabled on this cgroup v2 host"),
        });
    }
    Ok(false)
}

/// cpu.shares (2..262144) → cpu.weight (1..10000), the conversion runc, crun
/// and the kubelet agree on.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// blkio.weight (10..1000) → io.weight (1..10000).
pub(crate) fn blkio_weight_to_io(weight: u16) -> u64 {
    1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990
}

pub(crate) fn apply(cg: &Cgroup, dir: &Path, r: &LinuxResources) -> Result<()> {
    if let Some(mem) = r.memory()
        && require(cg, "memory", "memory")?
    {
        if let Some(l) = mem.limit() {
            write_file(&dir.join("memory.max"), &max_or(l))?;
        }
        if let Some(res) = mem.reservation() {
            write_file(&dir.join("memory.low"), &max_or(res))?;
        }
        // OCI swap is memory+swap; v2's memory.swap.max is swap alone.
        if let Some(s) = mem.swap() {
            let v = match (s, mem.limit()) {
                (-1, _) => "max".to_owned(),
                (s, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(CgroupError::InvalidResource {
                            field: "memory.swap".into(),
                            reason: format!("{s} (memory+swap) is below memory.limit {l}"),
                        });
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            if dir.join("memory.swap.max").exists() {
                write_file(&dir.join("memory.swap.max"), &v)?;
            }
        }
        if mem.disable_oom_killer() == Some(true) {
            // v2 has no switch; memory.oom.group=0 is the closest, and
            // refusing would break specs written for v1.
            let _ = write_file(&dir.join("memory.oom.group"), "0");
        }
    }
    if let Some(cpu) = r.cpu() {
        if (cpu.shares().is_some() || cpu.quota().is_some() || cpu.period().is_some())
            && require(cg, "cpu", "cpu")?
        {
            if let Some(shares) = cpu.shares() {
                write_file(
                    &dir.join("cpu.weight"),
                    &shares_to_weight(shares).to_string(),
                )?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = cpu
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".to_owned(), |q| q.to_string());
                let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
                write_file(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(idle) = cpu.idle() {
                write_file(&dir.join("cpu.idle"), &idle.to_string())?;
            }
        }
        if (cpu.cpus().is_some() || cpu.mems().is_some()) && require(cg, "cpuset", "cpu.cpus")? {
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_file(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                write_file(&dir.join("cpuset.mems"), mems)?;
            }
        }
    }
    if let Some(pids) = r.pids()
        && require(cg, "pids", "pids.limit")?
    {
        let v = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".into()
        };
        write_file(&dir.join("pids.max"), &v)?;
    }
    if let Some(bio) = r.block_io()
        && require(cg, "io", "blockIO")?
    {
        if let Some(w) = bio.weight() {
            write_file(
                &dir.join("io.weight"),
                &format!("default {}", blkio_weight_to_io(w)),
            )?;
        }
        for d in bio.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                write_file(
                    &dir.join("io.weight"),
                    &format!("{}:{} {}", d.major(), d.minor(), blkio_weight_to_io(w)),
                )?;
            }
        }
        let throttles = [
            ("rbps", bio.throttle_read_bps_device()),
            ("wbps", bio.throttle_write_bps_device()),
            ("riops", bio.throttle_read_iops_device()),
            ("wiops", bio.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                let rate = if d.rate() == 0 {
                    "max".to_owned()
                } else {
                    d.rate().to_string()
                };
                write_file(
                    &dir.join("io.max"),
                    &format!("{}:{} {key}={rate}", d.major(), d.minor()),
                )?;
            }
        }
    }
    if let Some(limits) = r.hugepage_limits()
        && !limits.is_empty()
        && require(cg, "hugetlb", "hugepageLimits")?
    {
        for l in limits {
            let file = dir.join(format!("hugetlb.{}.max", l.page_size()));
            if !file.exists() {
                return Err(CgroupError::InvalidResource {
                    field: "hugepageLimits.pageSize".into(),
                    reason: format!("{:?} is not a huge page size of this host", l.page_size()),
                });
            }
            write_file(&file, &max_or(l.limit()))?;
        }
    }
    if let Some(devices) = r.devices()
        && owns(cg, "devices")
    {
        devices_bpf::apply(dir, devices)?;
    }
    if let Some(unified) = r.unified() {
        for (key, value) in unified {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return Err(CgroupError::InvalidResource {
                    field: format!("unified.{key}"),
                    reason: "not a cgroup v2 interface file name".into(),
                });
            }
            if cg.layout().unified.is_none() {
                return Err(CgroupError::InvalidResource {
                    field: format!("unified.{key}"),
                    reason: "this host has no cgroup v2 hierarchy".into(),
                });
            }
            write_file(&dir.join(key), value)?;
        }
    }
    Ok(())
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// cgroup.freeze, then wait for `frozen` in cgroup.events. The kernel
/// notifies a change of cgroup.events to poll(2) as POLLPRI (kernfs), so the
/// wait sleeps until the state flips instead of polling on a timer.
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    let want = u64::from(frozen);
    let state = if frozen { "frozen" } else { "thawed" };
    let events_path = dir.join("cgroup.events");
    // Opened before the write so that no notification can be missed.
    let mut events = std::fs::File::open(&events_path).map_err(io_err("open", &events_path))?;
    write_file(&dir.join("cgroup.freeze"), &want.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    loop {
        text.clear();
        events
            .seek(SeekFrom::Start(0))
            .and_then(|_| events.read_to_string(&mut text))
            .map_err(io_err("read", &events_path))?;
        if parse_flat_keyed(&text).get("frozen") == Some(&want) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_path_buf(),
                state,
            });
        }
        let mut pfd = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for an fd this function owns, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err("poll", &events_path)(err));
            }
        }
    }
}

pub(crate) fn read_stats(cg: &Cgroup, dir: &Path, stats: &mut Stats, detail: Detail) -> Result<()> {
    let full = detail == Detail::Full;
    let num = |f: &str| read_optional(&dir.join(f)).and_then(|s| parse_u64(&s));
    // Every cgroup2 directory has the pressure files, whatever it controls.
    let pressure = |f: &str| read_optional(&dir.join(f)).and_then(|t| parse_pressure(&t));
    stats.cpu.psi = pressure("cpu.pressure");
    stats.memory.psi = pressure("memory.pressure");
    stats.blkio.psi = pressure("io.pressure");
    if owns(cg, "cpu") || cg.layout().mode() == Mode::Unified {
        let s = parse_flat_keyed(&read_optional(&dir.join("cpu.stat")).unwrap_or_default());
        if let Some(usage) = s.get("usage_usec") {
            stats.cpu.usage.total = usage * 1000;
            stats.cpu.usage.user = s.get("user_usec").copied().unwrap_or(0) * 1000;
            stats.cpu.usage.kernel = s.get("system_usec").copied().unwrap_or(0) * 1000;
            stats.cpu.throttling.periods = s.get("nr_periods").copied().unwrap_or(0);
            stats.cpu.throttling.throttled_periods = s.get("nr_throttled").copied().unwrap_or(0);
            stats.cpu.throttling.throttled_time =
                s.get("throttled_usec").copied().unwrap_or(0) * 1000;
        }
    }
    if owns(cg, "memory") {
        let raw = parse_flat_keyed(&read_optional(&dir.join("memory.stat")).unwrap_or_default());
        let m = &mut stats.memory;
        m.usage.usage = num("memory.current").unwrap_or(0);
        m.usage.limit = num("memory.max").unwrap_or(u64::MAX);
        m.swap_usage.usage = num("memory.swap.current").unwrap_or(0) + m.usage.usage;
        if full {
            m.usage.max_usage = num("memory.peak").unwrap_or(0);
            m.swap_usage.limit = num("memory.swap.max").unwrap_or(u64::MAX);
        }
        m.cache = raw.get("file").copied().unwrap_or(0);
        m.rss = raw.get("anon").copied().unwrap_or(0);
        m.pgfault = raw.get("pgfault").copied().unwrap_or(0);
        m.pgmajfault = raw.get("pgmajfault").copied().unwrap_or(0);
        m.working_set = m
            .usage
            .usage
            .saturating_sub(raw.get("inactive_file").copied().unwrap_or(0));
        if full {
            let events =
                parse_flat_keyed(&read_optional(&dir.join("memory.events")).unwrap_or_default());
            m.usage.failcnt = events.get("max").copied().unwrap_or(0);
            m.oom_kill = events.get("oom_kill").copied().unwrap_or(0);
        }
        m.stats = raw;
    }
    if !full {
        return Ok(());
    }
    if owns(cg, "pids") {
        stats.pids.current = num("pids.current").unwrap_or(0);
        stats.pids.limit = num("pids.max").filter(|v| *v != u64::MAX).unwrap_or(0);
    }
    if owns(cg, "io") {
        let text = read_optional(&dir.join("io.stat")).unwrap_or_default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let Some((major, minor)) = it.next().and_then(|d| d.split_once(':')) else {
                continue;
            };
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
                continue;
            };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let Ok(value) = v.parse() else { continue };
                let (list, op) = match k {
                    "rbytes" => (&mut stats.blkio.io_service_bytes_recursive, "Read"),
                    "wbytes" => (&mut stats.blkio.io_service_bytes_recursive, "Write"),
                    "rios" => (&mut stats.blkio.io_serviced_recursive, "Read"),
                    "wios" => (&mut stats.blkio.io_serviced_recursive, "Write"),
                    _ => continue,
                };
                list.push(BlkioEntry {
                    major,
                    minor,
                    op: op.into(),
                    value,
                });
            }
        }
    }
    if owns(cg, "hugetlb") {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(size) = name
                .strip_prefix("hugetlb.")
                .and_then(|n| n.strip_suffix(".current"))
            {
                let events = parse_flat_keyed(
                    &read_optional(&dir.join(format!("hugetlb.{size}.events"))).unwrap_or_default(),
                );
                stats.hugetlb.insert(
                    size.to_owned(),
                    HugetlbStats {
                        usage: num(&name).unwrap_or(0),
                        max_usage: 0,
                        failcnt: events.get("max").copied().unwrap_or(0),
                    },
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversions_match_the_peers() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10_000);
        assert_eq!(blkio_weight_to_io(500), 4950);
    }
}
