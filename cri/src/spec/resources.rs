//! The container's devices and cgroup limits: host device nodes the
//! request names (`linux.devices`, each with its device cgroup rule; a
//! privileged container may use every device), the CRI's resources as OCI
//! `linux.resources`, and the checks of an update's resources
//! ([`check_resources`], the same for UpdateContainerResources and
//! UpdatePodSandboxResources).

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use carrack_proto::cri;
use serde_json::{Value, json};

use crate::spec_error::{SpecError, invalid};

/// The `linux.resources` of `c`'s spec, device rules included, and its
/// `linux.devices`.
pub(super) fn resources_and_devices(
    c: &cri::ContainerConfig,
    privileged: bool,
) -> Result<(Value, Vec<Value>), SpecError> {
    let mut devices = Vec::new();
    let mut dev_rules = vec![json!({"allow": false, "access": "rwm"})];
    if privileged {
        dev_rules = vec![json!({"allow": true, "access": "rwm"})];
    }
    for (i, d) in c.devices.iter().enumerate() {
        let (dev, rule) = device(d, i)?;
        devices.push(dev);
        if !privileged {
            dev_rules.push(rule);
        }
    }
    let mut res = c
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(resources)
        .unwrap_or_else(|| json!({}));
    res["devices"] = Value::Array(dev_rules);
    Ok((res, devices))
}

/// A host device for `linux.devices`.
fn device(d: &cri::Device, i: usize) -> Result<(Value, Value), SpecError> {
    let field = format!("config.devices[{i}].host_path");
    let meta = std::fs::metadata(&d.host_path)
        .map_err(|e| invalid(&field, format!("{}: {e}", d.host_path)))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(invalid(
            &field,
            format!("{} is not a device node", d.host_path),
        ));
    };
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    let path = if d.container_path.is_empty() {
        &d.host_path
    } else {
        &d.container_path
    };
    let perms = if d.permissions.is_empty() {
        "rwm"
    } else {
        &d.permissions
    };
    Ok((
        json!({"path": path, "type": kind, "major": major, "minor": minor,
               "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid()}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": perms}),
    ))
}

/// Checks resources an update asks for, each value against what the kernel
/// takes (`field` is the request's name for `r`, e.g. `linux`): CPU shares
/// 2..=262144, a CFS period of 1 ms..1 s, a quota of -1 (none) or 1 ms
/// and more, no negative memory limit, a memory+swap limit of -1 or not
/// below the memory limit, an OOM score of -1000..=1000, CPU and NUMA node
/// lists (`0-3,6`), huge page sizes (`2MB`) and unified keys naming a file
/// of the cgroup's own directory. 0 (or empty) means "not asked" for each.
pub fn check_resources(r: &cri::LinuxContainerResources, field: &str) -> Result<(), SpecError> {
    let at = |name: &str| format!("{field}.{name}");
    if r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares) {
        return Err(invalid(
            &at("cpu_shares"),
            format!("{} is outside 2..=262144", r.cpu_shares),
        ));
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid(
            &at("cpu_period"),
            format!(
                "{} µs is outside 1000..=1000000 (1 ms to 1 s)",
                r.cpu_period
            ),
        ));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < 1_000 {
        return Err(invalid(
            &at("cpu_quota"),
            format!("{} µs: -1 (no quota) or at least 1000 (1 ms)", r.cpu_quota),
        ));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            &at("memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    let swap = r.memory_swap_limit_in_bytes;
    if swap != 0 && swap != -1 && (swap < 0 || swap < r.memory_limit_in_bytes) {
        return Err(invalid(
            &at("memory_swap_limit_in_bytes"),
            format!(
                "{swap} (memory+swap): -1 (no limit) or at least memory_limit_in_bytes ({})",
                r.memory_limit_in_bytes
            ),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            &at("oom_score_adj"),
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    for (name, list) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !list.is_empty() && !is_id_list(list) {
            return Err(invalid(
                &at(name),
                format!("{list:?} is not a list of ids and ranges such as 0-3,6"),
            ));
        }
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if !is_page_size(&h.page_size) {
            return Err(invalid(
                &at(&format!("hugepage_limits[{i}].page_size")),
                format!("{:?} is not a page size such as 2MB or 1GB", h.page_size),
            ));
        }
    }
    for (key, value) in &r.unified {
        let file = key.as_str();
        if file.is_empty()
            || file.starts_with('.')
            || !file.contains('.')
            || file.contains(['/', '\0'])
            || value.contains('\0')
        {
            return Err(invalid(
                &at(&format!("unified[{key:?}]")),
                "not a cgroup v2 interface file (controller.name) with a value",
            ));
        }
    }
    Ok(())
}

/// `0-3,6`: ids and ascending ranges, comma-separated.
fn is_id_list(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
            _ => false,
        }
    })
}

/// `64KB`, `2MB`, `1GB`: how the kernel names huge page sizes.
fn is_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["KB", "MB", "GB"].contains(&unit)
}

/// OCI `linux.resources` from CRI resources.
pub fn resources(r: &cri::LinuxContainerResources) -> Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut mem = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    if !r.hugepage_limits.is_empty() {
        out.insert(
            "hugepageLimits".into(),
            r.hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect(),
        );
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: cri::LinuxContainerResources) -> String {
        match check_resources(&r, "linux") {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_kubelet_sends_passes() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: -997,
            cpuset_cpus: "0-1,3".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(check_resources(&r, "linux"), Ok(()));
        assert_eq!(
            check_resources(&cri::LinuxContainerResources::default(), "x"),
            Ok(())
        );
        let unlimited = cri::LinuxContainerResources {
            cpu_quota: -1,
            memory_swap_limit_in_bytes: -1,
            ..Default::default()
        };
        assert_eq!(check_resources(&unlimited, "linux"), Ok(()));
    }

    #[test]
    fn each_bad_value_is_named() {
        let d = cri::LinuxContainerResources::default;
        let cases = [
            (
                cri::LinuxContainerResources {
                    cpu_shares: 1,
                    ..d()
                },
                "linux.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_period: 10,
                    ..d()
                },
                "linux.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: 500,
                    ..d()
                },
                "linux.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: -2,
                    ..d()
                },
                "linux.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: -5,
                    ..d()
                },
                "linux.memory_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 100,
                    memory_swap_limit_in_bytes: 50,
                    ..d()
                },
                "linux.memory_swap_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    oom_score_adj: 1001,
                    ..d()
                },
                "linux.oom_score_adj",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..d()
                },
                "linux.cpuset_cpus",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_mems: "a".into(),
                    ..d()
                },
                "linux.cpuset_mems",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "2M".into(),
                        limit: 1,
                    }],
                    ..d()
                },
                "linux.hugepage_limits[0].page_size",
            ),
            (
                cri::LinuxContainerResources {
                    unified: [("../cgroup.procs".to_string(), "1".to_string())].into(),
                    ..d()
                },
                "linux.unified[\"../cgroup.procs\"]",
            ),
        ];
        for (r, field) in cases {
            assert_eq!(field_of(r), field);
        }
    }
}
