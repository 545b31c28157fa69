//! Building the container's mount tree inside its new mount namespace:
//! root propagation, the rootfs bind, spec mounts (targets resolved inside
//! the rootfs with `openat2(RESOLVE_IN_ROOT)` and mounted through
//! /proc/self/fd, so image symlinks cannot redirect them to the host),
//! devices, `pivot_root`, masked and readonly paths, a readonly root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Result, RuntimeError, sys};
use crate::sys::{fd_path, mkdir_all_in_root, set_mount_attrs_recursive};

/// Mount flags, propagation flags and the leftover data string of one
/// OCI mount's options.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Flags that must be cleared (e.g. `rw`, `suid`).
    pub clear: MsFlags,
    /// Propagation to set after mounting.
    pub propagation: MsFlags,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// `MOUNT_ATTR_*` to set on the whole mount tree (`rro`, `rnosuid`...).
    pub recursive_set: u64,
    /// `MOUNT_ATTR_*` to clear on the whole mount tree (`rrw`, `rsuid`...).
    pub recursive_clear: u64,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
            recursive_set: 0,
            recursive_clear: 0,
        }
    }
}

/// Parses OCI mount options into flags and data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        if let Some((attr, set)) = recursive_attr(opt) {
            if set {
                o.recursive_set |= attr;
                o.recursive_clear &= !attr;
            } else {
                o.recursive_clear |= attr;
                o.recursive_set &= !attr;
            }
            continue;
        }
        let (set, clear, prop) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other.to_owned());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.clear |= clear;
        o.propagation |= prop;
    }
    o.data = data.join(",");
    o
}

/// The recursive options (mount_setattr(2) attributes, as runc names them):
/// the attribute and whether the option sets it.
fn recursive_attr(opt: &str) -> Option<(u64, bool)> {
    use crate::sys::mount_attr::{NODEV, NOEXEC, NOSUID, RDONLY};
    Some(match opt {
        "rro" => (RDONLY, true),
        "rrw" => (RDONLY, false),
        "rnosuid" => (NOSUID, true),
        "rsuid" => (NOSUID, false),
        "rnodev" => (NODEV, true),
        "rdev" => (NODEV, false),
        "rnoexec" => (NOEXEC, true),
        "rexec" => (NOEXEC, false),
        _ => return None,
    })
}

/// The `MOUNT_ATTR_*` equivalents of mount(2) flags (read-only, nosuid,
/// nodev, noexec).
fn mount_attrs(flags: MsFlags) -> u64 {
    use crate::sys::mount_attr::{NODEV, NOEXEC, NOSUID, RDONLY};
    [
        (MsFlags::MS_RDONLY, RDONLY),
        (MsFlags::MS_NOSUID, NOSUID),
        (MsFlags::MS_NODEV, NODEV),
        (MsFlags::MS_NOEXEC, NOEXEC),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .fold(0, |acc, (_, a)| acc | a)
}

/// Parses `rootfsPropagation`.
pub fn parse_propagation(p: &str) -> Result<MsFlags> {
    let o = parse_options(&[p.to_owned()]);
    if o.propagation.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            field: "linux.rootfsPropagation".into(),
            reason: format!(
                "{p:?} is not one of private, rprivate, shared, rshared, slave, rslave, unbindable, runbindable"
            ),
        });
    }
    Ok(o.propagation)
}

fn mnt(what: String) -> impl FnOnce(nix::Error) -> RuntimeError {
    sys(what)
}

/// Builds the whole mount tree and pivots into it. Runs in the init, in
/// its new mount namespace. `has_netns`: sysfs can only be mounted fresh
/// in a network namespace we own; without one /sys is bind-mounted.
pub fn setup(
    spec: &Spec,
    rootfs: &Path,
    has_userns: bool,
    cgroup_layout: Option<&carrack_cgroups::Hierarchy>,
) -> Result<()> {
    let linux = spec.linux().as_ref();
    // A bad rootfsPropagation fails before anything is mounted.
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        parse_propagation(p)?;
    }
    // The mount tree starts with the spec's propagation (rslave unless
    // it asks otherwise: nothing mounted here reaches the host). With
    // `rshared` (bidirectional volumes) the copies stay peers of the
    // host's mounts, so the mount holding the rootfs is made private first:
    // pivot_root refuses a shared parent, and the container's mounts
    // under the rootfs must not show up on the host.
    // An unbindable tree could not be bind-mounted as the rootfs below:
    // (r)unbindable starts as rslave and is set by `finalize`.
    let initial = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) => parse_propagation(p)?,
        None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    let initial = match initial.contains(MsFlags::MS_UNBINDABLE) {
        true => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        false => initial,
    };
    mount(None::<&str>, "/", None::<&str>, initial, None::<&str>)
        .map_err(mnt("setting the initial propagation of /".into()))?;
    if initial.contains(MsFlags::MS_SHARED) {
        make_rootfs_mount_private(rootfs)?;
    }
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mnt(format!("bind-mounting rootfs {}", rootfs.display())))?;
    let root_fd = open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(mnt(format!("opening rootfs {}", rootfs.display())))?;

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(&root_fd, rootfs, spec, m, has_userns, cgroup_layout)?;
    }
    if dev_is_tmpfs {
        default_devices(&root_fd, has_userns)?;
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        create_device(&root_fd, d, has_userns)?;
    }

    let old_root = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(mnt("opening the old root".into()))?;
    chdir(rootfs).map_err(mnt(format!("chdir {}", rootfs.display())))?;
    pivot_root(".", ".").map_err(mnt("pivot_root".into()))?;
    // The old root is stacked on the new one now; "." must name it (the
    // kernel does not promise where the cwd is after pivot_root, and a
    // propagation change on the new root would make the volumes slaves).
    nix::unistd::fchdir(&old_root).map_err(mnt("fchdir to the old root".into()))?;
    drop(old_root);
    // The old root may be shared with the host: unmounting it must not
    // propagate there.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mnt("making the old root rslave".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(mnt("detaching the old root".into()))?;
    chdir("/").map_err(mnt("chdir /".into()))?;
    drop(root_fd);
    Ok(())
}

/// Makes the mount that holds `rootfs` (the longest mount point of
/// /proc/self/mountinfo at or above it: the rootfs itself when it is an
/// overlay mount) private, not recursively.
fn make_rootfs_mount_private(rootfs: &Path) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| RuntimeError::Io {
        what: "reading /proc/self/mountinfo".into(),
        source: e,
    })?;
    let mount_point = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(carrack_cgroups::unescape_mountinfo)
        .filter(|mp| rootfs.starts_with(mp))
        .max_by_key(|mp| mp.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"));
    mount(
        None::<&str>,
        &mount_point,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mnt(format!(
        "making {} (the mount holding the rootfs) private",
        mount_point.display()
    )))
}

/// After sysctls are written (they need /proc/sys writable): read-only and
/// masked paths, the read-only root, and `rootfsPropagation`, as runc
/// orders them.
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) => parse_propagation(p)?,
        None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(p)?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask_path(p)?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(mnt("remounting / readonly".into()))?;
    }
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(mnt("setting rootfsPropagation".into()))?;
    Ok(())
}

/// True when the container has a cgroup namespace (new or joined): its
/// cgroup mounts are then fresh ones, rooted by the kernel.
fn spec_has_cgroupns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
        })
}

fn mount_one(
    root_fd: &OwnedFd,
    rootfs: &Path,
    spec: &Spec,
    m: &Mount,
    has_userns: bool,
    cgroup_layout: Option<&carrack_cgroups::Hierarchy>,
) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.flags.contains(MsFlags::MS_BIND) {
            "bind"
        } else {
            ""
        });
    let dest = m.destination();
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let source_is_file = is_bind
        && std::fs::metadata(&source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
    let target =
        mkdir_all_in_root(root_fd.as_raw_fd(), dest, source_is_file).map_err(mnt(format!(
            "mounts {}: creating the target inside {}",
            dest.display(),
            rootfs.display()
        )))?;
    let tpath = fd_path(&target);
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let what = |s: &str| format!("mounts {}: {s}", dest.display());
    if is_bind {
        mount(
            Some(&source),
            tpath.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(mnt(what(&format!("bind from {}", source.display()))))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Re-open: the fd still names the directory under the new mount.
            let t = mkdir_all_in_root(root_fd.as_raw_fd(), dest, source_is_file)
                .map_err(mnt(what("reopening the target")))?;
            mount(
                None::<&str>,
                fd_path(&t).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(mnt(what("remounting with its options")))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        let cgroupns = spec_has_cgroupns(spec);
        crate::cgroup_mount::mount_cgroups(
            root_fd,
            dest,
            &source,
            opts.flags,
            cgroupns,
            cgroup_layout,
        )?;
    } else {
        let r = mount(Some(&source), tpath.as_str(), Some(typ), opts.flags, data);
        match r {
            Err(nix::Error::EPERM) | Err(nix::Error::EBUSY)
                if typ == "sysfs" || (typ == "mqueue" && has_userns) =>
            {
                // No network namespace of our own: bind the host's instead.
                let host = if typ == "sysfs" {
                    "/sys"
                } else {
                    "/dev/mqueue"
                };
                mount(
                    Some(host),
                    tpath.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(mnt(what(&format!("bind of {host}"))))?;
                // The host's tree comes with its submounts (securityfs,
                // bpf, debugfs, the cgroups): the mount's flags go onto
                // every one of them, not only the top (runc's remount
                // leaves the submounts writable).
                let t = mkdir_all_in_root(root_fd.as_raw_fd(), dest, false)
                    .map_err(mnt(what("reopening the target")))?;
                set_mount_attrs_recursive(&t, mount_attrs(opts.flags), 0)
                    .map_err(mnt(what(&format!("flags of the bind of {host}"))))?;
            }
            r => r.map_err(mnt(what(&format!("mount type {typ}"))))?,
        }
    }
    if opts.recursive_set != 0 || opts.recursive_clear != 0 {
        let t = mkdir_all_in_root(root_fd.as_raw_fd(), dest, source_is_file)
            .map_err(mnt(what("reopening the target")))?;
        set_mount_attrs_recursive(&t, opts.recursive_set, opts.recursive_clear)
            .map_err(mnt(what("recursive options (mount_setattr)")))?;
    }
    if !opts.propagation.is_empty() {
        let t = mkdir_all_in_root(root_fd.as_raw_fd(), dest, source_is_file)
            .map_err(mnt(what("reopening the target")))?;
        mount(
            None::<&str>,
            fd_path(&t).as_str(),
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(mnt(what("propagation")))?;
    }
    Ok(())
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn default_devices(root_fd: &OwnedFd, has_userns: bool) -> Result<()> {
    for (path, major, minor) in DEFAULT_DEVICES {
        make_device(
            root_fd,
            Path::new(path),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            0,
            0,
            has_userns,
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let dev = crate::sys::open_in_root(
            root_fd.as_raw_fd(),
            Path::new("/dev"),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(mnt("opening /dev in the rootfs".into()))?;
        match nix::unistd::symlinkat(target, &dev, link) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(mnt(format!("symlink /dev/{link}"))(e)),
        }
    }
    mkdir_all_in_root(root_fd.as_raw_fd(), Path::new("/dev/shm"), false)
        .map_err(mnt("creating /dev/shm".into()))?;
    Ok(())
}

fn create_device(root_fd: &OwnedFd, d: &LinuxDevice, has_userns: bool) -> Result<()> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RuntimeError::InvalidSpec {
                field: "linux.devices.type".into(),
                reason: format!(
                    "{}: type a is only valid in device cgroup rules",
                    d.path().display()
                ),
            });
        }
    };
    let mode = d.file_mode().unwrap_or(0o666);
    make_device(
        root_fd,
        d.path(),
        kind,
        d.major() as u64,
        d.minor() as u64,
        mode,
        d.uid().unwrap_or(0),
        d.gid().unwrap_or(0),
        has_userns,
    )
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    root_fd: &OwnedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    has_userns: bool,
) -> Result<()> {
    let what = |s: &str| format!("device {}: {s}", path.display());
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| RuntimeError::InvalidSpec {
        field: "linux.devices.path".into(),
        reason: format!("{} has no name", path.display()),
    })?;
    let dir = mkdir_all_in_root(root_fd.as_raw_fd(), parent, false)
        .map_err(mnt(what("creating its directory")))?;
    let dirp = PathBuf::from(fd_path(&dir)).join(name);
    if has_userns {
        // mknod is not allowed in a user namespace: bind the host's node.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&dirp);
        mount(
            Some(path),
            &dirp,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mnt(what("bind from the host")))?;
        return Ok(());
    }
    let _ = std::fs::remove_file(&dirp);
    mknod(
        &dirp,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        makedev(major, minor),
    )
    .map_err(mnt(what("mknod")))?;
    // mknod honours the umask: set the mode exactly.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &dirp,
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(mnt(what("chmod")))?;
    nix::unistd::chown(&dirp, Some(uid.into()), Some(gid.into())).map_err(mnt(what("chown")))?;
    Ok(())
}

/// Makes `p` a read-only bind of itself. The remount keeps the flags the
/// mount already has (nosuid, nodev, noexec, atime): a user namespace may
/// not clear flags that are locked on it, and runc keeps them too.
fn readonly_path(p: &str) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Err(nix::Error::ENOENT) => return Ok(()),
        r => r.map_err(mnt(format!("linux.readonlyPaths {p}: bind")))?,
    }
    let current =
        nix::sys::statvfs::statvfs(p).map_err(mnt(format!("linux.readonlyPaths {p}: statvfs")))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | mount_flags(&current);
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
        .map_err(mnt(format!("linux.readonlyPaths {p}: remount ro")))
}

/// The kernel's ST_RELATIME statvfs bit (include/linux/statfs.h). nix only
/// names it for glibc; the static (musl) runtime needs it too.
const ST_RELATIME: libc::c_ulong = 0x1000;

/// The per-mount flags of a mount, from statvfs(2), as mount(2) flags.
fn mount_flags(st: &nix::sys::statvfs::Statvfs) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let bits = st.flags().bits();
    [
        (FsFlags::ST_NOSUID.bits(), MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV.bits(), MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC.bits(), MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME.bits(), MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME.bits(), MsFlags::MS_NODIRATIME),
    ]
    .into_iter()
    .chain([(ST_RELATIME, MsFlags::MS_RELATIME)])
    .filter(|(st_flag, _)| bits & st_flag != 0)
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

fn mask_path(p: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    // A symlink is masked itself, not what it points to: an image whose
    // /bin/ls links to /bin/busybox must lose ls, not its whole userland.
    // mount(2) follows a path's last symlink, an O_PATH|O_NOFOLLOW fd's
    // /proc/self/fd link names the symlink.
    let link = if meta.file_type().is_symlink() {
        Some(
            open(
                p,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(mnt(format!("linux.maskedPaths {p}: opening the symlink")))?,
        )
    } else {
        None
    };
    let target = link.as_ref().map(fd_path).unwrap_or_else(|| p.to_owned());
    let r = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            target.as_str(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(mnt(format!("linux.maskedPaths {p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&s(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]));
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, "mode=755,size=65536k");
    }

    #[test]
    fn later_options_override_earlier() {
        let o = parse_options(&s(&["ro", "rw", "rbind"]));
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(o.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
    }

    #[test]
    fn recursive_options_become_mount_attributes() {
        let o = parse_options(&s(&["rbind", "rro", "rnosuid", "rsuid", "rnodev"]));
        use crate::sys::mount_attr::{NODEV, NOSUID, RDONLY};
        assert_eq!(o.recursive_set, RDONLY | NODEV);
        assert_eq!(o.recursive_clear, NOSUID);
        assert_eq!(o.data, "", "not passed on as filesystem data");
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn bad_propagation_names_the_field() {
        let e = parse_propagation("sideways").unwrap_err().to_string();
        assert!(e.contains("linux.rootfsPropagation"), "{e}");
        assert_eq!(
            parse_propagation("rshared").unwrap(),
            MsFlags::MS_SHARED | MsFlags::MS_REC
        );
    }
}
