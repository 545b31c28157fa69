//! carrack-runtime: Carrack's OCI runtime, as a library.
//!
//! It builds a container from an OCI bundle the way runc does, with runc's
//! command-line contract on top (`src/main.rs`), so that any shim that
//! drives runc drives it too. One module per concern:
//!
//! - [`spec`]: loading and validating config.json (errors name the field);
//! - [`state`]: the container's state under the runtime root;
//! - [`create`]: namespaces, the init process, the exec fifo;
//! - [`rootfs`]: mounts resolved inside the rootfs, devices, pivot_root,
//!   masked and read-only paths;
//! - [`cgroup_mount`]: the container's own cgroups as its `/sys/fs/cgroup`;
//! - [`process`]: rlimits, oom_score_adj, identity, capabilities, terminal,
//!   execve;
//! - [`ops`]: start, kill, delete, pause, resume, update, ps, stats, list;
//! - [`exec`]: a new process in a running container;
//! - [`hooks`]: OCI hooks;
//! - [`seccomp`]: `linux.seccomp` compiled to BPF and loaded
//!   before exec;
//! - [`apparmor`]: `process.apparmorProfile`, an on-exec profile change;
//! - [`spawn`]: the intermediate child, forked straight into its cgroup.
//!
//! cgroups come from the `carrack-cgroups` crate (v1, v2 and hybrid).
//! Not yet here: the systemd cgroup driver (`--systemd-cgroup` is refused
//! with a clear error) and seccomp agents (SCMP_ACT_NOTIFY).

pub mod apparmor;
pub mod cgroup_mount;
pub mod container;
pub mod error;
pub mod hooks;
pub mod init;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;

pub use container::{CreateOptions, ExecOptions, Runtime};

pub use error::{Result, RuntimeError};
