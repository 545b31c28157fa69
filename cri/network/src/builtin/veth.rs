//! A pod's veth pair: the host end (`veth` + a hash of the pod id, so
//! teardown finds it from the id alone, even after a crash or a restart)
//! attached to the bridge, and the pod end created directly inside the
//! pod's network namespace under its final name (`eth0`): one netlink
//! request, no temporary name on the host, no rename. Then, inside the pod:
//! its addresses, the link and `lo` up, and a default route per family via
//! the bridge's gateway.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::BuiltinError;
use super::bridge::add_address;
use super::netlink::{errno, link_by_name, mac};

/// The host-side veth name of a pod: `veth` and 11 hex digits of a hash of
/// its id (15 bytes, the kernel's limit).
pub fn host_name(pod_id: &str) -> String {
    // FNV-1a: stable across builds and Rust versions (DefaultHasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", h >> 20)
}

/// One address of the pod, with the range's prefix and gateway.
#[derive(Debug, Clone, Copy)]
pub struct PodAddress {
    /// The pod's address.
    pub ip: IpAddr,
    /// Prefix length of its range.
    pub prefix: u8,
    /// The bridge's address in that range.
    pub gateway: IpAddr,
}

/// Creates the pair: `host` on the bridge `bridge_index`, up; `ifname` in
/// the namespace pinned at `netns`. Returns the host end's MAC.
pub async fn create(
    handle: &Handle,
    host: &str,
    bridge_index: u32,
    netns: &Path,
    ifname: &str,
) -> Result<String, BuiltinError> {
    let ns = std::fs::File::open(netns).map_err(|source| BuiltinError::Io {
        what: "open pod netns",
        source,
    })?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ifname.to_string())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge_index)
        .up()
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|source| BuiltinError::Netlink {
            what: format!("create veth {host} with {ifname} in {}", netns.display()),
            source,
        })?;
    drop(ns);
    let link = link_by_name(handle, host)
        .await?
        .ok_or_else(|| BuiltinError::Gone(format!("veth {host}")))?;
    Ok(mac(&link))
}

/// Inside the pod (`handle` is in its netns): addresses on `ifname`, the
/// link and `lo` up, default routes. Returns the pod end's MAC.
pub async fn configure_pod(
    handle: &Handle,
    ifname: &str,
    addrs: &[PodAddress],
) -> Result<String, BuiltinError> {
    let nl = |what: String| move |source| BuiltinError::Netlink { what, source };
    let link = link_by_name(handle, ifname)
        .await?
        .ok_or_else(|| BuiltinError::Gone(format!("{ifname} in the pod")))?;
    let index = link.header.index;
    for a in addrs {
        add_address(handle, index, a.ip, a.prefix)
            .await
            .map_err(nl(format!("add {}/{} to {ifname}", a.ip, a.prefix)))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {ifname} up")))?;
    if let Some(lo) = link_by_name(handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(nl("set lo up".into()))?;
    }
    for a in addrs {
        let any = if a.ip.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .and_then(|b| b.gateway(a.gateway))
            .map_err(|e| BuiltinError::Route(e.to_string()))?
            .output_interface(index)
            .build();
        handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("add default route via {}", a.gateway)))?;
    }
    Ok(mac(&link))
}

/// Deletes the host end (the kernel deletes the pod end with it); a veth
/// that is already gone is fine.
pub async fn delete(handle: &Handle, host: &str) -> Result<(), BuiltinError> {
    let Some(link) = link_by_name(handle, host).await? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(source) => Err(BuiltinError::Netlink {
            what: format!("delete veth {host}"),
            source,
        }),
    }
}
