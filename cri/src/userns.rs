//! User namespaces of pods (`hostUsers: false`): the id mappings kubelet
//! sends in `namespace_options.userns_options`, checked; the pod's user
//! namespace pinned together with network, IPC and UTS namespaces OWNED by
//! it (so that net sysctls, sethostname and mounts of sysfs or mqueue work
//! from inside); the pod's containers join it (see [`crate::spec`]) on a
//! rootfs shifted into the mapped range ([`shift_rootfs`]).
//!
//! The namespaces are made by a forked child: `unshare(CLONE_NEWUSER)` is
//! refused to a multi-threaded process, and carrackd is one. The child
//! unshares the user namespace, carrackd (root in the initial user
//! namespace, so no `setgroups` deny is needed) writes its `uid_map` and
//! `gid_map`, then the child unshares net/IPC/UTS, sets the hostname and
//! brings loopback up, and carrackd bind-mounts `/proc/<child>/ns/*` onto
//! the files under `<state>/sandboxes/<id>/ns/`; the child then exits. The
//! child of a multi-threaded parent may only make async-signal-safe calls:
//! it runs raw system calls on data prepared before the fork, nothing that
//! allocates or locks.
//!
//! Rootfs ownership: an idmapped bind of the container's overlay mount is
//! refused by this kernel (`mount_setattr(MOUNT_ATTR_IDMAP)` on an
//! overlayfs mount fails with EINVAL on 6.18; it works on ext4), so the
//! rootfs view is chowned into the mapped range instead. The cost: every
//! file of the image is copied up into the container's upper dir (this
//! kernel has no overlayfs metacopy), i.e. one copy of the image per
//! container of such a pod, and the time to copy it at CreateContainer.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::id_maps::PodIdMaps;
use crate::pod_host::{NsRequest, PinnedNs, SandboxError};

/// Whether the OCI runtime `binary` runs containers in a pod's user
/// namespace (joined by path, with the mappings): carrack-runtime and runc,
/// the two this is tested with. Reported per handler in Status, which
/// kubelet reads before it runs a `hostUsers: false` pod.
pub fn runtime_supports(binary: &Path) -> bool {
    binary
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "carrack-runtime" || n == "runc")
}

/// The pinned namespaces of a pod with a user namespace.
#[derive(Debug, Clone, Default)]
pub struct PinnedUserNs {
    /// The user namespace file.
    pub user: String,
    /// Net, IPC and UTS, owned by it.
    pub owned: PinnedNs,
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

/// Steps the child reports on its pipe; an error is reported as its step
/// number with [`FAILED`] set, the errno as the exit code.
const USERNS_MADE: u8 = 1;
const NAMESPACES_MADE: u8 = 2;
const FAILED: u8 = 0x80;

/// Everything the child needs, built before the fork (it cannot allocate).
struct ChildPlan {
    flags: libc::c_int,
    hostname: Option<CString>,
    loopback: bool,
    to_parent: OwnedFd,
    from_parent: OwnedFd,
}

/// The forked child: async-signal-safe system calls only.
fn child_main(plan: &ChildPlan) -> ! {
    let report = |byte: u8| {
        // SAFETY: write(2) of one byte from a stack variable.
        unsafe { libc::write(plan.to_parent.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    };
    let fail = |step: u8| -> ! {
        // SAFETY: reading errno is async-signal-safe.
        let errno = unsafe { *libc::__errno_location() };
        report(FAILED | step);
        // SAFETY: _exit ends the child without running the parent's handlers.
        unsafe { libc::_exit(errno & 0x7f) }
    };
    let wait_parent = || -> isize {
        let mut b = 0u8;
        // SAFETY: read(2) of one byte into a stack variable.
        unsafe { libc::read(plan.from_parent.as_raw_fd(), (&mut b as *mut u8).cast(), 1) }
    };
    // SAFETY: unshare(2) with a flag; the child is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        fail(USERNS_MADE);
    }
    report(USERNS_MADE);
    if wait_parent() != 1 {
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: unshare(2) with flags, now owned by the new user namespace.
    if plan.flags != 0 && unsafe { libc::unshare(plan.flags) } != 0 {
        fail(NAMESPACES_MADE);
    }
    if let Some(h) = &plan.hostname {
        // SAFETY: pointer and length describe the CString's bytes.
        if unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) } != 0 {
            fail(NAMESPACES_MADE);
        }
    }
    if plan.loopback && !loopback_up_raw() {
        fail(NAMESPACES_MADE);
    }
    report(NAMESPACES_MADE);
    // Until the parent has pinned the namespaces (it closes its end).
    wait_parent();
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

/// Brings `lo` up with raw calls (no allocation); false on failure, errno
/// set.
fn loopback_up_raw() -> bool {
    // SAFETY: socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name[0] = b'l' as libc::c_char;
    ifr.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: SIOCGIFFLAGS fills the valid ifreq.
    let mut ok = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) } == 0;
    if ok {
        // SAFETY: the flags member was just filled by the kernel.
        unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the valid ifreq.
        ok = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) } == 0;
    }
    // SAFETY: closes the socket made above.
    unsafe { libc::close(fd) };
    ok
}

/// Kills (if needed) and reaps the child.
fn end_child(pid: libc::pid_t, kill: bool) -> i32 {
    if kill {
        // SAFETY: kill(2) of our own unreaped child (its pid cannot be reused).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waitpid(2) of our own child into a stack variable.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        0
    }
}

/// Reads one step byte from the child (0: it closed the pipe).
fn read_step(fd: &OwnedFd) -> u8 {
    let mut b = 0u8;
    loop {
        // SAFETY: read(2) of one byte into a stack variable.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        if n < 0 && nix::Error::last() == nix::Error::EINTR {
            continue;
        }
        return if n == 1 { b } else { 0 };
    }
}

/// Makes the pod's user namespace with `maps`, and the namespaces of `req`
/// owned by it (hostname set, loopback up), pinned under `ns_dir`. On
/// failure nothing is left.
pub fn pin_user_namespaces(
    ns_dir: &Path,
    maps: &PodIdMaps,
    req: NsRequest,
    hostname: &str,
) -> Result<PinnedUserNs, SandboxError> {
    let result = pin(ns_dir, maps, req, hostname);
    if result.is_err() {
        let _ = crate::pod_host::release_namespaces(ns_dir);
    }
    result
}

fn pin(
    ns_dir: &Path,
    maps: &PodIdMaps,
    req: NsRequest,
    hostname: &str,
) -> Result<PinnedUserNs, SandboxError> {
    let io =
        |what: &'static str, path: PathBuf| move |source| SandboxError::Io { what, path, source };
    std::fs::create_dir_all(ns_dir).map_err(io("create", ns_dir.to_owned()))?;
    let mut flags = 0;
    let mut kinds = vec!["user"];
    for (want, flag, kind) in [
        (req.net, libc::CLONE_NEWNET, "net"),
        (req.ipc, libc::CLONE_NEWIPC, "ipc"),
        (req.uts, libc::CLONE_NEWUTS, "uts"),
    ] {
        if want {
            flags |= flag;
            kinds.push(kind);
        }
    }
    for kind in &kinds {
        let p = ns_dir.join(kind);
        std::fs::File::create(&p).map_err(io("create", p.clone()))?;
    }
    let hostname = if req.uts && !hostname.is_empty() {
        Some(CString::new(hostname).map_err(|_| SandboxError::Sys {
            what: format!("hostname {hostname:?} holds a NUL byte"),
            source: nix::Error::EINVAL,
        })?)
    } else {
        None
    };
    let (from_child, to_parent) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (from_parent, to_child) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let plan = ChildPlan {
        flags,
        hostname,
        loopback: req.net,
        to_parent,
        from_parent,
    };
    // SAFETY: the child runs only child_main, which makes async-signal-safe
    // system calls on data prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork of the user namespace child")(nix::Error::last()));
    }
    if pid == 0 {
        // Our copies of the parent's ends must go, or the child would
        // never see the parent close them.
        // SAFETY: close(2) of inherited fds the child does not use.
        unsafe {
            libc::close(to_child.as_raw_fd());
            libc::close(from_child.as_raw_fd());
        }
        child_main(&plan);
    }
    drop(plan);
    let fail = |step: u8, what: &str| -> SandboxError {
        let errno = end_child(pid, step == 0);
        SandboxError::Sys {
            what: what.to_owned(),
            source: nix::Error::from_raw(if errno == 0 { libc::EIO } else { errno }),
        }
    };
    match read_step(&from_child) {
        USERNS_MADE => {}
        s => {
            return Err(fail(
                s,
                "unshare(CLONE_NEWUSER) in the pod's namespace child",
            ));
        }
    }
    for (file, range) in [("gid_map", &maps.gids), ("uid_map", &maps.uids)] {
        let p = format!("/proc/{pid}/{file}");
        if let Err(e) = std::fs::write(&p, range.proc_map_line()) {
            end_child(pid, true);
            return Err(SandboxError::Io {
                what: "write",
                path: p.into(),
                source: e,
            });
        }
    }
    // SAFETY: write(2) of one byte to our pipe end.
    let sent = unsafe { libc::write(to_child.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    if sent != 1 {
        return Err(fail(0, "signalling the pod's namespace child"));
    }
    match read_step(&from_child) {
        NAMESPACES_MADE => {}
        s => {
            return Err(fail(
                s,
                "unshare(net/ipc/uts), sethostname or loopback in the pod's user namespace",
            ));
        }
    }
    let mut pinned = PinnedUserNs::default();
    for kind in &kinds {
        let target = ns_dir.join(kind);
        let source = format!("/proc/{pid}/ns/{kind}");
        if let Err(e) = mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            end_child(pid, true);
            return Err(sys(format!(
                "bind-mount {kind} namespace on {}",
                target.display()
            ))(e));
        }
        let path = target.to_string_lossy().into_owned();
        match *kind {
            "user" => pinned.user = path,
            "net" => pinned.owned.net = path,
            "ipc" => pinned.owned.ipc = path,
            _ => pinned.owned.uts = path,
        }
    }
    drop(to_child);
    end_child(pid, false);
    Ok(pinned)
}

/// Errors shifting a rootfs.
#[derive(Debug, thiserror::Error)]
#[error("shifting {path} into the pod's id range: {source}")]
pub struct ShiftError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Chowns every file of the container rootfs `root` (an overlay mount:
/// this copies each file up) from ids inside the namespace to the host ids
/// `maps` give them, keeping setuid/setgid bits and file capabilities
/// (chown clears both; the capabilities are rewritten rooted at the pod's
/// root, see [`crate::file_caps`]). Ids
/// the ranges do not map are left alone; symlinks are not followed and
/// other mounts are not entered.
pub fn shift_rootfs(root: &Path, maps: &PodIdMaps) -> Result<(), ShiftError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ShiftError { path, source }
    };
    let dev = std::fs::symlink_metadata(root).map_err(err(root))?.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(err(&path))?;
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).map_err(err(&path))? {
                stack.push(e.map_err(err(&path))?.path());
            }
        }
        let uid = maps.uids.to_host(meta.uid());
        let gid = maps.gids.to_host(meta.gid());
        if uid.is_none() && gid.is_none() {
            continue;
        }
        let caps = if meta.is_file() {
            crate::file_caps::read(&path).map_err(err(&path))?
        } else {
            None
        };
        std::os::unix::fs::lchown(&path, uid, gid).map_err(err(&path))?;
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(err(&path))?;
        }
        if let Some(v3) =
            caps.and_then(|raw| crate::file_caps::namespaced(&raw, |id| maps.uids.to_host(id)))
        {
            crate::file_caps::write(&path, &v3).map_err(err(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_runtimes_are_the_tested_ones() {
        assert!(runtime_supports(Path::new("/usr/bin/carrack-runtime")));
        assert!(runtime_supports(Path::new("/usr/sbin/runc")));
        assert!(!runtime_supports(Path::new("/usr/bin/kata-runtime")));
    }
}
