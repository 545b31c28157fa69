//! The wire contracts of Carrack.
//!
//! - [`shim`]: the API between carrackd and each carrack-shim (`shim.proto`,
//!   modelled on containerd's shim v2 task API).
//! - [`cri`]: the Kubernetes CRI v1 types, clients and servers, generated
//!   from `cri/v1/api.proto`: the cri-api v0.36.3 wire (Kubernetes 1.36);
//!   `cri/v1/README.md` says what that file is made of.

mod env_value;

/// Generated code of `shim.proto` (package `carrack.shim.v1`).
#[allow(missing_docs, clippy::all)]
pub mod shim {
    tonic::include_proto!("carrack.shim.v1");
}

/// The CRI v1 API (package `runtime.v1`), generated from `cri/v1/api.proto`.
#[allow(missing_docs, clippy::all)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}
