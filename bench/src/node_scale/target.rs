//! One runtime under test: its CRI clients and what identifies the
//! resources it makes on the node (its processes, mounts, bridge, CNI
//! network, cgroups), so that what it leaves behind can be counted.

use std::path::PathBuf;

use anyhow::{Context, Result};
use carrack_bench::cri_client::{connect, named};
use carrack_proto::cri::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use crate::Args;

/// A runtime under test.
pub struct Target {
    /// Its name in the report (`carrackd`, `containerd`).
    pub name: String,
    /// RuntimeService over the one connection.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService over the same connection.
    pub images: ImageServiceClient<Channel>,
    /// The daemon's PID.
    pub daemon_pid: Option<u32>,
    /// The process name of its shims.
    pub shim_comm: String,
    /// Its own directory: its shims' command lines name it, its mounts are
    /// under it.
    pub owner: PathBuf,
    /// The bridge its CNI network uses.
    pub bridge: String,
    /// Its CNI network's name (iptables rule comments carry it).
    pub network: String,
    /// host-local's data dir (one file per allocated address).
    pub ipam_dir: Option<PathBuf>,
}

impl Target {
    /// Connects to the endpoint `spec` (`NAME=unix:///path.sock`) and reads
    /// the target's other settings from `args`.
    pub async fn connect(spec: &str, args: &Args) -> Result<Target> {
        let (name, uri) = spec
            .split_once('=')
            .with_context(|| format!("--target '{spec}' must be NAME=unix:///path"))?;
        let need = |list: &[String], flag: &str| {
            named(list, name).with_context(|| format!("--{flag} {name}=… is missing"))
        };
        let channel = connect(uri).await?;
        Ok(Target {
            name: name.to_owned(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            daemon_pid: named(&args.daemon_pids, name)
                .map(|p| {
                    p.parse()
                        .with_context(|| format!("--daemon-pid {name}={p}"))
                })
                .transpose()?,
            shim_comm: need(&args.shims, "shim")?,
            owner: need(&args.owners, "owner")?.into(),
            bridge: need(&args.bridges, "bridge")?,
            network: need(&args.networks, "network")?,
            ipam_dir: named(&args.ipam_dirs, name).map(PathBuf::from),
        })
    }

    /// The cgroup parent of this target's pods: `<this>/pod-<i>`.
    pub fn cgroup_root(&self) -> String {
        format!("/node-scale-{}", self.name)
    }

    /// PIDs of its live shims.
    pub fn shims(&self) -> Vec<u32> {
        carrack_bench::procs::processes(&self.shim_comm, &self.owner.to_string_lossy())
    }
}
