//! The raw kernel calls nix does not wrap: `openat2` with
//! `RESOLVE_IN_ROOT` (so a mount target is looked up inside the rootfs and
//! a symlink in an image cannot point it at the host), `close_range` and
//! `setdomainname`. Everything else goes through nix.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;

/// Opens `path` (relative to `root`, absolute paths allowed) with every
/// component resolved as if `root` were `/`: `..` and symlinks cannot
/// leave it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32) -> nix::Result<OwnedFd> {
    let rel = strip_root(path);
    let c = CString::new(if rel.as_os_str().is_empty() {
        b".".to_vec()
    } else {
        rel.as_os_str().as_bytes().to_vec()
    })
    .map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; all-zero is its valid "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` is a valid C string and `how` a valid open_how whose size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn strip_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// Creates every missing directory of `path` inside `root` (each step
/// resolved in the root) and returns an `O_PATH` fd of the last one; when
/// `file` is true the last component is created as an empty file instead.
pub fn mkdir_all_in_root(root: RawFd, path: &Path, file: bool) -> nix::Result<OwnedFd> {
    let comps: Vec<_> = strip_root(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut dir = open_in_root(root, Path::new("."), libc::O_PATH | libc::O_DIRECTORY)?;
    let mut sofar = std::path::PathBuf::new();
    for (i, name) in comps.iter().enumerate() {
        sofar.push(name);
        let last = i + 1 == comps.len();
        let want_file = last && file;
        let flags = libc::O_PATH | if want_file { 0 } else { libc::O_DIRECTORY };
        match open_in_root(root, &sofar, flags) {
            Ok(fd) => dir = fd,
            Err(Errno::ENOENT) => {
                let cname = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
                if want_file {
                    // SAFETY: valid dirfd and C string.
                    let fd = unsafe {
                        libc::openat(
                            dir.as_raw_fd(),
                            cname.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                            0o644,
                        )
                    };
                    if fd < 0 && Errno::last() != Errno::EEXIST {
                        return Err(Errno::last());
                    }
                    if fd >= 0 {
                        // SAFETY: fd was just returned by openat and is ours.
                        unsafe { libc::close(fd) };
                    }
                } else {
                    // SAFETY: valid dirfd and C string.
                    let r = unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) };
                    if r < 0 && Errno::last() != Errno::EEXIST {
                        return Err(Errno::last());
                    }
                }
                dir = open_in_root(root, &sofar, flags)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// `MOUNT_ATTR_*` values of mount_setattr(2) (linux/mount.h).
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// No set-user-id.
    pub const NOSUID: u64 = 0x2;
    /// No device files.
    pub const NODEV: u64 = 0x4;
    /// No execution.
    pub const NOEXEC: u64 = 0x8;
}

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets and clears mount attributes on the mount at `fd` and every mount
/// below it (mount_setattr(2) with `AT_RECURSIVE`): the only way to make a
/// recursive bind read-only all the way down, as a remount with
/// `MS_RDONLY` changes the top mount only.
pub fn set_mount_attrs_recursive(fd: &OwnedFd, set: u64, clear: u64) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated empty string, the struct is the
    // kernel's layout and outlives the call, and its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// A detached, read-only bind mount of the file `path` (open_tree(2) with
/// `OPEN_TREE_CLONE`, then mount_setattr(2) `MOUNT_ATTR_RDONLY`): an O_PATH
/// descriptor of its root, the file itself. The mount is attached nowhere,
/// so no mount namespace sees it, and it is gone with its last user.
pub fn detached_readonly_bind(path: &std::ffi::CStr) -> nix::Result<OwnedFd> {
    /// `OPEN_TREE_CLONE` of linux/mount.h.
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: open_tree(2) with a NUL-terminated path and flags; it returns
    // a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = nix::errno::Errno::result(fd)?;
    // SAFETY: fd was just returned by open_tree and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    set_mount_attrs_recursive(&fd, mount_attr::RDONLY, 0)?;
    Ok(fd)
}

/// The `/proc/self/fd/N` path of an fd, to mount onto what it names.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Marks every fd from `first` up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`), falling back to walking /proc/self/fd.
pub fn cloexec_from(first: RawFd) {
    // SAFETY: close_range only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for fd in fds.into_iter().filter(|fd| *fd >= first) {
            // SAFETY: setting FD_CLOEXEC on an fd number is harmless even if it closed meanwhile.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// setdomainname(2).
pub fn set_domainname(name: &str) -> nix::Result<()> {
    // SAFETY: pointer and length describe `name`.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(r).map(drop)
}

/// Makes the calling process undumpable: its /proc/<pid> files (exe
/// included) become inaccessible to processes without CAP_SYS_PTRACE in
/// the initial user namespace. This is how the runtime binary is kept out
/// of reach of the container while a runtime process sits in its
/// namespaces (the CVE-2019-5736 class), without copying the binary into
/// a sealed memfd on every start.
pub fn set_undumpable() -> nix::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// Becomes a child subreaper, so orphaned descendants (the container init
/// once the intermediate child exits) are reparented to us.
pub fn set_child_subreaper() -> nix::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// The kernel's `struct sigaction` for rt_sigaction(2) (x86_64 and aarch64
/// both define `SA_RESTORER`, so the restorer field is present).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Gives every signal its default disposition and unblocks all of them, so
/// that a process exec'd next starts as it would under runc: nothing the
/// runtime (or the shim and daemon above it) ignored or blocked is
/// inherited. An ignored signal survives execve (SIGPIPE, which Rust's
/// start-up ignores, and whatever a parent ignored, such as SIGQUIT or
/// libc's internal signals 32 and 33); a handled one is reset by execve
/// anyway. Raw syscalls: glibc's and musl's sigaction refuse signals 32-34.
pub fn reset_signals() -> nix::Result<()> {
    let dfl = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid kernel sigaction for SIG_DFL,
        // no old action, and the kernel's sigset size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        Errno::result(r)?;
    }
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask(SIG_SETMASK) with a valid empty set, no old
    // set, and the kernel's sigset size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        )
    };
    Errno::result(r).map(drop)
}
