//! Address management of the built-in network: one lease file per address
//! under `<state_dir>/<network>/`, named by the address and holding the pod
//! id and interface, so leases survive a carrackd restart and a pod's
//! addresses are found again from its id alone.
//!
//! - A lease is taken atomically: the file is written and synced under a
//!   temporary name, then hard-linked to the address's name, which fails
//!   when another pod holds it (two carrackd tasks racing for one address
//!   both see the outcome the kernel decided).
//! - Addresses are handed out round-robin after the last one given in that
//!   range (`last_reserved.<range>`), so a released address is not reused
//!   at once (conntrack entries of the old pod could still point at it).
//! - The gateway (`.1`), the network address and, for IPv4, the broadcast
//!   address are never leased.
//!
//! It knows nothing of links or rules; see the parent module.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::cidr::Cidr;

/// Errors from leasing addresses.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every pod address of the range is leased.
    #[error("no free address left in {range} ({capacity} pod addresses, all leased)")]
    Exhausted {
        /// The range, e.g. `10.88.0.0/16`.
        range: Cidr,
        /// How many pod addresses it has.
        capacity: u128,
    },
    /// A lease file could not be read, written or removed.
    #[error("lease {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The leases of one network.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    /// Leases under `<state_dir>/<network>/` (created on the first lease).
    pub fn new(state_dir: &Path, network: &str) -> Self {
        let clean: String = network
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            dir: state_dir.join(clean),
        }
    }

    /// The lease directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last_reserved_path(&self, range: &Cidr) -> PathBuf {
        self.dir.join(format!(
            "last_reserved.{}_{}",
            range.network(),
            range.prefix()
        ))
    }

    /// Every lease as (address, pod id).
    fn leases(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            // A lease removed between listing and reading is simply gone.
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let owner = text.lines().next().unwrap_or("").to_string();
                out.push((ip, owner));
            }
        }
        Ok(out)
    }

    /// The addresses leased to `pod_id`, IPv4 first.
    pub fn leases_of(&self, pod_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips: Vec<IpAddr> = self
            .leases()?
            .into_iter()
            .filter(|(_, owner)| owner == pod_id)
            .map(|(ip, _)| ip)
            .collect();
        ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        Ok(ips)
    }

    /// Leases an address of `range` to `pod_id` (the one it already holds
    /// there, if any).
    pub fn allocate(&self, pod_id: &str, ifname: &str, range: &Cidr) -> Result<IpAddr, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let leases = self.leases()?;
        if let Some((ip, _)) = leases
            .iter()
            .find(|(ip, owner)| owner == pod_id && range.contains(*ip))
        {
            return Ok(*ip);
        }
        let taken: std::collections::HashSet<IpAddr> =
            leases.into_iter().map(|(ip, _)| ip).collect();
        let last_path = self.last_reserved_path(range);
        let last = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|t| t.trim().parse::<IpAddr>().ok());
        let tmp = self.dir.join(format!(
            ".lease-{}-{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        let content = format!("{pod_id}\n{ifname}\n");
        let mut written = false;
        let mut result = None;
        for ip in range.pod_addresses_after(last) {
            if taken.contains(&ip) {
                continue;
            }
            if !written {
                let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
                f.write_all(content.as_bytes()).map_err(io(&tmp))?;
                f.sync_all().map_err(io(&tmp))?;
                written = true;
            }
            let path = self.dir.join(ip.to_string());
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    result = Some(ip);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(&path)(e));
                }
            }
        }
        if written {
            let _ = std::fs::remove_file(&tmp);
        }
        let ip = result.ok_or(IpamError::Exhausted {
            range: *range,
            capacity: range.pod_capacity(),
        })?;
        // Best effort: a lost hint only makes the next search start earlier.
        let hint_tmp = last_path.with_extension("tmp");
        if std::fs::write(&hint_tmp, ip.to_string()).is_ok() {
            let _ = std::fs::rename(&hint_tmp, &last_path);
        }
        Ok(ip)
    }

    /// Frees every address leased to `pod_id`; returns them. Idempotent.
    pub fn release(&self, pod_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        for (ip, owner) in self.leases()? {
            if owner != pod_id {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => freed.push(ip),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_distinct_addresses_and_reuses_a_pods_own() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path(), "net");
        let r = range("10.1.0.0/24");
        let a = ipam.allocate("pod-a", "eth0", &r).unwrap();
        let b = ipam.allocate("pod-b", "eth0", &r).unwrap();
        assert_eq!(a.to_string(), "10.1.0.2");
        assert_eq!(b.to_string(), "10.1.0.3");
        assert_eq!(ipam.allocate("pod-a", "eth0", &r).unwrap(), a);
        assert_eq!(ipam.leases_of("pod-a").unwrap(), vec![a]);
        let text = std::fs::read_to_string(d.path().join("net").join("10.1.0.2")).unwrap();
        assert_eq!(text, "pod-a\neth0\n");
    }

    #[test]
    fn exhaustion_names_the_range() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path(), "net");
        let r = range("10.2.0.0/29");
        for i in 0..5 {
            ipam.allocate(&format!("p{i}"), "eth0", &r).unwrap();
        }
        let e = ipam.allocate("p5", "eth0", &r).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("10.2.0.0/29"), "{e}");
        // No temporary file stays behind.
        let names: Vec<String> = std::fs::read_dir(ipam.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn release_frees_only_the_pods_addresses_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path(), "net");
        let r = range("10.3.0.0/29");
        let r6 = range("fd00:3::/120");
        let a4 = ipam.allocate("a", "eth0", &r).unwrap();
        let a6 = ipam.allocate("a", "eth0", &r6).unwrap();
        let b = ipam.allocate("b", "eth0", &r).unwrap();
        assert_eq!(ipam.leases_of("a").unwrap(), vec![a4, a6]);
        let mut freed = ipam.release("a").unwrap();
        freed.sort();
        assert_eq!(freed, vec![a4, a6]);
        assert!(ipam.release("a").unwrap().is_empty());
        assert!(ipam.release("never-set-up").unwrap().is_empty());
        assert_eq!(ipam.leases_of("b").unwrap(), vec![b]);
        // Round robin: the freed address is not handed out again at once.
        let c = ipam.allocate("c", "eth0", &r).unwrap();
        assert_ne!(c, a4);
    }

    #[test]
    fn leases_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let r = range("10.4.0.0/24");
        let a = Ipam::new(d.path(), "net")
            .allocate("a", "eth0", &r)
            .unwrap();
        // A new Ipam over the same directory (a carrackd restart).
        let again = Ipam::new(d.path(), "net");
        assert_eq!(again.leases_of("a").unwrap(), vec![a]);
        let b = again.allocate("b", "eth0", &r).unwrap();
        assert_ne!(a, b);
        assert_eq!(again.release("a").unwrap(), vec![a]);
    }

    #[test]
    fn a_new_range_gives_new_pods_its_addresses_and_old_pods_keep_theirs() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path(), "net");
        let old = range("10.5.0.0/24");
        let pod_cidr = range("10.244.7.0/24");
        let a = ipam.allocate("a", "eth0", &old).unwrap();
        let b = ipam.allocate("b", "eth0", &pod_cidr).unwrap();
        assert!(old.contains(a));
        assert!(pod_cidr.contains(b), "{b}");
        assert_eq!(ipam.leases_of("a").unwrap(), vec![a]);
        assert_eq!(ipam.release("b").unwrap(), vec![b]);
    }

    #[test]
    fn racing_allocations_never_share_an_address() {
        let d = tempfile::tempdir().unwrap();
        let r = range("10.6.0.0/24");
        let ips: Vec<IpAddr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let ipam = Ipam::new(d.path(), "net");
                    s.spawn(move || ipam.allocate(&format!("p{i}"), "eth0", &r).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 8, "{ips:?}");
    }
}
