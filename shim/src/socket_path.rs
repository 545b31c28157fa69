//! Unix socket paths longer than `sockaddr_un` holds (108 bytes).
//!
//! A shim's socket is `<state>/shims/<64-hex id>/shim.sock`: with a state
//! directory longer than about 25 bytes it no longer fits. The socket is
//! then bound and dialled through `/proc/self/fd/<dir fd>/shim.sock`, the
//! same file reached through an O_PATH descriptor of its directory, so the
//! state directory can be any length.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The longest path `sockaddr_un.sun_path` takes with its terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// A path to use in bind(2) or connect(2) for `socket`: `socket` itself
/// when it fits, else a /proc/self/fd path through its directory (the
/// returned descriptor must live until the call is done).
pub fn dialable(socket: &Path) -> std::io::Result<(PathBuf, Option<OwnedFd>)> {
    if socket.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((socket.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Ok((socket.to_path_buf(), None));
    };
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let short = through_dir_fd("self", &fd, name);
    Ok((short, Some(fd)))
}

/// The path of the socket that [`dialable`] bound through `dir` (its
/// descriptor), for another process to connect to: `/proc/<this pid>/fd/…`,
/// valid while this process holds the descriptor.
pub fn dialable_by_others(dir: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    through_dir_fd(&std::process::id().to_string(), dir, name)
}

/// `/proc/<process>/fd/<dir>/<name>`: `name` in the directory `dir` names.
fn through_dir_fd(process: &str, dir: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/{process}/fd/{}", dir.as_raw_fd())).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_path_is_bound_and_dialled_through_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let socket = deep.join("shim.sock");
        assert!(socket.as_os_str().len() > SUN_PATH_MAX);
        let (p, _fd) = dialable(&socket).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(socket.exists(), "the socket is at its real path");
        let (p, _fd) = dialable(&socket).unwrap();
        std::os::unix::net::UnixStream::connect(&p).unwrap();
        let short = tmp.path().join("s.sock");
        let (p, fd) = dialable(&short).unwrap();
        assert_eq!(p, short);
        assert!(fd.is_none());
    }
}
