//! Test pod networks for end-to-end tests: a CNI conf dir of the test's
//! own (never the host's /etc/cni), a bridge and a private /24 picked by the
//! test so that tests running in parallel never share one, the
//! `[network]` TOML for carrackd, and counts of what pods leave on the host
//! (veths on the bridge, leases, iptables rules) to prove nothing leaks.
//! Drop deletes the bridge and the conf dir.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One test's network: bridge `ctnet<N>`, subnet `10.211.<N>.0/24`.
pub struct TestNetwork {
    /// The index the test picked (unique per test).
    pub index: u8,
    /// Bridge name on the host.
    pub bridge: String,
    /// The pods' IPv4 range.
    pub subnet: String,
    /// The CNI conf dir handed to carrackd (empty unless the test writes one).
    pub conf_dir: PathBuf,
}

impl TestNetwork {
    /// A network for test number `index` (each test file and test picks a
    /// distinct one).
    pub fn new(index: u8) -> TestNetwork {
        let conf_dir =
            std::env::temp_dir().join(format!("carrack-e2e-net.d-{}-{index}", std::process::id()));
        std::fs::create_dir_all(&conf_dir).expect("CNI conf dir");
        TestNetwork {
            index,
            bridge: format!("ctnet{index}"),
            subnet: format!("10.211.{index}.0/24"),
            conf_dir,
        }
    }

    /// The address prefix of the subnet, e.g. `10.211.4.`.
    pub fn prefix(&self) -> String {
        format!("10.211.{}.", self.index)
    }

    /// An IPv6 range of this network's own, for dual-stack tests.
    pub fn subnet_v6(&self) -> String {
        format!("fd00:211:{}::/64", self.index)
    }

    /// The address prefix of [`Self::subnet_v6`].
    pub fn prefix_v6(&self) -> String {
        format!("fd00:211:{}:", self.index)
    }

    /// carrackd's `[network]` section: this conf dir, the Debian plugins,
    /// and the built-in network on this bridge and subnet.
    pub fn carrackd_toml(&self) -> String {
        format!(
            "[network]\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\"]\n\
             [network.builtin]\nbridge = \"{}\"\nsubnet = \"{}\"\n",
            self.conf_dir.display(),
            self.bridge,
            self.subnet
        )
    }

    /// Writes a CNI conflist (named `name`) into the conf dir.
    pub fn write_conflist(&self, name: &str, json: &str) {
        std::fs::write(self.conf_dir.join(name), json).expect("write conflist");
    }

    /// The host-side veths attached to the bridge.
    pub fn veths(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// iptables and ip6tables rules (every table) that mention this
    /// network's subnets or any of `ids`.
    pub fn iptables_rules(&self, ids: &[String]) -> Vec<String> {
        let mut rules = Vec::new();
        for (save, prefix) in [
            ("iptables-save", self.prefix()),
            ("ip6tables-save", self.prefix_v6()),
        ] {
            let out = Command::new(save).output().expect("iptables-save");
            rules.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .filter(|l| l.contains(&prefix) || ids.iter().any(|id| l.contains(id.as_str())))
                    .map(str::to_owned),
            );
        }
        rules
    }
}

/// Lease files (one per allocated address) of host-local under `dir`
/// (its `dataDir`), whatever the network name.
pub fn leases(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(net.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                out.push(f.path());
            }
        }
    }
    out
}

/// The iptables-restore input (one per table) that removes every rule
/// mentioning `prefix` and the per-pod chains (`CNI-*`, not the shared
/// `CNI-HOSTPORT-*`) they jump to or live in, with every jump to those.
fn iptables_cleanup(save: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut table = String::new();
    let mut rules: Vec<&str> = Vec::new();
    let flush = |table: &str, rules: &[&str], out: &mut Vec<String>| {
        let chain_of = |r: &str| r.split_whitespace().nth(1).unwrap_or("").to_owned();
        let target_of = |r: &str| {
            r.split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or("")
                .to_owned()
        };
        let per_pod = |c: &str| c.starts_with("CNI-") && !c.starts_with("CNI-HOSTPORT-");
        let mut chains = std::collections::BTreeSet::new();
        for r in rules.iter().filter(|r| r.contains(prefix)) {
            for c in [chain_of(r), target_of(r)] {
                if per_pod(&c) {
                    chains.insert(c);
                }
            }
        }
        let mut text = String::new();
        for r in rules {
            let chain = chain_of(r);
            if chains.contains(&chain) {
                continue;
            }
            if r.contains(prefix) || chains.contains(&target_of(r)) {
                text.push_str(&format!("-D{}\n", &r[2..]));
            }
        }
        for c in &chains {
            text.push_str(&format!("-F {c}\n-X {c}\n"));
        }
        if !text.is_empty() {
            out.push(format!("*{table}\n{text}COMMIT\n"));
        }
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
            rules.clear();
        } else if line.starts_with("-A ") {
            rules.push(line);
        } else if line == "COMMIT" {
            flush(&table, &rules, &mut out);
            rules.clear();
        }
    }
    out
}

/// Removes what pods on `prefix` left in iptables (`ip6`: ip6tables) when
/// a test failed before tearing its pods down; best effort.
fn remove_iptables_rules(prefix: &str, ip6: bool) {
    let (save, restore) = if ip6 {
        ("ip6tables-save", "ip6tables-restore")
    } else {
        ("iptables-save", "iptables-restore")
    };
    let Ok(save) = Command::new(save).output() else {
        return;
    };
    for input in iptables_cleanup(&String::from_utf8_lossy(&save.stdout), prefix) {
        let child = Command::new(restore)
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut c) = child {
            if let Some(mut stdin) = c.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(input.as_bytes());
            }
            let _ = c.wait();
        }
    }
}

/// The iptables-restore input (one per table) that removes the chains
/// carrackd's built-in network made for `bridge` (`CARRACK-*-<bridge>`)
/// and the jumps to them.
fn bridge_chains_cleanup(save: &str, bridge: &str) -> Vec<String> {
    let suffix = format!("-{bridge}");
    let owned = |c: &str| c.starts_with("CARRACK-") && c.ends_with(&suffix);
    let mut out = Vec::new();
    let mut table = "";
    let mut text = String::new();
    let mut chains = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
            text.clear();
            chains.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let c = decl.split_whitespace().next().unwrap_or("");
            if owned(c) {
                chains.push(c.to_owned());
            }
        } else if line.starts_with("-A ") {
            let mut words = line.split_whitespace();
            let chain = words.nth(1).unwrap_or("");
            let target = line.rsplit_once("-j ").map(|(_, t)| t.trim()).unwrap_or("");
            if !owned(chain) && owned(target) {
                text.push_str(&format!("-D{}\n", &line[2..]));
            }
        } else if line == "COMMIT" {
            for c in &chains {
                text.push_str(&format!("-F {c}\n-X {c}\n"));
            }
            if !text.is_empty() {
                out.push(format!("*{table}\n{text}COMMIT\n"));
            }
            text.clear();
            chains.clear();
        }
    }
    out
}

/// Feeds each of `inputs` to `restore --noflush`; best effort.
fn restore_noflush(restore: &str, inputs: Vec<String>) {
    for input in inputs {
        let child = Command::new(restore)
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut c) = child {
            if let Some(mut stdin) = c.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(input.as_bytes());
            }
            let _ = c.wait();
        }
    }
}

/// Removes the built-in network's chains of `bridge` (both families).
fn remove_bridge_chains(bridge: &str) {
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        if let Ok(out) = Command::new(save).output() {
            let inputs = bridge_chains_cleanup(&String::from_utf8_lossy(&out.stdout), bridge);
            restore_noflush(restore, inputs);
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        remove_iptables_rules(&self.prefix(), false);
        remove_iptables_rules(&self.prefix_v6(), true);
        remove_bridge_chains(&self.bridge);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_removes_the_subnets_rules_and_per_pod_chains_only() {
        let save = "*nat\n:CNI-aaa - [0:0]\n:CNI-DN-bbb - [0:0]\n\
            -A POSTROUTING -s 10.211.4.2/32 -m comment --comment \"id: x\" -j CNI-aaa\n\
            -A POSTROUTING -s 10.211.40.2/32 -j CNI-other\n\
            -A CNI-aaa -d 10.211.4.0/24 -j ACCEPT\n\
            -A CNI-DN-bbb -s 10.211.4.0/24 -p tcp -j CNI-HOSTPORT-SETMARK\n\
            -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat id: x\" -j CNI-DN-bbb\n\
            -A CNI-HOSTPORT-SETMARK -j MARK --set-xmark 0x2000/0x2000\n\
            COMMIT\n*filter\n-A FORWARD -j ACCEPT\nCOMMIT\n";
        let out = iptables_cleanup(save, "10.211.4.");
        assert_eq!(out.len(), 1, "{out:?}");
        let text = &out[0];
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        assert!(text.contains("-D POSTROUTING -s 10.211.4.2/32"), "{text}");
        assert!(text.contains("-D CNI-HOSTPORT-DNAT -p tcp"), "{text}");
        assert!(text.contains("-F CNI-aaa\n-X CNI-aaa\n"), "{text}");
        assert!(text.contains("-X CNI-DN-bbb\n"), "{text}");
        assert!(!text.contains("10.211.40."), "{text}");
        assert!(!text.contains("SETMARK -j MARK"), "{text}");
    }

    #[test]
    fn bridge_cleanup_removes_only_that_bridges_chains_and_jumps() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:CARRACK-HP-ctnet4 - [0:0]\n:CARRACK-HP-ctnet40 - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j CARRACK-HP-ctnet4\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j CARRACK-HP-ctnet40\n\
            -A CARRACK-HP-ctnet4 -p tcp -j DNAT --to-destination 10.211.4.2:80\n\
            COMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        let out = bridge_chains_cleanup(save, "ctnet4");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            out[0],
            "*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -j CARRACK-HP-ctnet4\n\
             -F CARRACK-HP-ctnet4\n-X CARRACK-HP-ctnet4\nCOMMIT\n"
        );
    }
}
