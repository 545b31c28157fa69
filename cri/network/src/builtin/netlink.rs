//! rtnetlink connections for the built-in network: one on the host, and one
//! inside a pod's network namespace (its socket is opened by a thread that
//! joined the namespace, so every request on it acts on the pod's links),
//! plus the errno of a netlink refusal.
//!
//! A connection is opened per pod operation and its task ends when the
//! handle is dropped, so no connection is tied to a runtime that outlives it.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::sys::TokioSocket;
use rtnetlink::{Error, Handle};

use super::BuiltinError;
use crate::netns;

/// A handle on the host's network namespace.
pub fn host() -> Result<Handle, BuiltinError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| BuiltinError::Io {
        what: "netlink socket",
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A handle on the network namespace pinned at `path`.
pub fn in_netns(path: &Path) -> Result<Handle, BuiltinError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    let fd = netns::run_in(path, || {
        socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )
    })?
    .map_err(|e| BuiltinError::Io {
        what: "netlink socket in the pod netns",
        source: e.into(),
    })?;
    // SAFETY: `fd` is a netlink socket this function just opened and owns;
    // into_raw_fd hands that ownership to the TokioSocket.
    let sock = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(sock);
    tokio::spawn(conn);
    Ok(handle)
}

/// The errno of a netlink error reply, if that is what `e` is.
pub fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The link called `name`, if it exists.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, BuiltinError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(BuiltinError::Netlink {
            what: format!("get link {name}"),
            source,
        }),
    }
}

/// The MAC address of a link, as `aa:bb:cc:dd:ee:ff`.
pub fn mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// The bridge a link is attached to (its controller's index).
pub fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}
