//! Packet filter rules of the built-in network, through the `iptables`
//! commands (`iptables-save`, and `iptables-restore --noflush` so that a
//! pod's rules go in or out in one transaction; `ip6tables-*` for IPv6).
//! Either backend of Debian's iptables (nf_tables or legacy) works. The
//! nftables netlink crates were not taken: none is both well kept and able
//! to express masquerade and DNAT without hand-built expressions.
//!
//! Chains of a bridge's own, made once (jumps from the built-in chains):
//!
//! | table  | chain                | jumped to from                    | holds |
//! |--------|----------------------|-----------------------------------|-------|
//! | nat    | `CARRACK-HP-<br>`    | PREROUTING, OUTPUT (local dst)    | per-pod hostPort DNAT |
//! | nat    | `CARRACK-MASQ-<br>`  | POSTROUTING                       | per-pod masquerade |
//! | filter | `CARRACK-FWD-<br>`   | FORWARD (inserted first)          | accept from the bridge, and replies and DNAT to it |
//!
//! Per pod, each rule carries the comment `carrack pod <id>`, which is how
//! teardown finds exactly that pod's rules (after a restart or a crashed
//! setup too) and nothing else:
//!
//! - masquerade of the pod's address towards anything outside its range
//!   (pod-to-pod traffic in the range keeps its source);
//! - per hostPort: a DNAT from the node's local addresses (host_ip when
//!   given) to the pod, and for IPv4 a masquerade of 127.0.0.0/8 sources
//!   towards that pod port, so a hostPort answers on 127.0.0.1 (with
//!   `route_localnet`, see `bridge`).
//!
//! Not done: hairpin (a pod reaching its own hostPort through a node
//! address).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::BuiltinError;
use super::cidr::Cidr;
use crate::PortMapping;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn host_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

/// The chain names of bridge `br`: (hostport DNAT, masquerade, forward).
pub fn chains(br: &str) -> (String, String, String) {
    (
        format!("CARRACK-HP-{br}"),
        format!("CARRACK-MASQ-{br}"),
        format!("CARRACK-FWD-{br}"),
    )
}

fn pod_comment(pod_id: &str) -> String {
    format!("-m comment --comment \"carrack pod {pod_id}\"")
}

/// True when `pod_id` can go into a rule comment as it is.
pub fn valid_pod_id(pod_id: &str) -> bool {
    !pod_id.is_empty()
        && pod_id.len() <= 200
        && pod_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The `iptables-restore` input that adds the bridge's chains and jumps
/// missing from `nat` and `filter` (`iptables-save` output of each); empty
/// when all are there.
pub fn base_rules(br: &str, nat: &str, filter: &str) -> String {
    let (hp, masq, fwd) = chains(br);
    let has_chain = |save: &str, c: &str| save.lines().any(|l| l.starts_with(&format!(":{c} ")));
    let has_jump = |save: &str, from: &str, to: &str| {
        save.lines()
            .any(|l| l.starts_with(&format!("-A {from} ")) && l.ends_with(&format!("-j {to}")))
    };
    let mut nat_text = String::new();
    for c in [&hp, &masq] {
        if !has_chain(nat, c) {
            nat_text.push_str(&format!("-N {c}\n"));
        }
    }
    for from in ["PREROUTING", "OUTPUT"] {
        if !has_jump(nat, from, &hp) {
            nat_text.push_str(&format!(
                "-A {from} -m addrtype --dst-type LOCAL -m comment --comment \"carrack {br} hostports\" -j {hp}\n"
            ));
        }
    }
    if !has_jump(nat, "POSTROUTING", &masq) {
        nat_text.push_str(&format!(
            "-A POSTROUTING -m comment --comment \"carrack {br} masquerade\" -j {masq}\n"
        ));
    }
    let mut filter_text = String::new();
    if !has_chain(filter, &fwd) {
        filter_text.push_str(&format!(
            "-N {fwd}\n-A {fwd} -i {br} -j ACCEPT\n\
             -A {fwd} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n"
        ));
    }
    if !has_jump(filter, "FORWARD", &fwd) {
        filter_text.push_str(&format!(
            "-I FORWARD 1 -m comment --comment \"carrack {br} forward\" -j {fwd}\n"
        ));
    }
    let mut out = String::new();
    if !nat_text.is_empty() {
        out.push_str(&format!("*nat\n{nat_text}COMMIT\n"));
    }
    if !filter_text.is_empty() {
        out.push_str(&format!("*filter\n{filter_text}COMMIT\n"));
    }
    out
}

/// The nat rules of one pod address (`ip` in `range`) with its hostPorts.
pub fn pod_rules(
    br: &str,
    pod_id: &str,
    ip: IpAddr,
    range: &Cidr,
    ports: &[PortMapping],
) -> Vec<String> {
    let (hp, masq, _) = chains(br);
    let family = Family::of(ip);
    let host = family.host_len();
    let comment = pod_comment(pod_id);
    let mut rules = vec![format!(
        "-A {masq} -s {ip}/{host} ! -d {range} {comment} -j MASQUERADE"
    )];
    for p in ports {
        let dest = match p.host_ip.parse::<IpAddr>() {
            Ok(h) if Family::of(h) != family => continue,
            Ok(h) if h.is_unspecified() => String::new(),
            Ok(h) => format!("-d {h}/{host} "),
            Err(_) => String::new(),
        };
        let proto = &p.protocol;
        let to = match ip {
            IpAddr::V4(a) => format!("{a}:{}", p.container_port),
            IpAddr::V6(a) => format!("[{a}]:{}", p.container_port),
        };
        rules.push(format!(
            "-A {hp} {dest}-p {proto} -m {proto} --dport {} {comment} -j DNAT --to-destination {to}",
            p.host_port
        ));
        if family == Family::V4 {
            rules.push(format!(
                "-A {masq} -s 127.0.0.0/8 -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j MASQUERADE",
                p.container_port
            ));
        }
    }
    rules
}

/// The `iptables-restore` input deleting every rule of `pod_id` from the
/// bridge's chains in `nat` (`iptables-save -t nat` output); empty when
/// there is none.
pub fn pod_deletions(br: &str, pod_id: &str, nat: &str) -> String {
    let (hp, masq, _) = chains(br);
    let marker = format!("--comment \"carrack pod {pod_id}\"");
    let text: String = nat
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("-A {hp} ")) || l.starts_with(&format!("-A {masq} ")))
                && l.contains(&marker)
        })
        .map(|l| format!("-D{}\n", &l[2..]))
        .collect();
    if text.is_empty() {
        text
    } else {
        format!("*nat\n{text}COMMIT\n")
    }
}

/// `cmd` in PATH or the sbin directories (carrackd may run with a PATH
/// that lacks them).
pub fn find_command(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// The command to run for `cmd`: found as [`find_command`] does, else the
/// bare name (whose spawn error then says it is missing).
fn command(cmd: &str) -> tokio::process::Command {
    tokio::process::Command::new(find_command(cmd).unwrap_or_else(|| cmd.into()))
}

/// Runs `iptables-save -t <table>`.
pub async fn save(family: Family, table: &str) -> Result<String, BuiltinError> {
    let out = command(family.save())
        .args(["-t", table])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| BuiltinError::Rules {
            command: family.save().into(),
            message: source.to_string(),
        })?;
    if !out.status.success() {
        return Err(BuiltinError::Rules {
            command: format!("{} -t {table}", family.save()),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `iptables-restore --noflush` with `input` (nothing when empty).
pub async fn restore(family: Family, input: &str) -> Result<(), BuiltinError> {
    if input.is_empty() {
        return Ok(());
    }
    let err = |message: String| BuiltinError::Rules {
        command: format!("{} --noflush", family.restore()),
        message,
    };
    let mut child = command(family.restore())
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| err(e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} (input: {input:?})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Makes the bridge's chains and jumps where they are missing.
pub async fn ensure_base(family: Family, br: &str) -> Result<(), BuiltinError> {
    let nat = save(family, "nat").await?;
    let filter = save(family, "filter").await?;
    restore(family, &base_rules(br, &nat, &filter)).await
}

/// Removes the pod's rules of `family`; none left is fine.
pub async fn remove_pod(family: Family, br: &str, pod_id: &str) -> Result<(), BuiltinError> {
    let nat = save(family, "nat").await?;
    restore(family, &pod_deletions(br, pod_id, &nat)).await
}

/// Removes the bridge's chains and the jumps to them, and with them every
/// pod rule in them (for tests and uninstalling; carrackd keeps them).
pub async fn remove_base(family: Family, br: &str) -> Result<(), BuiltinError> {
    let (hp, masq, fwd) = chains(br);
    for (table, owned) in [("nat", vec![hp, masq]), ("filter", vec![fwd])] {
        let text = save(family, table).await?;
        let mut input = String::new();
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let chain = l.split_whitespace().nth(1).unwrap_or("");
            if owned.iter().any(|c| l.ends_with(&format!("-j {c}")))
                && !owned.iter().any(|c| c == chain)
            {
                input.push_str(&format!("-D{}\n", &l[2..]));
            }
        }
        for c in owned
            .iter()
            .filter(|c| text.lines().any(|l| l.starts_with(&format!(":{c} "))))
        {
            input.push_str(&format!("-F {c}\n-X {c}\n"));
        }
        if !input.is_empty() {
            restore(family, &format!("*{table}\n{input}COMMIT\n")).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: u16, container: u16, proto: &str, host_ip: &str) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: container,
            protocol: proto.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn base_rules_add_only_what_is_missing() {
        let all = base_rules("br0", "", "");
        assert!(all.contains("-N CARRACK-HP-br0\n"), "{all}");
        assert!(
            all.contains("-A OUTPUT -m addrtype --dst-type LOCAL"),
            "{all}"
        );
        assert!(all.contains("-I FORWARD 1"), "{all}");
        let nat = ":CARRACK-HP-br0 - [0:0]\n:CARRACK-MASQ-br0 - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"carrack br0 hostports\" -j CARRACK-HP-br0\n\
            -A OUTPUT -m addrtype --dst-type LOCAL -j CARRACK-HP-br0\n\
            -A POSTROUTING -j CARRACK-MASQ-br0\n";
        let filter = ":CARRACK-FWD-br0 - [0:0]\n-A FORWARD -j CARRACK-FWD-br0\n";
        assert_eq!(base_rules("br0", nat, filter), "");
        // Another bridge's chains do not count.
        assert!(base_rules("br1", nat, filter).contains("-N CARRACK-HP-br1"));
    }

    #[test]
    fn pod_rules_masquerade_outside_the_range_and_map_host_ports() {
        let r: Cidr = "10.9.0.0/24".parse().unwrap();
        let ip: IpAddr = "10.9.0.5".parse().unwrap();
        let rules = pod_rules(
            "br0",
            "abc",
            ip,
            &r,
            &[
                pm(8080, 80, "tcp", ""),
                pm(53, 53, "udp", "192.168.1.2"),
                pm(9, 9, "tcp", "fd00::1"),
            ],
        );
        assert_eq!(
            rules[0],
            "-A CARRACK-MASQ-br0 -s 10.9.0.5/32 ! -d 10.9.0.0/24 -m comment --comment \"carrack pod abc\" -j MASQUERADE"
        );
        assert!(rules.iter().any(
            |r| r.starts_with("-A CARRACK-HP-br0 -p tcp -m tcp --dport 8080")
                && r.ends_with("--to-destination 10.9.0.5:80")
        ));
        assert!(
            rules
                .iter()
                .any(|r| r.starts_with("-A CARRACK-HP-br0 -d 192.168.1.2/32 -p udp"))
        );
        assert!(
            rules
                .iter()
                .any(|r| r.contains("-s 127.0.0.0/8 -d 10.9.0.5/32 -p tcp -m tcp --dport 80"))
        );
        // The IPv6 host_ip does not apply to the IPv4 address.
        assert!(!rules.iter().any(|r| r.contains("--dport 9 ")), "{rules:?}");
        let r6: Cidr = "fd00:9::/64".parse().unwrap();
        let v6 = pod_rules(
            "br0",
            "abc",
            "fd00:9::5".parse().unwrap(),
            &r6,
            &[pm(8080, 80, "tcp", "")],
        );
        assert!(v6[1].ends_with("--to-destination [fd00:9::5]:80"), "{v6:?}");
        assert_eq!(v6.len(), 2, "no loopback rule for IPv6: {v6:?}");
    }

    #[test]
    fn deletions_take_exactly_the_pods_rules() {
        let nat = "*nat\n\
            -A CARRACK-MASQ-br0 -s 10.9.0.5/32 ! -d 10.9.0.0/24 -m comment --comment \"carrack pod abc\" -j MASQUERADE\n\
            -A CARRACK-MASQ-br0 -s 10.9.0.6/32 ! -d 10.9.0.0/24 -m comment --comment \"carrack pod abcd\" -j MASQUERADE\n\
            -A CARRACK-HP-br0 -p tcp -m tcp --dport 80 -m comment --comment \"carrack pod abc\" -j DNAT --to-destination 10.9.0.5:80\n\
            -A CARRACK-HP-br1 -p tcp -m tcp --dport 81 -m comment --comment \"carrack pod abc\" -j DNAT --to-destination 10.9.1.5:80\n\
            COMMIT\n";
        let d = pod_deletions("br0", "abc", nat);
        assert!(d.starts_with("*nat\n") && d.ends_with("COMMIT\n"), "{d}");
        assert_eq!(d.lines().filter(|l| l.starts_with("-D ")).count(), 2, "{d}");
        assert!(!d.contains("abcd") && !d.contains("br1"), "{d}");
        assert_eq!(pod_deletions("br0", "zzz", nat), "");
    }

    #[test]
    fn pod_ids_that_fit_a_comment() {
        assert!(valid_pod_id("0123abcdef"));
        assert!(valid_pod_id("carrack-test-network-a11"));
        assert!(!valid_pod_id("a\"b"));
        assert!(!valid_pod_id("a b"));
        assert!(!valid_pod_id(""));
    }
}
