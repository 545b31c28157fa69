//! cgroups v1, v2 and hybrid for Carrack, with the cgroupfs and the systemd
//! cgroup drivers.
//!
//! One [`Cgroup`] is one container's (or pod's) cgroup across every hierarchy
//! of the host: a directory per v1 controller mount, plus one in the unified
//! hierarchy when the host has one. It creates them, applies OCI
//! `LinuxResources` to whichever hierarchy owns each controller (see
//! [`hierarchy`]), moves processes in, freezes and thaws, lists processes,
//! reads statistics in the shape of `runc events --stats`, watches for OOM
//! kills and removes the directories again.
//!
//! A `linux.cgroupsPath` in the systemd driver's `slice:prefix:name` form
//! names a transient scope of systemd ([`systemd`]): systemd creates its
//! cgroup (see [`systemd::start_scope`]), and a [`Cgroup`] opened on that
//! path works in the scope's directories (`/<slice path>/<prefix>-<name>.scope`
//! in every hierarchy) for everything else.
//!
//! Used by carrack-runtime (create, update, pause, events), carrack-shim (OOM
//! watch) and carrackd (pod cgroups, stats). It does not fork, kill or wait:
//! processes are the runtime's business.
//!
//! ```no_run
//! use carrack_cgroups::Cgroup;
//! let cg = Cgroup::open("/kubepods/pod-1/ctr-1", "ctr-1")?;
//! cg.create()?;
//! cg.add_process(std::process::id() as i32)?;
//! println!("{:?}", cg.stats()?.memory.usage.usage);
//! # Ok::<(), carrack_cgroups::CgroupError>(())
//! ```

mod devices_bpf;
mod error;
mod hierarchy;
mod oom;
mod stats;
pub mod systemd;
mod undo;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use systemd::ScopeUnit;

pub use error::{CgroupError, Result};
pub use hierarchy::{
    Hierarchy, Mode, V1Mount, cgroup_dir, hierarchy, own_cgroups, parse_proc_cgroup,
    unescape_mountinfo,
};
pub use oom::OomWatcher;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, Detail, HugetlbStats, MemoryData, MemoryStats,
    PidsStats, Psi, PsiData, Stats, Throttling,
};
pub use undo::Applied;

/// One cgroup across all hierarchies of the host.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    /// The cgroup path, absolute from the hierarchy roots, e.g. /kubepods/pod1/ctr.
    path: String,
    /// v1: controller mount point → the directory of this cgroup in it (one
    /// per distinct mount, co-mounted controllers share it).
    v1_dirs: Vec<(Vec<String>, PathBuf)>,
    /// The directory in the unified hierarchy, if the host has one.
    unified_dir: Option<PathBuf>,
    /// The systemd scope this cgroup is, for a `slice:prefix:name` path.
    scope: Option<ScopeUnit>,
    /// `linux.cgroupsPath` as given.
    cgroups_path: String,
}

impl Cgroup {
    /// Names the cgroup of `linux.cgroupsPath` for the container `container_id`,
    /// without touching the filesystem. An empty path means `/carrack/<id>`; a
    /// relative one is taken below this process's own cgroup. The systemd
    /// driver's `slice:prefix:name` form names the scope's cgroup.
    pub fn open(cgroups_path: &str, container_id: &str) -> Result<Cgroup> {
        Self::open_in(hierarchy()?, cgroups_path, container_id)
    }

    /// Like [`Cgroup::open`] with a given layout (tests, or callers that detect once).
    pub fn open_in(hierarchy: Hierarchy, cgroups_path: &str, container_id: &str) -> Result<Cgroup> {
        let invalid = |reason: &str| CgroupError::InvalidPath {
            path: cgroups_path.to_owned(),
            reason: reason.to_owned(),
        };
        let scope = if systemd::is_systemd_path(cgroups_path) {
            Some(ScopeUnit::parse(cgroups_path, container_id)?)
        } else {
            None
        };
        if cgroups_path.split('/').any(|c| c == ".." || c == ".") {
            return Err(invalid("'.' and '..' components are not allowed"));
        }
        if cgroups_path.contains('\0') {
            return Err(invalid("NUL byte"));
        }
        let own = if cgroups_path.is_empty() || cgroups_path.starts_with('/') || scope.is_some() {
            None
        } else {
            Some(own_cgroups()?)
        };
        let absolute = |controller: &str| -> String {
            let rel = if let Some(scope) = &scope {
                scope.cgroup_path()
            } else if cgroups_path.is_empty() {
                format!("/carrack/{container_id}")
            } else {
                cgroups_path.to_owned()
            };
            match &own {
                None => rel,
                Some(own) => {
                    let base = own.get(controller).map(String::as_str).unwrap_or("/");
                    format!("{}/{}", base.trim_end_matches('/'), rel)
                }
            }
        };
        let path = absolute("memory");
        let mut v1_dirs: Vec<(Vec<String>, PathBuf)> = Vec::new();
        let mut seen_mounts: Vec<&Path> = Vec::new();
        for (controller, mount) in &hierarchy.v1 {
            if seen_mounts.contains(&mount.mount_point.as_path()) {
                continue;
            }
            seen_mounts.push(&mount.mount_point);
            let abs = absolute(controller);
            v1_dirs.push((
                mount.controllers.clone(),
                cgroup_dir(&mount.mount_point, &mount.root, &abs),
            ));
        }
        let unified_dir = hierarchy
            .unified
            .as_ref()
            .map(|m| cgroup_dir(m, "/", &absolute("")));
        Ok(Cgroup {
            hierarchy,
            path,
            v1_dirs,
            unified_dir,
            scope,
            cgroups_path: cgroups_path.to_owned(),
        })
    }

    /// The `linux.cgroupsPath` this cgroup was opened with.
    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    /// The systemd scope of this cgroup, when its path is in the systemd
    /// driver's `slice:prefix:name` form.
    pub fn scope(&self) -> Option<&ScopeUnit> {
        self.scope.as_ref()
    }

    /// The cgroup path, absolute from the hierarchy roots.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host's layout this cgroup lives in.
    pub fn layout(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Every directory of this cgroup (v1 ones, then the unified one).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.v1_dirs
            .iter()
            .map(|(_, d)| d.clone())
            .chain(self.unified_dir.clone())
            .collect()
    }

    /// The v1 directory of a controller, if a v1 hierarchy carries it.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1_dirs
            .iter()
            .find(|(cs, _)| cs.iter().any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    /// The unified directory, when the host has a cgroup2 mount.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified_dir.as_deref()
    }

    /// Creates the directories in every hierarchy (parents too). On v1 the
    /// cpuset of each new level is filled from its parent, which the kernel
    /// leaves empty; on v2 the controllers are enabled along the path. For a
    /// systemd scope this comes after [`systemd::start_scope`]: it makes the
    /// directories of the v1 hierarchies systemd does not manage (cpuset,
    /// freezer, hugetlb, …) and leaves the controllers of the unified
    /// hierarchy to systemd, which enabled them for the delegated scope.
    pub fn create(&self) -> Result<()> {
        for (controllers, dir) in &self.v1_dirs {
            mkdir_all(dir)?;
            if controllers.iter().any(|c| c == "cpuset") {
                v1::init_cpuset(dir)?;
            }
        }
        if let Some(dir) = &self.unified_dir {
            mkdir_all(dir)?;
            if self.scope.is_none() {
                let root = self.hierarchy.unified.as_deref().unwrap_or(Path::new("/"));
                v2::enable_controllers(root, dir)?;
            }
        }
        Ok(())
    }

    /// Applies OCI resources: each controller on the hierarchy that owns it.
    /// A resource whose controller this host lacks is an error naming it.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        v1::apply(self, resources)?;
        if let Some(dir) = &self.unified_dir {
            v2::apply(self, dir, resources)?;
        }
        Ok(())
    }

    /// Applies OCI resources as [`Cgroup::apply`] does, undoably: the
    /// content of each file is kept before its first write. When a write
    /// fails, the files written before it get their old content back and
    /// the write's error is returned: the cgroup is as it was (but for a
    /// file the kernel would not take its old content back into, see
    /// [`Applied::undo`]). On success the [`Applied`] undoes the whole
    /// apply when a later step of the caller fails. Files only: the
    /// properties of a systemd unit are the caller's.
    pub fn apply_undoable(&self, resources: &LinuxResources) -> Result<Applied> {
        let (result, applied) = undo::journaled(|| self.apply(resources));
        match result {
            Ok(()) => Ok(applied),
            Err(e) => {
                let _ = applied.undo();
                Err(e)
            }
        }
    }

    /// Applies resources to a running container: for a systemd scope its
    /// unit properties first (systemd would otherwise put its old values
    /// back when it next realises the unit), then the files as [`Cgroup::apply`].
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        if let Some(scope) = &self.scope {
            let mut bus = systemd::Bus::connect().map_err(|e| bus_error(scope, e))?;
            systemd::update_scope(&mut bus, scope, resources, &self.hierarchy)?;
        }
        self.apply(resources)
    }

    /// For a systemd scope: has systemd start it with `pid` (and so the
    /// children `pid` forks afterwards) in it and `resources` as its
    /// properties, then makes the directories systemd does not manage and
    /// applies `resources` to the files: what [`Cgroup::create`] and
    /// [`Cgroup::apply`] are for a cgroupfs path. The D-Bus connection is
    /// closed (its threads joined) before this returns.
    pub fn start_scope(&self, pid: i32, resources: &LinuxResources) -> Result<()> {
        let Some(scope) = &self.scope else {
            return Err(CgroupError::InvalidPath {
                path: self.path.clone(),
                reason: "not a systemd scope (slice:prefix:name)".into(),
            });
        };
        let mut bus = systemd::Bus::connect().map_err(|e| bus_error(scope, e))?;
        systemd::start_scope(&mut bus, scope, pid, resources, &self.hierarchy)?;
        drop(bus);
        self.create()?;
        self.apply(resources)
    }

    /// For a systemd scope: stops and resets the unit (a gone unit is
    /// fine), so that systemd forgets it; the caller has killed its
    /// processes. Nothing for a cgroupfs path.
    pub fn stop_scope(&self) -> Result<()> {
        match &self.scope {
            Some(scope) => systemd::connect_and_stop(&scope.name),
            None => Ok(()),
        }
    }

    /// Moves a process into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in self.paths() {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup from inside: on v1 its one
    /// thread through each hierarchy's `tasks`, on cgroup2 through
    /// `cgroup.procs` unless `unified_placed` (it was cloned there with
    /// `CLONE_INTO_CGROUP`, see [`Cgroup::unified_dir`]).
    ///
    /// Only for a single-threaded process, such as a child right after
    /// fork, where moving its thread moves all of it. It is the cheap way
    /// in: a write to `cgroup.procs` takes the kernel's global threadgroup
    /// lock, which waits for an RCU grace period (10 ms and more) on each
    /// first use, while a thread writing `0` for itself into `tasks` moves
    /// without it (Linux 6.1 and later; older kernels take the lock for
    /// both).
    pub fn enter_single_threaded(&self, unified_placed: bool) -> Result<()> {
        for (_, dir) in &self.v1_dirs {
            write_file(&dir.join("tasks"), "0")?;
        }
        match &self.unified_dir {
            Some(dir) if !unified_placed => write_file(&dir.join("cgroup.procs"), "0"),
            _ => Ok(()),
        }
    }

    /// Freezes every process of the cgroup and waits until the kernel says so.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        if let Some(dir) = self.v1_dir("freezer") {
            return v1::set_frozen(dir, frozen);
        }
        match &self.unified_dir {
            Some(dir) if self.hierarchy.mode() == Mode::Unified => v2::set_frozen(dir, frozen),
            _ => Err(CgroupError::ControllerMissing("freezer".into())),
        }
    }

    /// True when the cgroup is frozen.
    pub fn is_frozen(&self) -> Result<bool> {
        if let Some(dir) = self.v1_dir("freezer") {
            return Ok(read_file(&dir.join("freezer.state"))?.trim() == "FROZEN");
        }
        match &self.unified_dir {
            Some(dir) if self.hierarchy.mode() == Mode::Unified => {
                Ok(read_file(&dir.join("cgroup.freeze"))?.trim() == "1")
            }
            _ => Err(CgroupError::ControllerMissing("freezer".into())),
        }
    }

    /// The processes of the cgroup (and of its descendants on v2).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = ["pids", "memory", "freezer", "cpu"]
            .iter()
            .find_map(|c| self.v1_dir(c))
            .map(Path::to_path_buf)
            .or_else(|| self.unified_dir.clone())
            .ok_or_else(|| CgroupError::ControllerMissing("any".into()))?;
        let mut pids = Vec::new();
        collect_pids(&dir, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Statistics in the shape of `runc events --stats`.
    pub fn stats(&self) -> Result<Stats> {
        self.stats_of(Detail::Full)
    }

    /// The statistics `detail` names (the rest left zero).
    pub fn stats_of(&self, detail: Detail) -> Result<Stats> {
        let mut stats = Stats::default();
        v1::read_stats(self, &mut stats, detail)?;
        if let Some(dir) = &self.unified_dir {
            v2::read_stats(self, dir, &mut stats, detail)?;
        }
        Ok(stats)
    }

    /// A watcher that becomes readable when the kernel OOM-kills a process of
    /// this cgroup (v1 memory.oom_control eventfd, v2 memory.events inotify).
    pub fn oom_watcher(&self) -> Result<OomWatcher> {
        if let Some(dir) = self.v1_dir("memory") {
            return OomWatcher::v1(dir);
        }
        match &self.unified_dir {
            Some(dir) if self.hierarchy.on_unified("memory") => OomWatcher::v2(dir),
            _ => Err(CgroupError::ControllerMissing("memory".into())),
        }
    }

    /// Removes the directories (children first). Idempotent. Processes that
    /// are still exiting get a short grace; a cgroup with live processes is
    /// [`CgroupError::Busy`].
    pub fn delete(&self) -> Result<()> {
        for dir in self.paths() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn bus_error(scope: &ScopeUnit, e: systemd::BusError) -> CgroupError {
    CgroupError::Systemd {
        unit: scope.name.clone(),
        op: "connecting to systemd for",
        reason: e.to_string(),
    }
}

fn mkdir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(error::io_err("mkdir", dir))
}

/// Writes one value to a cgroup file (no truncation games: cgroupfs files
/// take one write each).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    undo::note(path);
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(error::io_err("read", path))
}

/// Reads a file that may be absent (an older kernel, a disabled feature).
pub(crate) fn read_optional(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let procs = read_file(&dir.join("cgroup.procs"))?;
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    for entry in std::fs::read_dir(dir)
        .map_err(error::io_err("read", dir))?
        .flatten()
    {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CgroupError::Io {
                op: "read",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    // A process that was just killed leaves the cgroup a moment after its
    // parent reaped it; rmdir says EBUSY until then.
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if attempt == 49 {
                    return Err(CgroupError::Busy(dir.to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(CgroupError::Io {
                    op: "rmdir",
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> Hierarchy {
        Hierarchy::from_mountinfo(
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             36 31 0:33 /nested /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            |_| Some("hugetlb".into()),
        )
        .unwrap()
    }

    #[test]
    fn paths_in_every_hierarchy() {
        let cg = Cgroup::open_in(hybrid(), "/kubepods/p1/c1", "c1").unwrap();
        let paths = cg.paths();
        assert!(paths.contains(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/p1/c1")));
        assert!(paths.contains(&PathBuf::from("/sys/fs/cgroup/memory/kubepods/p1/c1")));
        assert_eq!(
            cg.v1_dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/kubepods/p1/c1"))
        );
        assert_eq!(
            cg.unified_dir(),
            Some(Path::new("/sys/fs/cgroup/unified/kubepods/p1/c1"))
        );
        assert_eq!(
            paths.len(),
            4,
            "co-mounted cpu,cpuacct is one directory: {paths:?}"
        );
    }

    #[test]
    fn mount_root_is_stripped() {
        let cg = Cgroup::open_in(hybrid(), "/nested/x", "x").unwrap();
        assert_eq!(cg.v1_dir("pids"), Some(Path::new("/sys/fs/cgroup/pids/x")));
    }

    #[test]
    fn systemd_paths_name_the_scope_in_every_hierarchy() {
        let cg = Cgroup::open_in(
            hybrid(),
            "kubepods-burstable-pod9.slice:cri-carrack:c1",
            "c1",
        )
        .unwrap();
        let scope = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice/cri-carrack-c1.scope";
        assert_eq!(cg.path(), format!("/{scope}"));
        assert_eq!(
            cg.v1_dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory").join(scope).as_path())
        );
        assert_eq!(
            cg.unified_dir(),
            Some(Path::new("/sys/fs/cgroup/unified").join(scope).as_path())
        );
        assert_eq!(
            cg.scope().map(|s| s.name.as_str()),
            Some("cri-carrack-c1.scope")
        );
        assert!(
            Cgroup::open_in(hybrid(), "/kubepods/c1", "c1")
                .unwrap()
                .scope()
                .is_none()
        );
    }

    #[test]
    fn empty_path_defaults_under_carrack() {
        let cg = Cgroup::open_in(hybrid(), "", "abc").unwrap();
        assert_eq!(cg.path(), "/carrack/abc");
    }

    #[test]
    fn bad_paths_name_the_field() {
        for p in ["/a/../b", "system.slice:carrack", "/a/./b", "a/b.slice:p:c"] {
            let err = Cgroup::open_in(hybrid(), p, "x").unwrap_err();
            assert!(err.to_string().starts_with("linux.cgroupsPath"), "{err}");
        }
    }
}
