//! Port-forward's far end: a TCP connection to a port on the pod's
//! loopback, dialled from inside the pod's network namespace.
//!
//! The socket is made by a short-lived thread of its own that joins the
//! namespace (setns) and then ends: a socket stays in the namespace it was
//! created in, and no tokio worker thread ever changes namespace. A pod on
//! the host network (no pinned netns) is dialled from the host.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use carrack_streaming::{AsyncReadWrite, BackendError};

use super::SessionTargets;

/// How long the dial in the namespace may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies `stream` to and from `port` in the pod of `sandbox_id`.
pub(super) async fn forward(
    d: &dyn SessionTargets,
    sandbox_id: &str,
    port: u16,
    mut stream: Box<dyn AsyncReadWrite>,
) -> Result<(), BackendError> {
    let netns = d.pod_netns(sandbox_id)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("port-forward-{port}"))
        .spawn(move || {
            let _ = tx.send(dial_in_netns(&netns, port));
        })
        .map_err(|e| BackendError::Failed(format!("spawning the dialling thread: {e}")))?;
    let tcp = rx
        .await
        .map_err(|_| BackendError::Failed("the dialling thread died".into()))?
        .map_err(|e| {
            BackendError::Failed(format!(
                "connecting to port {port} in the network of pod {sandbox_id}: {e}"
            ))
        })?;
    let mut tcp = tokio::net::TcpStream::from_std(tcp)
        .map_err(|e| BackendError::Failed(format!("port {port}: {e}")))?;
    // A reset or a half-close from either side just ends the connection.
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
    Ok(())
}

/// Joins `netns` (empty: stays in the host's) and connects to the port on
/// loopback, IPv4 first. Runs on a thread that ends right after.
fn dial_in_netns(netns: &str, port: u16) -> std::io::Result<TcpStream> {
    if !netns.is_empty() {
        let ns = std::fs::File::open(netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::other(format!("setns {netns}: {e}")))?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = match TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(t) => t,
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e4)?
        }
    };
    tcp.set_nonblocking(true)?;
    Ok(tcp)
}
