//! Pinned network namespaces: a file bind-mounted over `/proc/<tid>/ns/net`
//! of a thread that unshared `CLONE_NEWNET`, so the namespace outlives the
//! thread and every container of the pod can join it by path.
//!
//! A namespace is created in a short-lived thread (unsharing on a runtime
//! thread would move that thread for good); its loopback is brought up with
//! the `SIOCSIFFLAGS` ioctl before the thread ends. [`run_in`] runs a closure
//! in a fresh thread that has joined the namespace with `setns`, which is how
//! callers open sockets or netlink connections inside a pod.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Errors from creating, entering or removing a pinned network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The pin file or its directory could not be created.
    #[error("netns {path}: cannot create pin file: {source}")]
    PinFile {
        /// Pin path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("netns {path}: {op} failed: {source}")]
    Sys {
        /// Pin path.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// Errno.
        source: nix::Error,
    },
    /// The pin path exists and is already a namespace.
    #[error("netns {0}: already exists")]
    Exists(PathBuf),
    /// The helper thread panicked.
    #[error("netns {0}: helper thread panicked")]
    ThreadPanicked(PathBuf),
}

fn sys<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(nix::Error) -> NetNsError + 'a {
    move |source| NetNsError::Sys {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// True when `path` is a pinned network namespace (an nsfs bind mount).
pub fn exists(path: &Path) -> bool {
    // An nsfs file reports the nsfs magic; a plain file does not.
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates a new network namespace pinned at `path` (the parent directory is
/// created), with its loopback interface up. Fails with
/// [`NetNsError::Exists`] when `path` already pins a namespace.
pub fn create(path: &Path) -> Result<(), NetNsError> {
    if exists(path) {
        return Err(NetNsError::Exists(path.to_path_buf()));
    }
    let pin_err = |source| NetNsError::PinFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(pin_err)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(pin_err)?;
    let owned = path.to_path_buf();
    let res = std::thread::spawn(move || -> Result<(), NetNsError> {
        let path = owned.as_path();
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys(path, "unshare(CLONE_NEWNET)"))?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let src = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(src.as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(path, "bind mount"))?;
        loopback_up().map_err(sys(path, "loopback up"))
    })
    .join()
    .map_err(|_| NetNsError::ThreadPanicked(path.to_path_buf()))?;
    if res.is_err() {
        let _ = remove(path);
    }
    res
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<(), nix::Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: the fd is a live socket and req a valid ifreq for SIOCGIFFLAGS.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, for SIOCSIFFLAGS.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Unmounts and deletes the pin file. Idempotent: a missing file or a file
/// that is no longer a mount is fine.
pub fn remove(path: &Path) -> Result<(), NetNsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(sys(path, "umount")(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetNsError::PinFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f` on a new thread that has joined the namespace pinned at `path`,
/// and returns its value. Sockets opened by `f` stay in that namespace.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetNsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = File::open(path).map_err(|source| NetNsError::PinFile {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(sys(path, "setns"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetNsError::ThreadPanicked(path.to_path_buf()))?
    })
}
