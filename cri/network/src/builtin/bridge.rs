//! The built-in network's host bridge: created on first use (through
//! rtnetlink), up, holding the gateway address (`.1`) of every range pods
//! get addresses from, with IPv4 forwarding (and IPv6 forwarding when a
//! range is IPv6) and `route_localnet` on, which the hostPort DNAT from
//! 127.0.0.1 needs (the kernel drops a packet with a loopback source
//! routed out of a non-loopback device otherwise).
//!
//! The bridge is shared by every pod and never deleted by carrackd.

use std::net::IpAddr;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::BuiltinError;
use super::cidr::Cidr;
use super::netlink::{errno, link_by_name, mac};

/// Makes sure the bridge exists, is up and holds the gateways of `ranges`;
/// returns its interface index and MAC.
pub async fn ensure(
    handle: &Handle,
    name: &str,
    ranges: &[Cidr],
) -> Result<(u32, String), BuiltinError> {
    let nl = |what: String| move |source| BuiltinError::Netlink { what, source };
    let link = match link_by_name(handle, name).await? {
        Some(l) => l,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                // Another pod's setup made it in the meantime.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("create bridge {name}"))(e)),
            }
            link_by_name(handle, name)
                .await?
                .ok_or_else(|| BuiltinError::Gone(format!("bridge {name}")))?
        }
    };
    let index = link.header.index;
    if !link.header.flags.contains(LinkFlags::Up) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("set bridge {name} up")))?;
    }
    for r in ranges {
        add_address(handle, index, r.gateway(), r.prefix())
            .await
            .map_err(nl(format!(
                "add gateway {}/{} to {name}",
                r.gateway(),
                r.prefix()
            )))?;
    }
    set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"),
        "1",
    )?;
    if ranges.iter().any(|r| !r.is_ipv4()) {
        set_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok((index, mac(&link)))
}

/// Adds (or keeps) `ip/prefix` on link `index`; IPv6 addresses skip
/// duplicate address detection, so they are usable at once.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    prefix: u8,
) -> Result<(), rtnetlink::Error> {
    let mut req = handle.address().add(index, ip, prefix).replace();
    if ip.is_ipv6() {
        let msg = req.message_mut();
        msg.header.family = AddressFamily::Inet6;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

/// Writes a sysctl unless it already has that value.
fn set_sysctl(path: &str, value: &str) -> Result<(), BuiltinError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| BuiltinError::Sysctl {
        path: path.into(),
        source,
    })
}
