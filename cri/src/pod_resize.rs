//! UpdatePodSandboxResources on the host (cri-api v0.33): the pod cgroup's
//! limits after an in-place resize of the pod, written all or nothing.
//!
//! kubelet sends the pod's overhead (its RuntimeClass') and the pod's
//! resources without it: it took the overhead off the pod cgroup's values.
//! The pod cgroup holds both, so the limits written are the two added up
//! again ([`pod_limits`]): CPU shares (which scale with millicores), CFS
//! quota and memory (and memory+swap) add; a quota of -1 (none) and a 0
//! (not set) stay as they are; the CFS period, the cpusets, the huge page
//! limits and the unified keys are the resources'. The OOM score is a
//! process's, not a cgroup's: a pod cgroup has none, and it is not written.
//!
//! [`apply`] writes the files through carrack-cgroups' undoable apply (v1,
//! v2 and hybrid hosts alike); under the systemd driver the pod's slice
//! then gets the properties systemd owns, as a container's scope does, and
//! a refusal there puts the files back. A value the kernel refuses is
//! InvalidArgument naming the request's field it comes from.

use carrack_cgroups::{Applied, Cgroup, CgroupError};
use carrack_proto::cri;

use crate::cri_error::CriError;
use crate::pod_cgroup::{cgroupfs_path, is_slice};
use crate::store::SandboxRecord;

/// The pod cgroup's limits for the pod's `overhead` and `resources`.
pub fn pod_limits(
    overhead: Option<&cri::LinuxContainerResources>,
    resources: &cri::LinuxContainerResources,
) -> cri::LinuxContainerResources {
    let none = cri::LinuxContainerResources::default();
    let o = overhead.unwrap_or(&none);
    // A limit plus the overhead's, when both are limits.
    let plus = |limit: i64, extra: i64| {
        if limit > 0 {
            limit.saturating_add(extra.max(0))
        } else {
            limit
        }
    };
    let mut limits = resources.clone();
    limits.cpu_shares = plus(resources.cpu_shares, o.cpu_shares).min(262_144);
    limits.cpu_quota = plus(resources.cpu_quota, o.cpu_quota);
    limits.memory_limit_in_bytes = plus(resources.memory_limit_in_bytes, o.memory_limit_in_bytes);
    limits.memory_swap_limit_in_bytes = plus(
        resources.memory_swap_limit_in_bytes,
        o.memory_limit_in_bytes,
    );
    if limits.cpu_period == 0 {
        limits.cpu_period = o.cpu_period;
    }
    limits.oom_score_adj = 0;
    limits
}

/// Writes `limits` to the pod cgroup of `rec` (and its slice's properties
/// under the systemd driver); returns what undoes the files. Blocking: a
/// caller on the event loop runs it on a blocking thread.
pub fn apply(
    rec: &SandboxRecord,
    limits: &cri::LinuxContainerResources,
) -> Result<Applied, CriError> {
    let oci: oci_spec::runtime::LinuxResources =
        serde_json::from_value(crate::spec::resources(limits)).map_err(CriError::internal)?;
    let cg = Cgroup::open(&cgroupfs_path(&rec.cgroup_path), &rec.id).map_err(CriError::internal)?;
    if !cg.paths().iter().any(|p| p.is_dir()) {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {}: its cgroup {} does not exist",
            rec.id, rec.cgroup_path
        )));
    }
    let applied = cg.apply_undoable(&oci).map_err(refusal)?;
    if is_slice(&rec.cgroup_path) {
        let unit = |e: CgroupError| CriError::Unknown(e.to_string());
        let set = carrack_cgroups::systemd::Bus::connect()
            .map_err(|e| CriError::Unavailable(format!("connecting to systemd: {e}")))
            .and_then(|mut bus| {
                carrack_cgroups::systemd::update_unit(&mut bus, &rec.cgroup_path, &oci, cg.layout())
                    .map_err(unit)
            });
        if let Err(e) = set {
            let _ = applied.undo();
            return Err(e);
        }
    }
    Ok(applied)
}

/// A cgroup's refusal as the CRI answers it: a value the kernel would not
/// take names the request's field.
fn refusal(e: CgroupError) -> CriError {
    match &e {
        CgroupError::Write { path, .. } => {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            CriError::invalid(&format!("resources.{}", field_of_file(&file)), &e)
        }
        CgroupError::InvalidResource { .. } | CgroupError::ControllerMissing(_) => {
            CriError::invalid("resources", &e)
        }
        _ => CriError::internal(e),
    }
}

/// The field of LinuxContainerResources a cgroup file is written from.
fn field_of_file(file: &str) -> String {
    match file {
        "cpu.shares" | "cpu.weight" => "cpu_shares".into(),
        "cpu.cfs_quota_us" | "cpu.max" => "cpu_quota".into(),
        "cpu.cfs_period_us" => "cpu_period".into(),
        "cpuset.cpus" => "cpuset_cpus".into(),
        "cpuset.mems" => "cpuset_mems".into(),
        "memory.limit_in_bytes" | "memory.max" => "memory_limit_in_bytes".into(),
        "memory.memsw.limit_in_bytes" | "memory.swap.max" => "memory_swap_limit_in_bytes".into(),
        f if f.starts_with("hugetlb.") => "hugepage_limits".into(),
        f => format!("unified[{f:?}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(shares: i64, quota: i64, memory: i64) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: quota,
            cpu_shares: shares,
            memory_limit_in_bytes: memory,
            oom_score_adj: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn the_overhead_is_added_back() {
        // kubelet: a pod of 1 CPU and 128 MiB, 250m and 64 MiB of overhead.
        let pod = pod_limits(
            Some(&res(256, 25_000, 64 << 20)),
            &res(1024, 100_000, 128 << 20),
        );
        assert_eq!(pod.cpu_shares, 1280);
        assert_eq!(pod.cpu_quota, 125_000);
        assert_eq!(pod.cpu_period, 100_000);
        assert_eq!(pod.memory_limit_in_bytes, 192 << 20);
        assert_eq!(pod.oom_score_adj, 0, "a cgroup has no OOM score");
        // No overhead: the resources as they are.
        let alone = pod_limits(None, &res(1024, 100_000, 128 << 20));
        assert_eq!(
            (
                alone.cpu_shares,
                alone.cpu_quota,
                alone.memory_limit_in_bytes
            ),
            (1024, 100_000, 128 << 20)
        );
    }

    #[test]
    fn no_limit_stays_no_limit() {
        let pod = pod_limits(Some(&res(256, 25_000, 64 << 20)), &res(2, -1, 0));
        assert_eq!(pod.cpu_quota, -1, "no quota");
        assert_eq!(pod.memory_limit_in_bytes, 0, "no memory limit");
        assert_eq!(pod.cpu_shares, 258);
        let swap = cri::LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 150,
            ..Default::default()
        };
        let overhead = cri::LinuxContainerResources {
            memory_limit_in_bytes: 10,
            ..Default::default()
        };
        let pod = pod_limits(Some(&overhead), &swap);
        assert_eq!(
            (pod.memory_limit_in_bytes, pod.memory_swap_limit_in_bytes),
            (110, 160)
        );
    }

    #[test]
    fn refused_files_name_their_field() {
        let refused = |file: &str| {
            refusal(CgroupError::Write {
                path: format!("/sys/fs/cgroup/x/pod/{file}").into(),
                value: "1".into(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        };
        for (file, field) in [
            ("cpuset.cpus", "resources.cpuset_cpus"),
            ("memory.max", "resources.memory_limit_in_bytes"),
            ("cpu.cfs_quota_us", "resources.cpu_quota"),
            ("hugetlb.2MB.limit_in_bytes", "resources.hugepage_limits"),
            ("memory.high", "resources.unified[\"memory.high\"]"),
        ] {
            let e = refused(file);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{file}: {e}");
        }
    }
}
