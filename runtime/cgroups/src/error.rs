//! The errors of this crate.

use std::path::PathBuf;

/// What went wrong with a cgroup operation; each variant names the file or value.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` or `/proc/self/cgroup` could not be read or parsed.
    #[error("cannot detect the cgroup hierarchy: {0}")]
    Detect(String),
    /// The `linux.cgroupsPath` is not of a form the cgroupfs driver takes.
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A resource value cannot be expressed on this hierarchy.
    #[error("linux.resources.{field}: {reason}")]
    InvalidResource {
        /// The OCI field, e.g. `memory.limit`.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading, writing or creating a cgroup file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done: "write", "read", "mkdir", "rmdir".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// Writing a value to a cgroup file was refused by the kernel.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The file written.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file held something this crate cannot parse.
    #[error("parsing {path}: unexpected content {content:?}")]
    Parse {
        /// The file read.
        path: PathBuf,
        /// What it held (truncated).
        content: String,
    },
    /// A controller the request needs is not available on this host.
    #[error(
        "controller {0} is not available on this host (not mounted on cgroup v1, not enabled on cgroup v2)"
    )]
    ControllerMissing(String),
    /// The freezer did not reach the requested state in time.
    #[error("cgroup {path}: freezer did not reach {state} in time")]
    FreezeTimeout {
        /// The freezer's cgroup directory.
        path: PathBuf,
        /// FROZEN or THAWED.
        state: &'static str,
    },
    /// Loading or attaching the cgroup v2 device eBPF program failed.
    #[error("cgroup v2 device filter: {0}")]
    DeviceFilter(String),
    /// systemd refused or failed a request of the systemd cgroup driver.
    #[error("systemd: {op} {unit}: {reason}")]
    Systemd {
        /// The unit, e.g. `cri-carrack-<id>.scope`.
        unit: String,
        /// What was asked: "starting", "stopping", …
        op: &'static str,
        /// systemd's answer.
        reason: String,
    },
    /// The cgroup still has processes and cannot be removed.
    #[error("cgroup {0} still has processes")]
    Busy(PathBuf),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, CgroupError>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.into();
    move |source| CgroupError::Io { op, path, source }
}
