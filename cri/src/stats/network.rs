//! A pod's network counters, read inside its network namespace.
//!
//! `/proc/thread-self/net/dev` lists the interfaces of the namespace of the
//! reading thread, so a short-lived thread joins the pod's pinned netns
//! (`setns`, which is per-thread for CLONE_NEWNET), reads the file and exits;
//! carrackd's own threads never change namespace.

use std::path::Path;

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
    /// The reading thread panicked.
    #[error("the thread reading network counters of {0} panicked")]
    Panicked(String),
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

/// The counters of every interface in the network namespace pinned at
/// `netns` (loopback included; callers decide what to report).
pub fn read_pod_interfaces(netns: &Path) -> Result<Vec<InterfaceCounters>, NetworkStatsError> {
    let path = netns.to_string_lossy().into_owned();
    let file = std::fs::File::open(netns).map_err(|source| NetworkStatsError::Open {
        path: path.clone(),
        source,
    })?;
    let p = path.clone();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetworkStatsError::Join {
                path: p.clone(),
                source,
            }
        })?;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|source| NetworkStatsError::Read { path: p, source })?;
        Ok(parse_net_dev(&text))
    })
    .join()
    .unwrap_or(Err(NetworkStatsError::Panicked(path)))
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
}
