//! A pod's network counters, read inside its network namespace.
//!
//! `/proc/thread-self/net/dev` lists the interfaces of the namespace of the
//! reading thread, so one thread of its own joins each pod's pinned netns in
//! turn (`setns`, which is per-thread for CLONE_NEWNET), reads the file and
//! goes back to the namespace it started in (a thread left in a pod's
//! namespace would keep it, and its veth, alive after the pod is removed).
//! carrackd's other threads never change namespace. One long-lived thread
//! rather than one per read: kubelet asks for every pod every ten seconds.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// Counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// Errors reading a pod's network counters.
#[derive(Debug, thiserror::Error)]
pub enum NetworkStatsError {
    /// The netns file could not be opened.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// The pinned namespace file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// setns(2) failed.
    #[error("joining network namespace {path}: {source}")]
    Join {
        /// The pinned namespace file.
        path: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// /proc/thread-self/net/dev could not be read.
    #[error("reading /proc/thread-self/net/dev in {path}: {source}")]
    Read {
        /// The pinned namespace file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reading thread is gone (it could not start, or could not go
    /// back to carrackd's namespace and ended).
    #[error("reading network counters of {0}: the reading thread is gone")]
    ReaderGone(String),
}

/// Parses the text of `/proc/net/dev` (two header lines, then
/// `name: rx_bytes rx_packets rx_errs ... tx_bytes tx_packets tx_errs ...`).
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if v.len() < 11 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.trim().to_owned(),
                rx_bytes: v[0],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

type Answer = Result<Vec<InterfaceCounters>, NetworkStatsError>;

/// A read for the reading thread: the namespace, and where to answer.
struct Request {
    netns: PathBuf,
    answer: Sender<Answer>,
}

/// The reading thread's queue, started on first use.
fn reader() -> Option<&'static Sender<Request>> {
    static READER: OnceLock<Option<Sender<Request>>> = OnceLock::new();
    READER
        .get_or_init(|| {
            let home = std::fs::File::open("/proc/thread-self/ns/net")
                .inspect_err(|e| tracing::warn!("pod network stats: {e}"))
                .ok()?;
            let (tx, rx) = channel::<Request>();
            std::thread::Builder::new()
                .name("pod-netns-stats".into())
                .spawn(move || {
                    for r in rx {
                        let (answer, home_again) = read_in(&r.netns, &home);
                        let _ = r.answer.send(answer);
                        if !home_again {
                            // Ending the thread leaves the pod's namespace.
                            tracing::error!(
                                "pod network stats: stuck in a pod's network namespace"
                            );
                            return;
                        }
                    }
                })
                .inspect_err(|e| tracing::warn!("pod network stats: {e}"))
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// On the reading thread: joins `netns`, reads, and goes back `home`;
/// false when it could not go back.
fn read_in(netns: &Path, home: &std::fs::File) -> (Answer, bool) {
    let path = netns.to_string_lossy().into_owned();
    let file = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(source) => return (Err(NetworkStatsError::Open { path, source }), true),
    };
    if let Err(source) = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
        return (Err(NetworkStatsError::Join { path, source }), true);
    }
    let text = std::fs::read_to_string("/proc/thread-self/net/dev");
    let home_again = nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok();
    let answer = text
        .map(|t| parse_net_dev(&t))
        .map_err(|source| NetworkStatsError::Read { path, source });
    (answer, home_again)
}

/// The counters of every interface in the network namespace pinned at
/// `netns` (loopback included; callers decide what to report).
pub fn read_pod_interfaces(netns: &Path) -> Result<Vec<InterfaceCounters>, NetworkStatsError> {
    let gone = || NetworkStatsError::ReaderGone(netns.display().to_string());
    let (tx, rx) = channel();
    reader()
        .ok_or_else(gone)?
        .send(Request {
            netns: netns.to_owned(),
            answer: tx,
        })
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  eth0: 1234567    4321    3    0    0     0          0         0   765432     987    2    0    0     0       0          0
";

    #[test]
    fn parses_rx_tx_bytes_and_errors_per_interface() {
        let v = parse_net_dev(NET_DEV);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "lo");
        assert_eq!(
            v[1],
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1234567,
                rx_errors: 3,
                tx_bytes: 765432,
                tx_errors: 2,
            }
        );
        assert!(parse_net_dev("only\nheaders\n").is_empty());
    }

    #[test]
    fn missing_netns_is_an_error_naming_it() {
        let e = read_pod_interfaces(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }

    /// A namespace of its own pinned on a file (bind mount), removed on drop.
    struct PinnedNetns {
        dir: tempfile::TempDir,
    }

    impl PinnedNetns {
        fn new() -> PinnedNetns {
            let dir = tempfile::tempdir().unwrap();
            let pin = dir.path().join("net");
            std::fs::write(&pin, "").unwrap();
            let p = pin.clone();
            std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &p,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .unwrap();
            })
            .join()
            .unwrap();
            PinnedNetns { dir }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("net")
        }
    }

    impl Drop for PinnedNetns {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// The reading thread reads the pod's namespace and goes back to
    /// carrackd's after each read: left in a pod's, it would keep the
    /// namespace (and its veth) alive after the pod is removed.
    #[test]
    fn reads_inside_the_pods_namespace_and_goes_back() {
        if !carrack_e2e::prerequisite::require_root() {
            return;
        }
        let ns = PinnedNetns::new();
        let ifaces = read_pod_interfaces(&ns.path()).unwrap();
        // A fresh namespace has loopback only; the host has more.
        assert_eq!(
            ifaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["lo"]
        );
        let reader = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "pod-netns-stats")
            })
            .expect("the reading thread");
        assert_eq!(
            std::fs::read_link(reader.path().join("ns/net")).unwrap(),
            std::fs::read_link("/proc/self/ns/net").unwrap(),
            "the reading thread is back in carrackd's namespace"
        );
    }
}
