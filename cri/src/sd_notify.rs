//! systemd's readiness protocol (sd_notify(3)) for the unit's `Type=notify`:
//! carrackd tells systemd "READY=1" once its CRI socket accepts connections,
//! so that `systemctl start carrackd` returns, and units ordered after it
//! (`Before=kubelet.service`) start, only when CRI is served; and
//! "STOPPING=1" when it shuts down.
//!
//! The socket comes from `NOTIFY_SOCKET`, which [`Notifier::from_env`] also
//! takes out of the environment: the shims and runtimes carrackd starts must
//! not inherit it (runc, given one, forwards it into the container and waits
//! for the container's own READY).

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send notifications; none when not started by systemd.
#[derive(Debug, Default)]
pub struct Notifier(Option<OsString>);

impl Notifier {
    /// Takes `NOTIFY_SOCKET` out of the environment.
    ///
    /// # Safety
    /// Changes the environment: call while the process has one thread.
    pub unsafe fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        // SAFETY: the caller guarantees no other thread reads or writes the
        // environment.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        Notifier(socket.filter(|s| !s.is_empty()))
    }

    /// A notifier that sends to `socket` (a path, or `@name` for an
    /// abstract socket).
    pub fn to(socket: impl Into<OsString>) -> Notifier {
        Notifier(Some(socket.into()))
    }

    /// Tells systemd the service is ready.
    pub fn ready(&self) -> io::Result<()> {
        self.send(b"READY=1")
    }

    /// Tells systemd the service is stopping.
    pub fn stopping(&self) -> io::Result<()> {
        self.send(b"STOPPING=1")
    }

    fn send(&self, state: &[u8]) -> io::Result<()> {
        let Some(socket) = &self.0 else {
            return Ok(());
        };
        let bytes = socket.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(socket))?,
        };
        UnixDatagram::unbound()?.send_to_addr(state, &addr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_stopping_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.as_os_str());
        n.ready().unwrap();
        n.stopping().unwrap();
        let mut buf = [0u8; 64];
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn abstract_sockets_are_named_with_an_at() {
        let name = format!("carrack-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(format!("@{name}")).ready().unwrap();
        let mut buf = [0u8; 64];
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        Notifier::default().ready().unwrap();
    }
}
