//! The pod's cgroup under carrackd's cgroup driver: where RunPodSandbox
//! puts it, from kubelet's `linux.cgroup_parent` (the pod cgroup kubelet
//! made for the pod) or, when kubelet names none, from the config's
//! `cgroup_parent` and the sandbox id; and the cgroupsPath of what goes in
//! it (containers, the pod infra process).
//!
//! - **cgroupfs**: the pod cgroup is a cgroupfs path from the hierarchy
//!   root: `/kubepods/besteffort/pod<uid>` as given, a relative one
//!   (`kubepods/pod<uid>`) from the root too, as containerd's cgroupfs
//!   driver takes it. It is never resolved below carrackd's own cgroup,
//!   which is where the cgroups crate would put a relative path: under
//!   systemd that is `carrackd.service`, a cgroup with processes, where
//!   cgroup v2 refuses to enable controllers for children (EBUSY). A member
//!   is `<pod cgroup>/<id>`.
//! - **systemd**: the pod cgroup is a slice, kubelet's
//!   `kubepods-besteffort-pod<uid>.slice` (or `<config parent stem>-<sandbox
//!   id>.slice`); a member is the scope `<slice>:cri-carrack:<id>`, which
//!   systemd makes, creating the slice from its name when it is missing.
//!
//! A parent of the other driver's form (a slice name given to the cgroupfs
//! driver, a cgroupfs path to the systemd driver) is refused, as CRI-O
//! does: kubelet and the runtime disagree on the driver, and guessing would
//! put the pod where kubelet does not look.
//!
//! The record keeps the pod cgroup as made here: an absolute path under
//! cgroupfs, a slice name under systemd, so each names its driver.

use serde::{Deserialize, Serialize};

/// The host's cgroup layout, found once (None when it cannot be): finding
/// it parses `/proc/self/mountinfo`, which on a full node lists every
/// pod's mounts (some 1500 lines at 250 pods, read again for each pod
/// started, stopped and sampled), and it does not change while carrackd
/// runs.
pub fn host_hierarchy() -> Option<&'static carrack_cgroups::Hierarchy> {
    static HIERARCHY: std::sync::OnceLock<Option<carrack_cgroups::Hierarchy>> =
        std::sync::OnceLock::new();
    HIERARCHY
        .get_or_init(|| carrack_cgroups::hierarchy().ok())
        .as_ref()
}

/// [`carrack_cgroups::Cgroup::open`] in the layout [`host_hierarchy`]
/// found.
pub fn open_cgroup(
    cgroups_path: &str,
    id: &str,
) -> Result<carrack_cgroups::Cgroup, carrack_cgroups::CgroupError> {
    match host_hierarchy() {
        Some(h) => carrack_cgroups::Cgroup::open_in(h.clone(), cgroups_path, id),
        None => carrack_cgroups::Cgroup::open(cgroups_path, id),
    }
}

/// The scope prefix of carrackd's containers (`cri-carrack-<id>.scope`).
pub const SCOPE_PREFIX: &str = "cri-carrack";

/// The `cgroup_driver` config key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverSetting {
    /// systemd when systemd is PID 1 (/run/systemd/system exists), as
    /// CRI-O decides; cgroupfs otherwise.
    #[default]
    Auto,
    /// The systemd cgroup driver.
    Systemd,
    /// The cgroupfs driver.
    Cgroupfs,
}

/// The cgroup driver in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// Pods are slices, containers transient scopes of systemd.
    Systemd,
    /// Pods and containers are cgroupfs directories carrackd makes.
    Cgroupfs,
}

impl DriverSetting {
    /// The driver this setting means on this machine.
    pub fn resolve(self) -> CgroupDriver {
        match self {
            DriverSetting::Systemd => CgroupDriver::Systemd,
            DriverSetting::Cgroupfs => CgroupDriver::Cgroupfs,
            DriverSetting::Auto if systemd_booted() => CgroupDriver::Systemd,
            DriverSetting::Auto => CgroupDriver::Cgroupfs,
        }
    }
}

/// True when systemd is PID 1 (what sd_booted(3) checks).
pub fn systemd_booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

impl CgroupDriver {
    /// The driver's name, as kubelet's `cgroupDriver` spells it.
    pub fn name(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        }
    }

    /// The parent of pods that name none, when the config gives none.
    pub fn default_parent(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "carrack.slice",
            CgroupDriver::Cgroupfs => "/carrack",
        }
    }

    /// Checks that `parent` is of this driver's form; the error says why.
    /// Under systemd, the cgroup path of a slice (`/test.slice`, as critest
    /// gives, or `/kubepods.slice/kubepods-pod1.slice`) stands for the
    /// slice, as containerd and CRI-O take it.
    pub fn check_parent(self, parent: &str) -> Result<(), String> {
        let parent = match self {
            CgroupDriver::Systemd => slice_of_path(parent)?.unwrap_or(parent),
            CgroupDriver::Cgroupfs => parent,
        };
        match (self, is_slice_name(parent)) {
            (CgroupDriver::Cgroupfs, true) => Err(format!(
                "{parent:?} is a systemd slice, but carrackd uses the cgroupfs driver \
                 (cgroup_driver = \"cgroupfs\"): give a cgroupfs path such as /kubepods/pod<uid>, \
                 or run kubelet and carrackd with the systemd driver"
            )),
            (CgroupDriver::Systemd, false) => Err(format!(
                "{parent:?} is not a systemd slice, but carrackd uses the systemd driver \
                 (cgroup_driver = \"systemd\"): give a slice such as kubepods-besteffort-pod<uid>.slice, \
                 or run kubelet and carrackd with the cgroupfs driver"
            )),
            (CgroupDriver::Systemd, true) => carrack_cgroups::systemd::expand_slice(parent)
                .map(drop)
                .map_err(|reason| format!("{parent:?}: {reason}")),
            (CgroupDriver::Cgroupfs, false) => Ok(()),
        }
    }
}

/// A slice unit name (`kubepods-pod1.slice`), not a cgroupfs path.
fn is_slice_name(path: &str) -> bool {
    !path.contains('/') && path.ends_with(".slice")
}

/// The slice whose cgroup path `path` is (`/a.slice/a-b.slice` is
/// `a-b.slice`); None for what does not end in a slice's directory, an
/// error (with the reason) for a slice directory where systemd would not
/// put it (`/kubepods/pod1.slice`).
fn slice_of_path(path: &str) -> Result<Option<&str>, String> {
    let Some((_, base)) = path.rsplit_once('/') else {
        return Ok(None);
    };
    if !is_slice_name(base) || base == "-.slice" {
        return Ok(None);
    }
    let expected = carrack_cgroups::systemd::expand_slice(base)
        .map_err(|reason| format!("{path:?}: {base}: {reason}"))?;
    let given = format!("/{}", path.trim_start_matches('/'));
    if given != expected {
        return Err(format!(
            "{path:?} is not where systemd puts the slice {base} ({expected}): give the slice \
             name, such as kubepods-besteffort-pod<uid>.slice, or its path"
        ));
    }
    Ok(Some(base))
}

/// The pod cgroup: kubelet's `cgroup_parent` when it gives one, else one of
/// the pod's own under `default_parent` (the config's `cgroup_parent`, or
/// the driver's default when that is empty). A parent of the other driver's
/// form is an error (the text says why; the caller names the field).
pub fn pod_cgroup_path(
    driver: CgroupDriver,
    cgroup_parent: &str,
    default_parent: &str,
    sandbox_id: &str,
) -> Result<String, String> {
    if !cgroup_parent.is_empty() {
        driver.check_parent(cgroup_parent)?;
        return Ok(match driver {
            CgroupDriver::Systemd => slice_of_path(cgroup_parent)?
                .unwrap_or(cgroup_parent)
                .to_owned(),
            CgroupDriver::Cgroupfs => from_root(cgroup_parent),
        });
    }
    let parent = if default_parent.is_empty() {
        driver.default_parent()
    } else {
        default_parent
    };
    driver.check_parent(parent)?;
    Ok(match driver {
        CgroupDriver::Systemd => match slice_of_path(parent)?
            .unwrap_or(parent)
            .strip_suffix(".slice")
        {
            Some("-") | None => format!("{sandbox_id}.slice"),
            Some(stem) => format!("{stem}-{sandbox_id}.slice"),
        },
        CgroupDriver::Cgroupfs => {
            format!("{}/{sandbox_id}", from_root(parent).trim_end_matches('/'))
        }
    })
}

/// True when a recorded pod cgroup is a systemd slice.
pub fn is_slice(pod_cgroup: &str) -> bool {
    !pod_cgroup.is_empty() && !pod_cgroup.starts_with('/')
}

/// The cgroupsPath of the member `id` (a container, the infra process) of
/// the pod cgroup `pod_cgroup`: `<slice>:cri-carrack:<id>` or `<path>/<id>`.
pub fn member_cgroups_path(pod_cgroup: &str, id: &str) -> String {
    if is_slice(pod_cgroup) {
        format!("{pod_cgroup}:{SCOPE_PREFIX}:{id}")
    } else {
        format!("{}/{id}", pod_cgroup.trim_end_matches('/'))
    }
}

/// The pod cgroup as a cgroupfs path from the hierarchy root (a slice's
/// directory: `/kubepods.slice/kubepods-pod1.slice`), to read or remove it.
pub fn cgroupfs_path(pod_cgroup: &str) -> String {
    if is_slice(pod_cgroup) {
        carrack_cgroups::systemd::expand_slice(pod_cgroup).unwrap_or_else(|_| from_root(pod_cgroup))
    } else {
        pod_cgroup.to_owned()
    }
}

/// Removes the pod cgroup of `rec`, whose members are gone: a cgroupfs
/// directory is removed; a slice carrackd named (the pod gave no parent) is
/// stopped, so that systemd forgets it. kubelet's slice is kubelet's: it
/// made it (with the pod's limits) and removes it after the pod.
pub async fn remove(rec: &crate::store::SandboxRecord) -> Result<(), carrack_cgroups::CgroupError> {
    if rec.cgroup_path.is_empty() {
        return Ok(());
    }
    if !is_slice(&rec.cgroup_path) {
        return open_cgroup(&rec.cgroup_path, &rec.id)?.delete();
    }
    let kubelets = rec
        .config
        .linux
        .as_ref()
        .is_some_and(|l| !l.cgroup_parent.is_empty());
    if kubelets {
        return Ok(());
    }
    let slice = rec.cgroup_path.clone();
    // The D-Bus client runs a runtime of its own: not on a tokio worker.
    tokio::task::spawn_blocking(move || carrack_cgroups::systemd::connect_and_stop(&slice))
        .await
        .unwrap_or_else(|e| {
            Err(carrack_cgroups::CgroupError::Systemd {
                unit: rec.cgroup_path.clone(),
                op: "stopping",
                reason: e.to_string(),
            })
        })
}

/// `path` anchored at the hierarchy root.
fn from_root(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::{Cgroupfs, Systemd};

    #[test]
    fn kubelets_cgroupfs_parent_is_the_pod_cgroup() {
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "/kubepods/besteffort/pod1234", "/carrack", "abc").unwrap(),
            "/kubepods/besteffort/pod1234"
        );
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "kubepods/pod1234", "/carrack", "abc").unwrap(),
            "/kubepods/pod1234"
        );
    }

    #[test]
    fn kubelets_slice_is_the_pod_cgroup_under_systemd() {
        let pod = pod_cgroup_path(Systemd, "kubepods-besteffort-pod12.slice", "", "abc").unwrap();
        assert_eq!(pod, "kubepods-besteffort-pod12.slice");
        assert!(is_slice(&pod));
        assert_eq!(
            cgroupfs_path(&pod),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
        );
        assert_eq!(
            member_cgroups_path(&pod, "c1"),
            "kubepods-besteffort-pod12.slice:cri-carrack:c1"
        );
    }

    #[test]
    fn a_slices_cgroup_path_is_the_slice_under_systemd() {
        // critest's parent on a systemd-driver runtime.
        assert_eq!(
            pod_cgroup_path(Systemd, "/test.slice", "", "a").unwrap(),
            "test.slice"
        );
        assert_eq!(
            pod_cgroup_path(
                Systemd,
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice",
                "",
                "a"
            )
            .unwrap(),
            "kubepods-besteffort-pod1.slice"
        );
        // The config's default parent, given as a path, too.
        assert_eq!(
            pod_cgroup_path(Systemd, "", "/pods.slice", "a").unwrap(),
            "pods-a.slice"
        );
        let e = pod_cgroup_path(Systemd, "/kube--pods.slice", "", "a").unwrap_err();
        assert!(e.contains("dashes"), "{e}");
    }

    #[test]
    fn a_parent_of_the_other_drivers_form_is_refused() {
        let e = pod_cgroup_path(Cgroupfs, "kubepods-besteffort-pod1.slice", "", "abc").unwrap_err();
        assert!(e.contains("cgroupfs driver"), "{e}");
        for bad in ["/kubepods/pod1", "kubepods"] {
            let e = pod_cgroup_path(Systemd, bad, "", "abc").unwrap_err();
            assert!(e.contains("systemd driver"), "{bad}: {e}");
        }
        // A slice's directory where systemd would not put it.
        for bad in ["kubepods/pod1.slice", "/kubepods.slice/pod1.slice"] {
            let e = pod_cgroup_path(Systemd, bad, "", "abc").unwrap_err();
            assert!(e.contains("not where systemd puts the slice"), "{bad}: {e}");
        }
        let e = pod_cgroup_path(Systemd, "kube--pods.slice", "", "abc").unwrap_err();
        assert!(e.contains("dashes"), "{e}");
        // A cgroupfs path to systemd's own slice directories is cgroupfs.
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "/kubepods.slice/kubepods-pod1.slice", "", "a").unwrap(),
            "/kubepods.slice/kubepods-pod1.slice"
        );
    }

    #[test]
    fn no_parent_means_one_of_the_pods_own_under_the_default() {
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "", "/carrack/", "abc").unwrap(),
            "/carrack/abc"
        );
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "", "carrack", "abc").unwrap(),
            "/carrack/abc"
        );
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "", "", "abc").unwrap(),
            "/carrack/abc"
        );
        assert_eq!(
            pod_cgroup_path(Systemd, "", "", "abc").unwrap(),
            "carrack-abc.slice"
        );
        assert_eq!(
            pod_cgroup_path(Systemd, "", "pods.slice", "abc").unwrap(),
            "pods-abc.slice"
        );
        assert_eq!(
            pod_cgroup_path(Systemd, "", "-.slice", "abc").unwrap(),
            "abc.slice"
        );
    }

    #[test]
    fn cgroupfs_members_and_paths() {
        assert!(!is_slice("/kubepods/pod1"));
        assert_eq!(
            member_cgroups_path("/kubepods/pod1/", "c1"),
            "/kubepods/pod1/c1"
        );
        assert_eq!(cgroupfs_path("/kubepods/pod1"), "/kubepods/pod1");
    }

    #[test]
    fn the_setting_resolves() {
        assert_eq!(DriverSetting::Systemd.resolve(), Systemd);
        assert_eq!(DriverSetting::Cgroupfs.resolve(), Cgroupfs);
        let auto = DriverSetting::Auto.resolve();
        assert_eq!(auto == Systemd, systemd_booted());
    }
}
