//! Test support shared by the integration tests of every crate and by `e2e/`.
//!
//! Kept free of heavy dependencies so that a crate can take it as a
//! dev-dependency without compiling the gRPC stack: the registry and image
//! builder modules need only tar, flate2, zstd, sha2, serde_json and bcrypt.
//! The gRPC side of the end-to-end harness (`cri_client`, and `cri_stack`,
//! the opening the tests share) is behind the `cri` feature, which only
//! this crate's own tests turn on.

pub mod apparmor;
pub mod carrackd;
#[cfg(feature = "cri")]
pub mod cri_client;
#[cfg(feature = "cri")]
pub mod cri_stack;
pub mod image_builder;
pub mod oci;
pub mod pod_network;
pub mod prerequisite;
pub mod registry;
pub mod rootfs;
pub mod tls;
