//! The wire contracts of Carrack.
//!
//! - [`shim`]: the API between carrackd and each carrack-shim (`shim.proto`,
//!   modelled on containerd's shim v2 task API).
//! - [`cri`]: the Kubernetes CRI v1 types, clients and servers, re-exported from
//!   the `k8s-cri` crate so that every crate uses one version of them.

/// Generated code of `shim.proto` (package `carrack.shim.v1`).
#[allow(missing_docs, clippy::all)]
pub mod shim {
    tonic::include_proto!("carrack.shim.v1");
}

/// The CRI v1 API (`runtime.v1`), from the `k8s-cri` crate.
pub use k8s_cri::v1 as cri;
