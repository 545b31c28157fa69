//! What the benchmarks share: a CRI client over a unix socket, the pod and
//! container configs they send, figures read from `/proc`, and percentiles.
//!
//! `cri-bench` (src/main.rs) times pod lifecycles one after another;
//! `node-scale` (src/node_scale/) starts a whole node's pods at once and
//! polls them as kubelet does.

pub mod cri_client;
pub mod pods;
pub mod procs;
pub mod quantiles;
