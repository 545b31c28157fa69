//! The container's view of cgroups: what the spec's `cgroup` (or
//! `cgroup2`) mount becomes inside the container.
//!
//! A container sees its own cgroup and nothing above or beside it: never
//! another pod's limits, the node's services, or the root.
//!
//! - cgroup v1 (and hybrid): a tmpfs at the destination holding one
//!   directory per host hierarchy, named as the host names its mount point
//!   (`memory`, `cpu,cpuacct` with `cpu` and `cpuacct` symlinks beside it,
//!   `systemd` for `name=systemd`). Each is the container's own cgroup of
//!   that hierarchy: a bind of its directory, or, when the container has a
//!   cgroup namespace, a fresh `cgroup` mount whose root the kernel sets to
//!   the namespace's root (the container's cgroup). The cgroup2 mount of a
//!   hybrid host is not shown, as runc does not show it. The tmpfs is made
//!   read-only once populated when the mount asks `ro` (runc 1.1 leaves it
//!   writable; read-only, nothing can be mounted or created over the
//!   controller directories).
//! - cgroup v2: with a cgroup namespace a fresh `cgroup2` mount (rooted at
//!   the container's cgroup by the kernel); without one, a bind of the
//!   container's own cgroup directory. runc mounts cgroup2 fresh there,
//!   which shows the whole hierarchy (read-only); Carrack does not show a
//!   container the root.
//!
//! Every controller mount gets the spec mount's flags: read-only unless it
//! asks `rw` (a privileged container), nosuid, nodev, noexec as asked.
//! The plan ([`plan`]) is computed from the host's layout and the init's
//! own cgroups, and is unit-tested; [`mount_cgroups`] carries it out.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use carrack_cgroups::{Hierarchy, Mode, cgroup_dir};
use nix::mount::{MsFlags, mount};

use crate::error::{Result, RuntimeError, sys};
use crate::sys::{fd_path, mkdir_all_in_root};

/// Where one controller directory of the container's view comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A bind of this host directory (the container's own cgroup).
    Bind(PathBuf),
    /// A fresh mount of this filesystem type with this data (the
    /// controllers of a v1 hierarchy); the cgroup namespace sets its root.
    Fresh {
        /// `cgroup` or `cgroup2`.
        fstype: &'static str,
        /// Mount data: `memory`, `cpu,cpuacct`, `name=systemd`, or empty.
        data: String,
    },
}

/// What to mount at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// cgroup v1: a tmpfs, and in it each hierarchy under `name`, with
    /// symlinks (link name → `name`) for co-mounted controllers.
    V1(Vec<V1Entry>),
    /// cgroup v2: one mount at the destination itself.
    V2(Source),
}

/// One v1 hierarchy in the container's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Entry {
    /// The directory name under the destination (the host mount point's).
    pub name: String,
    /// What is mounted there.
    pub source: Source,
    /// Controller names that become symlinks to `name`.
    pub links: Vec<String>,
}

/// The container's view for a host `layout`, given the init's own cgroup
/// paths (`own`, from /proc/self/cgroup: controller → path, "" for the
/// unified one) and whether it has a cgroup namespace.
pub fn plan(layout: &Hierarchy, own: &BTreeMap<String, String>, cgroupns: bool) -> Result<Plan> {
    if layout.mode() == Mode::Unified {
        let source = if cgroupns {
            Source::Fresh {
                fstype: "cgroup2",
                data: String::new(),
            }
        } else {
            let mount = layout.unified.as_deref().expect("a unified layout has it");
            Source::Bind(cgroup_dir(mount, "/", own_path(own, "")?))
        };
        return Ok(Plan::V2(source));
    }
    let mut entries: Vec<V1Entry> = Vec::new();
    for mount in layout.v1.values() {
        let name = mount
            .mount_point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| mount.controllers.join(","));
        if entries.iter().any(|e| e.name == name) {
            continue;
        }
        let source = if cgroupns {
            Source::Fresh {
                fstype: "cgroup",
                data: mount.controllers.join(","),
            }
        } else {
            let path = own_path(own, &mount.controllers[0])?;
            Source::Bind(cgroup_dir(&mount.mount_point, &mount.root, path))
        };
        let links = mount
            .controllers
            .iter()
            .filter(|c| !c.starts_with("name=") && **c != name)
            .cloned()
            .collect();
        entries.push(V1Entry {
            name,
            source,
            links,
        });
    }
    Ok(Plan::V1(entries))
}

fn own_path<'a>(own: &'a BTreeMap<String, String>, controller: &str) -> Result<&'a str> {
    own.get(controller).map(String::as_str).ok_or_else(|| {
        RuntimeError::Init(format!(
            "the container's {} cgroup is not in /proc/self/cgroup",
            if controller.is_empty() {
                "cgroup2"
            } else {
                controller
            }
        ))
    })
}

/// Carries out [`plan`] at `dest` inside the rootfs (`root_fd`), with the
/// spec mount's `flags` (`MS_RDONLY`, `MS_NOSUID`, … ; bind and remount
/// bits are ignored) and `source` (the name fresh mounts carry, as runc's),
/// in the host's `layout` (read here when not given). Runs in the init,
/// which is already in its cgroups.
pub fn mount_cgroups(
    root_fd: &OwnedFd,
    dest: &Path,
    source: &Path,
    flags: MsFlags,
    cgroupns: bool,
    layout: Option<&Hierarchy>,
) -> Result<()> {
    let read;
    let layout = match layout {
        Some(l) => l,
        None => {
            read = carrack_cgroups::hierarchy().map_err(|e| RuntimeError::Init(e.to_string()))?;
            &read
        }
    };
    let own = carrack_cgroups::own_cgroups().map_err(|e| RuntimeError::Init(e.to_string()))?;
    let flags = flags
        & (MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RELATIME
            | MsFlags::MS_NOATIME
            | MsFlags::MS_STRICTATIME);
    let what = |s: &str| format!("mounts {}: {s}", dest.display());
    let target = |p: &Path| {
        mkdir_all_in_root(root_fd.as_raw_fd(), p, false)
            .map_err(sys(what(&format!("creating {}", p.display()))))
    };
    match plan(layout, &own, cgroupns)? {
        Plan::V2(plan) => mount_source(&plan, source, &target, dest, flags, &what("cgroup2")),
        Plan::V1(entries) => {
            let t = target(dest)?;
            mount(
                Some("tmpfs"),
                fd_path(&t).as_str(),
                Some("tmpfs"),
                flags - MsFlags::MS_RDONLY,
                Some("mode=755"),
            )
            .map_err(sys(what("tmpfs")))?;
            // Opened after the tmpfs is mounted: this fd names its root.
            let dir = target(dest)?;
            for e in &entries {
                let sub = dest.join(&e.name);
                mount_source(&e.source, source, &target, &sub, flags, &what(&e.name))?;
                for link in &e.links {
                    match nix::unistd::symlinkat(e.name.as_str(), &dir, link.as_str()) {
                        Ok(()) | Err(nix::Error::EEXIST) => {}
                        Err(err) => return Err(sys(what(&format!("symlink {link}")))(err)),
                    }
                }
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                mount(
                    None::<&str>,
                    fd_path(&dir).as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | flags,
                    Some("mode=755"),
                )
                .map_err(sys(what("remounting the tmpfs read-only")))?;
            }
            Ok(())
        }
    }
}

/// Mounts `source` at `path`; `target` opens (creating it) the mount point
/// inside the rootfs. A fresh mount's source name is `name`, or for a named
/// v1 hierarchy its name (`systemd`), as runc's.
fn mount_source(
    source: &Source,
    name: &Path,
    target: &dyn Fn(&Path) -> Result<OwnedFd>,
    path: &Path,
    flags: MsFlags,
    what: &str,
) -> Result<()> {
    let fd = target(path)?;
    let tpath = fd_path(&fd);
    match source {
        Source::Fresh { fstype, data } => mount(
            Some(data.strip_prefix("name=").map(Path::new).unwrap_or(name)),
            tpath.as_str(),
            Some(*fstype),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(sys(format!("{what}: mount -t {fstype} -o {data}"))),
        Source::Bind(dir) => {
            mount(
                Some(dir.as_path()),
                tpath.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(format!("{what}: bind of {}", dir.display())))?;
            // Re-opened: the first fd names the directory under the bind.
            let bound = target(path)?;
            mount(
                None::<&str>,
                fd_path(&bound).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None::<&str>,
            )
            .map_err(sys(format!("{what}: remount of {}", dir.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrack_cgroups::parse_proc_cgroup;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:33 /nested /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    const OWN: &str = "\
5:cpu,cpuacct:/kubepods/pod1/c1
4:memory:/kubepods/pod1/c1
3:pids:/nested/kubepods/pod1/c1
1:name=systemd:/kubepods/pod1/c1
0::/kubepods/pod1/c1
";

    fn hybrid() -> Hierarchy {
        Hierarchy::from_mountinfo(HYBRID, |_| Some("hugetlb".into())).unwrap()
    }

    #[test]
    fn v1_binds_the_containers_own_cgroup_of_each_hierarchy() {
        let Plan::V1(entries) = plan(&hybrid(), &parse_proc_cgroup(OWN), false).unwrap() else {
            panic!("a hybrid host gets the v1 view");
        };
        let find = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(
            find("memory").source,
            Source::Bind("/sys/fs/cgroup/memory/kubepods/pod1/c1".into())
        );
        // The mount root of pids is /nested: the path is taken below it.
        assert_eq!(
            find("pids").source,
            Source::Bind("/sys/fs/cgroup/pids/kubepods/pod1/c1".into())
        );
        assert_eq!(find("cpu,cpuacct").links, ["cpu", "cpuacct"]);
        assert!(find("systemd").links.is_empty());
        assert_eq!(
            entries.len(),
            4,
            "one entry per hierarchy, no unified: {entries:?}"
        );
    }

    #[test]
    fn v1_with_a_cgroup_namespace_mounts_each_hierarchy_fresh() {
        let Plan::V1(entries) = plan(&hybrid(), &parse_proc_cgroup(OWN), true).unwrap() else {
            panic!("v1 view expected");
        };
        let sources: Vec<_> = entries.iter().map(|e| e.source.clone()).collect();
        assert!(sources.contains(&Source::Fresh {
            fstype: "cgroup",
            data: "cpu,cpuacct".into()
        }));
        assert!(sources.contains(&Source::Fresh {
            fstype: "cgroup",
            data: "name=systemd".into()
        }));
    }

    #[test]
    fn v2_shows_the_own_cgroup_never_the_root() {
        let layout = Hierarchy::from_mountinfo(
            "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
            |_| Some("cpu memory pids".into()),
        )
        .unwrap();
        let own = parse_proc_cgroup("0::/kubepods.slice/pod1.slice/cri-carrack-c1.scope\n");
        assert_eq!(
            plan(&layout, &own, false).unwrap(),
            Plan::V2(Source::Bind(
                "/sys/fs/cgroup/kubepods.slice/pod1.slice/cri-carrack-c1.scope".into()
            ))
        );
        assert_eq!(
            plan(&layout, &own, true).unwrap(),
            Plan::V2(Source::Fresh {
                fstype: "cgroup2",
                data: String::new()
            })
        );
        let err = plan(&layout, &BTreeMap::new(), false).unwrap_err();
        assert!(err.to_string().contains("cgroup2"), "{err}");
    }
}
