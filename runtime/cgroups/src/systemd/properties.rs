//! OCI `LinuxResources` → the unit properties systemd manages
//! (systemd.resource-control(5)). systemd rewrites a unit's cgroup files
//! from its properties whenever it re-realises the unit (daemon-reload, a
//! property change), so every value it owns is passed as a property too;
//! the rest (swappiness, hugetlb, rt, per-device io, …) is written to the
//! cgroup files only, as the cgroupfs driver does.
//!
//! Which property names and units apply depends on where systemd drives the
//! controllers (v1 on a hybrid host, v2 on a unified one) and on its
//! version (older ones refuse properties they do not know).

use oci_spec::runtime::LinuxResources;

use super::devices::device_properties;
use super::unit::ScopeUnit;
use crate::error::{CgroupError, Result};
use crate::v2::{blkio_weight_to_io, shares_to_weight};

/// A property value, in the D-Bus type systemd declares for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `b`
    Bool(bool),
    /// `t` (u64::MAX is systemd's "infinity")
    U64(u64),
    /// `s`
    Str(String),
    /// `au` (PIDs)
    U32s(Vec<u32>),
    /// `ay` (a CPU or NUMA node bitmask)
    Bytes(Vec<u8>),
    /// `a(ss)` (DeviceAllow: path or group, access)
    Pairs(Vec<(String, String)>),
}

/// One unit property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The property name, e.g. `MemoryMax`.
    pub name: &'static str,
    /// Its value.
    pub value: Value,
}

fn prop(name: &'static str, value: Value) -> Property {
    Property { name, value }
}

/// systemd's "infinity" for limits.
pub const INFINITY: u64 = u64::MAX;

/// Where systemd drives the controllers and which version it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// systemd drives the controllers on cgroup v2 (a unified host).
    pub unified: bool,
    /// The systemd version (252 for "252.19-1~deb12u1"); 0 when unknown,
    /// which sets only the properties every version takes.
    pub version: u32,
}

/// The properties a new container scope is started with: its slice, the
/// process, delegation, accounting, and the resources.
pub fn scope_properties(
    unit: &ScopeUnit,
    pid: u32,
    r: &LinuxResources,
    target: Target,
    proc_devices: &str,
) -> Result<Vec<Property>> {
    let mut props = vec![
        prop(
            "Description",
            Value::Str(format!("carrack container {}", unit.name)),
        ),
        prop("Slice", Value::Str(unit.slice.clone())),
        prop("PIDs", Value::U32s(vec![pid])),
        // The runtime manages the cgroup below the scope (and writes the
        // files systemd does not own).
        prop("Delegate", Value::Bool(true)),
        // No ordering against shutdown.target & co: a container is stopped
        // by its runtime, not by systemd's shutdown transaction.
        prop("DefaultDependencies", Value::Bool(false)),
        prop("CPUAccounting", Value::Bool(true)),
        prop("MemoryAccounting", Value::Bool(true)),
        prop("TasksAccounting", Value::Bool(true)),
    ];
    props.push(if target.unified {
        prop("IOAccounting", Value::Bool(true))
    } else {
        prop("BlockIOAccounting", Value::Bool(true))
    });
    if target.version >= 236 {
        // A scope that ends failed (its processes OOM-killed, say) is
        // unloaded all the same: nothing is left when the runtime died
        // before it could reset it.
        props.push(prop("CollectMode", Value::Str("inactive-or-failed".into())));
    }
    props.extend(resource_properties(r, target, proc_devices)?);
    Ok(props)
}

/// The resource properties of `r` (for `update` as for create).
pub fn resource_properties(
    r: &LinuxResources,
    target: Target,
    proc_devices: &str,
) -> Result<Vec<Property>> {
    let mut props = Vec::new();
    memory(r, target, &mut props)?;
    cpu(r, target, &mut props)?;
    if let Some(pids) = r.pids() {
        let max = u64::try_from(pids.limit())
            .ok()
            .filter(|l| *l > 0)
            .unwrap_or(INFINITY);
        props.push(prop("TasksMax", Value::U64(max)));
    }
    if let Some(w) = r.block_io().as_ref().and_then(|b| b.weight()) {
        props.push(if target.unified {
            prop("IOWeight", Value::U64(blkio_weight_to_io(w)))
        } else {
            prop("BlockIOWeight", Value::U64(u64::from(w)))
        });
    }
    if let Some(rules) = r.devices() {
        props.extend(device_properties(rules, proc_devices));
    }
    if target.unified {
        unified(r, target, &mut props)?;
    }
    Ok(props)
}

fn limit(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(INFINITY)
}

fn memory(r: &LinuxResources, target: Target, props: &mut Vec<Property>) -> Result<()> {
    let Some(mem) = r.memory() else {
        return Ok(());
    };
    if let Some(l) = mem.limit() {
        let name = if target.unified {
            "MemoryMax"
        } else {
            "MemoryLimit"
        };
        props.push(prop(name, Value::U64(limit(l))));
    }
    if !target.unified {
        return Ok(());
    }
    if let Some(res) = mem.reservation() {
        props.push(prop("MemoryLow", Value::U64(limit(res))));
    }
    // OCI swap is memory+swap; MemorySwapMax is swap alone (as memory.swap.max).
    if let Some(s) = mem.swap() {
        let v = match (s, mem.limit()) {
            (s, _) if s < 0 => INFINITY,
            (s, Some(l)) if l > 0 => {
                if s < l {
                    return Err(CgroupError::InvalidResource {
                        field: "memory.swap".into(),
                        reason: format!("{s} (memory+swap) is below memory.limit {l}"),
                    });
                }
                (s - l) as u64
            }
            (s, _) => s as u64,
        };
        props.push(prop("MemorySwapMax", Value::U64(v)));
    }
    Ok(())
}

fn cpu(r: &LinuxResources, target: Target, props: &mut Vec<Property>) -> Result<()> {
    let Some(cpu) = r.cpu() else {
        return Ok(());
    };
    if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
        props.push(if target.unified {
            prop("CPUWeight", Value::U64(shares_to_weight(shares)))
        } else {
            prop("CPUShares", Value::U64(shares))
        });
    }
    quota(cpu.quota(), cpu.period(), target, props);
    if target.version >= 244 {
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            props.push(prop(
                "AllowedCPUs",
                Value::Bytes(bitmask(cpus, "cpu.cpus")?),
            ));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            props.push(prop(
                "AllowedMemoryNodes",
                Value::Bytes(bitmask(mems, "cpu.mems")?),
            ));
        }
    }
    Ok(())
}

/// CPUQuotaPerSecUSec (and CPUQuotaPeriodUSec) from a CFS quota and period.
fn quota(quota: Option<i64>, period: Option<u64>, target: Target, props: &mut Vec<Property>) {
    if quota.is_none() && period.is_none() {
        return;
    }
    let period = period.filter(|p| *p > 0);
    let per_sec = match quota.filter(|q| *q > 0) {
        None => INFINITY,
        Some(q) => quota_per_sec(q as u64, period.unwrap_or(100_000)),
    };
    props.push(prop("CPUQuotaPerSecUSec", Value::U64(per_sec)));
    if let Some(p) = period.filter(|_| target.version >= 242) {
        props.push(prop("CPUQuotaPeriodUSec", Value::U64(p)));
    }
}

/// Microseconds of CPU per second. systemd keeps the quota as a whole
/// percentage of a CPU, so it is rounded up to the next 10 ms: the scope's
/// own limit is never below what the spec asks for.
fn quota_per_sec(quota: u64, period: u64) -> u64 {
    let per_sec = quota.saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000).saturating_mul(10_000)
}

/// The `unified` entries systemd owns on v2, as their properties.
fn unified(r: &LinuxResources, target: Target, props: &mut Vec<Property>) -> Result<()> {
    let Some(unified) = r.unified() else {
        return Ok(());
    };
    let mut keys: Vec<&String> = unified.keys().collect();
    keys.sort();
    for key in keys {
        let value = unified[key].trim();
        let field = || format!("unified.{key}");
        let bytes = |v: &str| -> Result<u64> {
            if v == "max" {
                return Ok(INFINITY);
            }
            v.parse().map_err(|_| CgroupError::InvalidResource {
                field: field(),
                reason: format!("{v:?} is neither a number nor \"max\""),
            })
        };
        let name = match key.as_str() {
            "memory.max" => "MemoryMax",
            "memory.high" => "MemoryHigh",
            "memory.low" => "MemoryLow",
            "memory.min" => "MemoryMin",
            "memory.swap.max" => "MemorySwapMax",
            "pids.max" => "TasksMax",
            "cpu.weight" => "CPUWeight",
            "cpu.max" => {
                let mut it = value.split_whitespace();
                let q = it.next().unwrap_or("max");
                let period = it.next().map(&bytes).transpose()?;
                let q = if q == "max" { -1 } else { bytes(q)? as i64 };
                quota(Some(q), period, target, props);
                continue;
            }
            "cpuset.cpus" | "cpuset.mems" if target.version >= 244 => {
                let (name, mask) = if key == "cpuset.cpus" {
                    ("AllowedCPUs", bitmask(value, &field())?)
                } else {
                    ("AllowedMemoryNodes", bitmask(value, &field())?)
                };
                props.push(prop(name, Value::Bytes(mask)));
                continue;
            }
            _ => continue,
        };
        props.push(prop(name, Value::U64(bytes(value)?)));
    }
    Ok(())
}

/// A cpuset list (`0-3,8`) as systemd's bitmask: bit `n % 8` of byte
/// `n / 8` for CPU (or node) `n`.
fn bitmask(list: &str, field: &str) -> Result<Vec<u8>> {
    let bad = || CgroupError::InvalidResource {
        field: field.to_owned(),
        reason: format!("{list:?} is not a list of ranges such as \"0-3,8\""),
    };
    let mut mask: Vec<u8> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>(), b.parse::<usize>()),
            None => (part.parse(), part.parse()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            return Err(bad());
        };
        // The kernel has at most 8192 CPUs (NR_CPUS) and 1024 nodes.
        if lo > hi || hi >= 8192 {
            return Err(bad());
        }
        if mask.len() <= hi / 8 {
            mask.resize(hi / 8 + 1, 0);
        }
        for n in lo..=hi {
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };

    const V2: Target = Target {
        unified: true,
        version: 252,
    };
    const V1: Target = Target {
        unified: false,
        version: 252,
    };

    fn get(props: &[Property], name: &str) -> Option<Value> {
        props
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.clone())
    }

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(256 << 20)
                    .reservation(64 << 20)
                    .swap(512 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000)
                    .period(100_000u64)
                    .cpus("0-1,9")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn v2_properties_convert_units() {
        let p = resource_properties(&resources(), V2, "").unwrap();
        assert_eq!(get(&p, "MemoryMax"), Some(Value::U64(256 << 20)));
        assert_eq!(get(&p, "MemoryLow"), Some(Value::U64(64 << 20)));
        assert_eq!(get(&p, "MemorySwapMax"), Some(Value::U64(256 << 20)));
        // 512 shares → weight 1 + 510*9999/262142 = 20.
        assert_eq!(get(&p, "CPUWeight"), Some(Value::U64(20)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(Value::U64(500_000)));
        assert_eq!(get(&p, "CPUQuotaPeriodUSec"), Some(Value::U64(100_000)));
        assert_eq!(get(&p, "TasksMax"), Some(Value::U64(100)));
        // 500 → 1 + 490*9999/990 = 4950.
        assert_eq!(get(&p, "IOWeight"), Some(Value::U64(4950)));
        assert_eq!(get(&p, "AllowedCPUs"), Some(Value::Bytes(vec![0b11, 0b10])));
        assert_eq!(get(&p, "AllowedMemoryNodes"), Some(Value::Bytes(vec![1])));
        assert_eq!(get(&p, "CPUShares"), None);
        assert_eq!(get(&p, "MemoryLimit"), None);
    }

    #[test]
    fn v1_properties_keep_v1_names() {
        let p = resource_properties(&resources(), V1, "").unwrap();
        assert_eq!(get(&p, "MemoryLimit"), Some(Value::U64(256 << 20)));
        assert_eq!(get(&p, "CPUShares"), Some(Value::U64(512)));
        assert_eq!(get(&p, "BlockIOWeight"), Some(Value::U64(500)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(Value::U64(500_000)));
        for v2_only in [
            "MemoryMax",
            "MemoryLow",
            "MemorySwapMax",
            "CPUWeight",
            "IOWeight",
        ] {
            assert_eq!(get(&p, v2_only), None, "{v2_only}");
        }
    }

    #[test]
    fn old_systemd_gets_no_newer_properties() {
        let old = Target {
            unified: true,
            version: 241,
        };
        let p = resource_properties(&resources(), old, "").unwrap();
        for newer in ["AllowedCPUs", "AllowedMemoryNodes", "CPUQuotaPeriodUSec"] {
            assert_eq!(get(&p, newer), None, "{newer}");
        }
        assert!(get(&p, "CPUQuotaPerSecUSec").is_some());
    }

    #[test]
    fn quota_rounds_up_to_whole_percent() {
        assert_eq!(quota_per_sec(50_000, 100_000), 500_000);
        // 12.345% of a CPU → 13%.
        assert_eq!(quota_per_sec(12_345, 100_000), 130_000);
        assert_eq!(quota_per_sec(1_000, 1_000_000), 10_000);
        let mut p = Vec::new();
        quota(Some(-1), None, V2, &mut p);
        assert_eq!(p, [prop("CPUQuotaPerSecUSec", Value::U64(INFINITY))]);
    }

    #[test]
    fn unlimited_values_are_infinity() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1)
                    .swap(-1)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        let p = resource_properties(&r, V2, "").unwrap();
        assert_eq!(get(&p, "MemoryMax"), Some(Value::U64(INFINITY)));
        assert_eq!(get(&p, "MemorySwapMax"), Some(Value::U64(INFINITY)));
        assert_eq!(get(&p, "TasksMax"), Some(Value::U64(INFINITY)));
    }

    #[test]
    fn swap_below_memory_names_the_field() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(200)
                    .swap(100)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = resource_properties(&r, V2, "").unwrap_err().to_string();
        assert!(e.contains("memory.swap"), "{e}");
    }

    #[test]
    fn unified_keys_systemd_owns_become_properties() {
        let r = LinuxResourcesBuilder::default()
            .unified(
                [
                    ("memory.high", "1048576"),
                    ("cpu.max", "20000 50000"),
                    ("pids.max", "max"),
                    ("memory.oom.group", "1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        let p = resource_properties(&r, V2, "").unwrap();
        assert_eq!(get(&p, "MemoryHigh"), Some(Value::U64(1 << 20)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(Value::U64(400_000)));
        assert_eq!(get(&p, "CPUQuotaPeriodUSec"), Some(Value::U64(50_000)));
        assert_eq!(get(&p, "TasksMax"), Some(Value::U64(INFINITY)));
        assert_eq!(p.len(), 4, "memory.oom.group is a file only: {p:?}");
        let bad = LinuxResourcesBuilder::default()
            .unified(std::collections::HashMap::from([(
                "memory.high".to_owned(),
                "lots".to_owned(),
            )]))
            .build()
            .unwrap();
        let e = resource_properties(&bad, V2, "").unwrap_err().to_string();
        assert!(e.contains("unified.memory.high"), "{e}");
    }

    #[test]
    fn scope_properties_place_and_delegate() {
        let unit = ScopeUnit::parse("kubepods-pod1.slice:cri-carrack:c1", "c1").unwrap();
        let r = LinuxResources::default();
        let p = scope_properties(&unit, 42, &r, V2, "").unwrap();
        assert_eq!(
            get(&p, "Slice"),
            Some(Value::Str("kubepods-pod1.slice".into()))
        );
        assert_eq!(get(&p, "PIDs"), Some(Value::U32s(vec![42])));
        assert_eq!(get(&p, "Delegate"), Some(Value::Bool(true)));
        assert_eq!(get(&p, "IOAccounting"), Some(Value::Bool(true)));
        assert_eq!(
            get(&p, "CollectMode"),
            Some(Value::Str("inactive-or-failed".into()))
        );
        let p = scope_properties(&unit, 42, &r, V1, "").unwrap();
        assert_eq!(get(&p, "BlockIOAccounting"), Some(Value::Bool(true)));
        assert_eq!(get(&p, "IOAccounting"), None);
    }

    #[test]
    fn bitmasks() {
        assert_eq!(bitmask("0", "f").unwrap(), [1]);
        assert_eq!(bitmask("7-8", "f").unwrap(), [0x80, 0x01]);
        assert_eq!(bitmask("0-2, 4", "f").unwrap(), [0b10111]);
        for bad in ["a", "3-1", "1-", "9000"] {
            let e = bitmask(bad, "cpu.cpus").unwrap_err().to_string();
            assert!(e.contains("cpu.cpus"), "{e}");
        }
    }
}
