//! The container's devices and cgroup limits: host device nodes the
//! request names (`linux.devices`, each with its device cgroup rule; a
//! privileged container may use every device), and the CRI's resources as
//! OCI `linux.resources`.

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
