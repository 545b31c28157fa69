//! Test support shared by the integration tests of every crate and by `e2e/`.
//!
//! Kept free of heavy dependencies (std only) so that a crate can take it as a
//! dev-dependency without compiling the gRPC stack. What needs more (a CRI
//! client, a registry) lives in modules behind their own small dependencies.

pub mod prerequisite;
pub mod rootfs;
