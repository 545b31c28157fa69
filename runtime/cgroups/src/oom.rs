//! Watching a cgroup for OOM kills, so the shim can report OOMKilled.
//!
//! v1: an eventfd registered on `memory.oom_control` through
//! `cgroup.event_control`; it becomes readable on every OOM event. v2: an
//! inotify watch on `memory.events`, whose `oom_kill` counter says whether
//! the event was a kill. Either way the watcher is a file descriptor to put
//! in the caller's event loop, and [`OomWatcher::oom_kills`] reads the count.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::{CgroupError, Result, io_err};
use crate::read_optional;
use crate::stats::parse_flat_keyed;

/// A pollable descriptor that becomes readable on the cgroup's OOM events.
#[derive(Debug)]
pub struct OomWatcher {
    fd: OwnedFd,
    /// The file holding the `oom_kill` counter.
    counter_file: PathBuf,
    /// Keeps the v1 memory.oom_control open for as long as the registration lives.
    _oom_control: Option<std::fs::File>,
}

impl OomWatcher {
    pub(crate) fn v1(dir: &Path) -> Result<OomWatcher> {
        let control_path = dir.join("memory.oom_control");
        let control = std::fs::File::open(&control_path).map_err(io_err("open", &control_path))?;
        // SAFETY: eventfd(2) with valid flags; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io_err("eventfd", dir)(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor this function owns from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let event_control = dir.join("cgroup.event_control");
        crate::write_file(
            &event_control,
            &format!("{} {}", fd.as_raw_fd(), control.as_raw_fd()),
        )?;
        Ok(OomWatcher {
            fd,
            counter_file: control_path,
            _oom_control: Some(control),
        })
    }

    pub(crate) fn v2(dir: &Path) -> Result<OomWatcher> {
        let events = dir.join("memory.events");
        // SAFETY: inotify_init1(2) with valid flags; the result is checked below.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return Err(io_err("inotify_init1", dir)(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor this function owns from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c_path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
            .map_err(|_| CgroupError::Detect(format!("NUL in {}", events.display())))?;
        // SAFETY: valid inotify fd and NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(io_err("inotify_add_watch", &events)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(OomWatcher {
            fd,
            counter_file: events,
            _oom_control: None,
        })
    }

    /// How many processes the OOM killer has killed in this cgroup so far.
    /// Compare with an earlier value to tell whether an exit was an OOM kill.
    pub fn oom_kills(&self) -> Result<u64> {
        let text = read_optional(&self.counter_file).ok_or_else(|| CgroupError::Io {
            op: "read",
            path: self.counter_file.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        Ok(parse_flat_keyed(&text)
            .get("oom_kill")
            .copied()
            .unwrap_or(0))
    }

    /// Whether the watcher's event comes before the kill is counted (cgroup
    /// v1: memory.oom_control signals as the cgroup runs out of memory).
    /// On v2 memory.events changes again once `oom_kill` has moved, and
    /// also on events that are no kill (`high`, `max`).
    pub fn signals_before_the_kill(&self) -> bool {
        self._oom_control.is_some()
    }

    /// On cgroup v2, the `oom_kill` counter of the cgroup's parent, which
    /// counts the kills in all of its children, this cgroup's included: what
    /// is left to read once this cgroup has been removed (systemd removes a
    /// scope as soon as its processes are gone). `None` on v1, whose counter
    /// is the cgroup's own.
    pub fn parent_oom_kills(&self) -> Option<u64> {
        if self.signals_before_the_kill() {
            return None;
        }
        let file = self.counter_file.parent()?.parent()?.join("memory.events");
        let text = read_optional(&file)?;
        parse_flat_keyed(&text).get("oom_kill").copied()
    }

    /// Drains the pending notifications after the descriptor polled readable.
    /// Returns whether there was any (false: spurious wakeup).
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: reading into a stack buffer of the given length from our own fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

impl AsFd for OomWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for OomWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
