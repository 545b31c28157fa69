//! Errors of the runtime library: each names the field, file or id at fault.

use std::path::PathBuf;

/// What went wrong building, starting or handling a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// config.json is missing, unreadable or invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The bundle's config.json.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A field of the spec has a value this runtime cannot apply.
    #[error("{field}: {reason}")]
    InvalidSpec {
        /// The spec field, e.g. `process.args`.
        field: String,
        /// Why.
        reason: String,
    },
    /// The container id is not usable.
    #[error("container id {0:?}: must be 1-1024 characters of [A-Za-z0-9_+.-]")]
    InvalidId(String),
    /// No container by this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    /// The container is in the wrong state for the operation.
    #[error("container {id:?} is {status}: {reason}")]
    WrongState {
        /// The container id.
        id: String,
        /// Its status.
        status: String,
        /// What was asked.
        reason: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done, with the path if any.
        what: String,
        /// The error number.
        #[source]
        source: nix::Error,
    },
    /// File I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] carrack_cgroups::CgroupError),
    /// The container's init reported a failure while it was being set up.
    #[error("container init: {0}")]
    Init(String),
    /// A hook failed.
    #[error("hook {hook} ({path}): {reason}")]
    Hook {
        /// The hook kind (prestart, createRuntime, …).
        hook: &'static str,
        /// The hook binary.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Maps a nix error to [`RuntimeError::Sys`] with context.
pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Sys { what, source }
}

/// Maps an io error to [`RuntimeError::Io`] with context.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}
