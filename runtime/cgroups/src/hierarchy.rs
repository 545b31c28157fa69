//! Which cgroup hierarchies this host has and where each controller lives.
//!
//! Three layouts exist in the field: pure v1 (one mount per controller), pure
//! v2 (one `cgroup2` mount at /sys/fs/cgroup) and hybrid (v1 controllers plus
//! an extra `cgroup2` mount, usually /sys/fs/cgroup/unified, which owns the
//! controllers no v1 hierarchy has bound, e.g. hugetlb on some hosts). The
//! layout is read from `/proc/self/mountinfo`; a controller belongs to v1
//! when a v1 mount carries it, otherwise to v2 when the unified root lists it
//! in `cgroup.controllers`.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{CgroupError, Result};

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 controller name (`memory`, `cpu`, `name=systemd`, …) → its mount.
    pub v1: BTreeMap<String, V1Mount>,
    /// The cgroup2 mount point, if any.
    pub unified: Option<PathBuf>,
    /// Controllers the unified hierarchy offers at its root (`cgroup.controllers`).
    pub unified_controllers: Vec<String>,
}

/// One v1 hierarchy mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    /// Where it is mounted, e.g. /sys/fs/cgroup/memory.
    pub mount_point: PathBuf,
    /// The cgroup path of the mount's root (mountinfo field 4), "/" normally.
    pub root: String,
    /// Every controller of this hierarchy (co-mounted ones like cpu,cpuacct).
    pub controllers: Vec<String>,
}

/// The layout kind, as runtimes report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only v1 hierarchies.
    Legacy,
    /// v1 hierarchies and a cgroup2 mount beside them.
    Hybrid,
    /// Only cgroup2.
    Unified,
}

/// The v1 controllers a cgroup is created in: those this crate drives, and
/// those it only places processes in (net_cls, net_prio, perf_event, rdma,
/// misc), as runc joins every hierarchy, so that a container's view of its
/// cgroups lists each hierarchy of the host.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

impl Hierarchy {
    /// The layout kind.
    pub fn mode(&self) -> Mode {
        match (self.v1.is_empty(), self.unified.is_some()) {
            (true, _) => Mode::Unified,
            (false, true) => Mode::Hybrid,
            (false, false) => Mode::Legacy,
        }
    }

    /// The v1 mount of a controller, if a v1 hierarchy carries it.
    pub fn v1_mount(&self, controller: &str) -> Option<&V1Mount> {
        self.v1.get(controller)
    }

    /// True when `controller` is driven through the unified hierarchy.
    pub fn on_unified(&self, controller: &str) -> bool {
        !self.v1.contains_key(controller)
            && self.unified.is_some()
            && self.unified_controllers.iter().any(|c| c == controller)
    }

    /// Parses a mountinfo text; `read_controllers` reads a unified root's
    /// `cgroup.controllers` (injected so that parsing is testable).
    pub fn from_mountinfo(
        mountinfo: &str,
        read_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<Hierarchy> {
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let post: Vec<&str> = post.split_whitespace().collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mount_point) = (pre[3], unescape_mountinfo(pre[4]));
            match post[0] {
                "cgroup2"
                    // The first cgroup2 mount wins (a container may see more).
                    if unified.is_none() => {
                        unified = Some(mount_point);
                    }
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    for c in &controllers {
                        v1.entry(c.clone()).or_insert_with(|| V1Mount {
                            mount_point: mount_point.clone(),
                            root: root.to_owned(),
                            controllers: controllers.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        if v1.is_empty() && unified.is_none() {
            return Err(CgroupError::Detect(
                "no cgroup or cgroup2 mount in mountinfo".into(),
            ));
        }
        let unified_controllers = unified
            .as_deref()
            .and_then(read_controllers)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Hierarchy {
            v1,
            unified,
            unified_controllers,
        })
    }
}

/// A path field of /proc/self/mountinfo decoded: the kernel escapes space,
/// tab, newline and backslash as three octal digits (`\040`); other bytes
/// (any encoding) are kept as they are.
pub fn unescape_mountinfo(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The directory of cgroup `abs` (a path from the hierarchy's root, as
/// /proc/<pid>/cgroup shows it) in a hierarchy mounted at `mount` whose
/// mountinfo root is `root` (not "/" inside a cgroup namespace or a
/// bind-mounted subtree).
pub fn cgroup_dir(mount: &Path, root: &str, abs: &str) -> PathBuf {
    let rel = if root != "/" && abs.starts_with(root) {
        &abs[root.len()..]
    } else {
        abs
    };
    let mut dir = mount.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        dir.push(c);
    }
    dir
}

/// The layout of this host, from `/proc/self/mountinfo`.
pub fn hierarchy() -> Result<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Detect(format!("reading /proc/self/mountinfo: {e}")))?;
    Hierarchy::from_mountinfo(&mountinfo, |p| {
        std::fs::read_to_string(p.join("cgroup.controllers")).ok()
    })
}

/// This process's own cgroup paths: v1 controller → path, and the unified
/// path under the key "" (from `/proc/self/cgroup`).
pub fn own_cgroups() -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::Detect(format!("reading /proc/self/cgroup: {e}")))?;
    Ok(parse_proc_cgroup(&text))
}

/// Parses `/proc/<pid>/cgroup`: `id:controllers:path` lines.
pub fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_owned());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_owned(), path.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_puts_unbound_controllers_on_unified() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(h.mode(), Mode::Hybrid);
        assert_eq!(
            h.v1_mount("memory").unwrap().mount_point,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(h.v1.contains_key("name=systemd"));
        assert!(h.on_unified("hugetlb"));
        assert!(!h.on_unified("memory"));
        // The first mount carrying cpu wins.
        assert_eq!(
            h.v1_mount("cpu").unwrap().mount_point,
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            h.v1_mount("cpuacct").unwrap().controllers,
            ["cpu", "cpuacct"]
        );
    }

    #[test]
    fn pure_v2_layout() {
        let mi = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_mountinfo(mi, |_| Some("cpuset cpu io memory hugetlb pids".into()))
            .unwrap();
        assert_eq!(h.mode(), Mode::Unified);
        assert!(h.on_unified("memory"));
        assert!(!h.on_unified("devices"));
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let err = Hierarchy::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n", |_| None);
        assert!(matches!(err, Err(CgroupError::Detect(_))));
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo("/end\\04"), PathBuf::from("/end\\04"));
    }

    #[test]
    fn proc_cgroup_lines() {
        let m = parse_proc_cgroup("4:memory:/x/y\n2:cpu,cpuacct:/\n0::/init.scope\n");
        assert_eq!(m["memory"], "/x/y");
        assert_eq!(m["cpuacct"], "/");
        assert_eq!(m[""], "/init.scope");
    }
}
