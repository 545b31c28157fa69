//! The parent ↔ child channel during create and exec: a socketpair carrying
//! short text messages, one per datagram (SOCK_SEQPACKET keeps boundaries).
//!
//! Messages: `pid <n>` (the init's pid, from the intermediate child),
//! `mapped` (the parent wrote the user namespace maps), `go` (the parent
//! placed the child in its cgroup), `ready` (the init is set up and waits on
//! the exec fifo) and `error <text>`.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};

use crate::error::{Result, RuntimeError, sys};

/// One end of the channel.
#[derive(Debug)]
pub struct Channel(pub OwnedFd);

/// A connected pair: (parent's end, child's end). Both close on exec.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    Ok((Channel(a), Channel(b)))
}

/// The largest message; a seqpacket message is received whole or cut.
pub const MAX_MESSAGE: usize = 128 * 1024;

impl Channel {
    /// Sends one message.
    pub fn send(&self, msg: &str) -> Result<()> {
        send(self.0.as_raw_fd(), msg.as_bytes(), MsgFlags::empty())
            .map_err(sys("sending to the container init"))?;
        Ok(())
    }

    /// Receives one message; an empty one means the other end closed.
    pub fn recv(&self) -> Result<String> {
        // Big enough for the container's state JSON (annotations included),
        // which startContainer hooks get through this channel.
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = loop {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                r => break r.map_err(sys("receiving from the container init"))?,
            }
        };
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Receives a message and fails on `error …` or a closed channel.
    pub fn expect(&self, what: &str) -> Result<String> {
        let msg = self.recv()?;
        if let Some(err) = msg.strip_prefix("error ") {
            return Err(RuntimeError::Init(err.to_owned()));
        }
        if msg.is_empty() {
            return Err(RuntimeError::Init(format!(
                "the container process exited before {what}"
            )));
        }
        Ok(msg)
    }
}
