//! What a runtime's pods hold on the node, counted from the kernel's and the
//! plugins' own records: processes (shims, and anything in the pods'
//! cgroups), mounts and pinned network namespaces under the runtime's
//! directory, veths on its bridge, its CNI network's iptables rules and
//! host-local addresses, and cgroups below the pods' parent. Counted with
//! the pods running (each line must show them) and after they are removed
//! (each line must be zero).

use std::path::Path;
use std::process::Command;

use carrack_bench::procs::{processes, processes_in_cgroups};

use crate::target::Target;

/// Counts of what is held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// Shim processes.
    pub shims: usize,
    /// Processes in the pods' cgroups.
    pub pod_processes: usize,
    /// Mounts under the runtime's directory, pinned netns excluded.
    pub mounts: usize,
    /// Namespaces pinned under the runtime's directory (nsfs mounts:
    /// network, and IPC and UTS where a runtime pins those too).
    pub netns: usize,
    /// Interfaces enslaved to the runtime's bridge.
    pub veths: usize,
    /// iptables rules naming the runtime's CNI network.
    pub iptables_rules: usize,
    /// Addresses host-local holds for the network.
    pub ipam_addresses: usize,
    /// Cgroups inside the pods' cgroups (containers', in every hierarchy);
    /// the pod cgroups themselves are the bench's, as kubelet's.
    pub cgroups: usize,
}

impl Held {
    /// Counts what `t`'s pods hold now.
    pub fn count(t: &Target) -> Held {
        let owner = t.owner.to_string_lossy().into_owned();
        let (mounts, netns) = mounts_under(&owner);
        Held {
            shims: processes(&t.shim_comm, &owner).len(),
            pod_processes: processes_in_cgroups(&format!("{}/", t.cgroup_root())).len(),
            mounts,
            netns,
            veths: count_entries(&Path::new("/sys/class/net").join(&t.bridge).join("brif")),
            iptables_rules: iptables_rules_naming(&t.network),
            ipam_addresses: t
                .ipam_dir
                .as_ref()
                .map(|d| ipam_addresses(&d.join(&t.network)))
                .unwrap_or(0),
            cgroups: cgroups_below(&t.cgroup_root()),
        }
    }

    /// The lines of the report: (what, count).
    pub fn lines(&self) -> [(&'static str, usize); 8] {
        [
            ("shim processes", self.shims),
            ("processes in pod cgroups", self.pod_processes),
            ("mounts", self.mounts),
            ("pinned namespaces", self.netns),
            ("veths on the bridge", self.veths),
            ("iptables rules", self.iptables_rules),
            ("host-local addresses", self.ipam_addresses),
            ("container cgroups", self.cgroups),
        ]
    }
}

/// Mounts whose mount point is under `dir`: (others, nsfs).
fn mounts_under(dir: &str) -> (usize, usize) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut counts = (0, 0);
    for line in info.lines() {
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else { continue };
        if !point.starts_with(&prefix) {
            continue;
        }
        let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        if fstype == Some("nsfs") {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    counts
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Rules of any table that name the CNI network `network` (the bridge
/// plugin's masquerading rules carry `name: "<network>"` in a comment).
fn iptables_rules_naming(network: &str) -> usize {
    let out = match Command::new("iptables-save").output() {
        Ok(o) => o.stdout,
        Err(e) => {
            eprintln!("node-scale: iptables-save: {e}");
            return 0;
        }
    };
    let needle = format!("name: \\\"{network}\\\"");
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(&needle))
        .count()
}

/// host-local's files for allocated addresses (it keeps `lock` and
/// `last_reserved_ip.<range>` beside them).
fn ipam_addresses(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n != "lock" && !n.starts_with("last_reserved_ip")
        })
        .count()
}

/// Cgroup directories inside the pod cgroups below `root`, in every
/// hierarchy.
fn cgroups_below(root: &str) -> usize {
    let mut n = 0;
    // v1 hierarchies (their aliases, such as cpu -> cpu,cpuacct, are
    // symlinks and not counted twice) and the v2 one of a hybrid host.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        if h.file_type().is_ok_and(|t| t.is_dir()) {
            n += inside_pods(&h.path().join(root.trim_start_matches('/')));
        }
    }
    // A pure cgroup v2 host has the tree at the top.
    n + inside_pods(&Path::new("/sys/fs/cgroup").join(root.trim_start_matches('/')))
}

/// Directories below the subdirectories (the pods) of `dir`.
fn inside_pods(dir: &Path) -> usize {
    subdirs(dir).map(|pod| count_dirs(&pod)).sum()
}

fn subdirs(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// Directories below `dir`, at any depth.
fn count_dirs(dir: &Path) -> usize {
    subdirs(dir).map(|d| 1 + count_dirs(&d)).sum()
}
