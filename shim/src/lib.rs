//! carrack-shim: one shim per container, in the style of containerd's shim v2.
//!
//! The shim owns its container's processes: it runs the OCI runtime
//! (carrack-runtime, runc or crun, with runc's command line), is the child
//! subreaper that reaps the container's init and exec processes, copies their
//! output into the CRI log file and to attached clients, keeps exit statuses
//! (in memory and on disk) until they are deleted, and serves the Task API of
//! `proto/shim.proto` on its own unix socket. It is started detached
//! ([`daemon::start`]), so carrackd can crash, restart or be upgraded while
//! the container keeps running; a daemon that comes back reconnects with
//! [`ShimClient::connect`].
//!
//! What it does not do: build containers (the runtime does), decide policy
//! (carrackd does), or keep state beyond its own container.

pub mod client;
pub mod cri_log;
pub mod daemon;
mod reaper;
mod runtime_cmd;
mod socket_path;
mod stdio;
mod task;

pub use client::{ShimClient, ShimError, ShimOptions, start_shim};
pub use daemon::socket_path;
