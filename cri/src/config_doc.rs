//! `carrackd config default`: the effective configuration as TOML with a
//! comment above every key and table, so the output is also the
//! documented reference config (`deploy/config.toml` is this output for
//! the install paths).
//!
//! The comments live in one table here, keyed by the key's dotted path
//! (`*` for a map entry such as a runtime handler's or a registry's name),
//! and are woven into the serialised TOML line by line. A key that has no
//! entry is a bug: the tests fail on it, so a new key cannot go
//! undocumented. (toml_edit could attach decor to items, but the TOML that
//! serde writes is simple enough to annotate by its lines, and that keeps
//! one TOML crate in the tree.)

use crate::config::Config;

/// Key path → comment lines. Optional keys that are absent by default
/// carry their example in the comment of their table.
const DOCS: &[(&str, &str)] = &[
    (
        "root",
        "Persistent state: carrack.db (SQLite), content/ (blobs), snapshots/,\ncontainers/<id>/ (bundles), sandboxes/<id>/ (hostname, hosts, resolv.conf).",
    ),
    (
        "state",
        "Volatile state: shims/<id>/ (shim socket, pid, exit file), netns/,\nand the runtimes' roots when they sit under it.",
    ),
    (
        "socket",
        "The CRI socket kubelet and crictl connect to (created root-only, 0660).",
    ),
    (
        "default_runtime",
        "The runtime handler of pods that name none (RuntimeClass handler \"\").",
    ),
    (
        "shim_binary",
        "The carrack-shim binary started once per container.",
    ),
    (
        "cgroup_driver",
        "The cgroup driver, as kubelet's cgroupDriver must be: \"systemd\" (pods are\nslices, containers transient scopes of systemd), \"cgroupfs\", or \"auto\":\nsystemd when systemd is PID 1, else cgroupfs. RuntimeConfig reports it.",
    ),
    (
        "cgroup_parent",
        "Parent of the cgroups of pods whose config names none, in the driver's\nform: a cgroupfs path, or a slice (each pod gets <slice stem>-<id>.slice);\n\"\" is /carrack (cgroupfs) or carrack.slice (systemd).",
    ),
    (
        "max_concurrent_downloads",
        "Layer downloads at once, over all pulls.",
    ),
    (
        "metrics_address",
        "carrackd's Prometheus /metrics: \"host:port\", or a bare port for\n127.0.0.1 only; \"\" (the default) serves none.",
    ),
    (
        "stream_page_bytes",
        "The most bytes of one response of the Stream* list RPCs (StreamContainers,\nStreamPodSandboxes, StreamImages, the stats and metrics): a response holds\nthe items that fit, and at least one. 4 MiB is what any gRPC client\nreceives by default.",
    ),
    (
        "cdi_spec_dirs",
        "Directories of CDI (Container Device Interface) spec files, .json or\n.yaml, lowest priority first: a device defined in a later directory\nreplaces one of the same name in an earlier one. Containers ask for\ndevices by name (CDI_devices, or cdi.k8s.io/ annotations); [] turns\nCDI off.",
    ),
    (
        "stats_collection_seconds",
        "How often every pod's and container's CPU, memory, processes and\nnetwork counters are read in the background; the stats calls answer\nfrom those samples (at most this old). 0 reads them at each call.",
    ),
    (
        "disk_usage_refresh_seconds",
        "How old a container's writable-layer usage (ContainerStats) may be\nafter it changed: layers are walked in the background, not per call.",
    ),
    (
        "runtimes",
        "Runtime handlers by name, as RuntimeClass objects name them. Each\nbinary speaks runc's command line (carrack-runtime, runc, crun, youki).\nA file that lists handlers replaces these three; in each, a key left\nout takes its default.",
    ),
    ("runtimes.*", "One runtime handler."),
    (
        "runtimes.*.binary",
        "The OCI runtime binary (default: carrack-runtime, runc or crun for\nthose names, else the handler's name on PATH).",
    ),
    (
        "runtimes.*.root",
        "Its --root: the directory of its container state (default:\n<state>/<name>, <state>/runtime for carrack).",
    ),
    (
        "registries",
        "Per-registry settings, by host[:port], e.g.\n[registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]   # tried in order before the registry\ninsecure = false                       # plain HTTP to this host\nca_files = [\"/etc/carrack/certs/ca.pem\"]\nauth = { username = \"u\", password = \"p\" }   # or auth, identity_token",
    ),
    ("registries.*", "Settings for one registry host."),
    (
        "registries.*.mirrors",
        "Endpoints tried in order before the registry itself\n(scheme://host[:port] or host[:port]).",
    ),
    ("registries.*.insecure", "Talk plain HTTP to this host."),
    (
        "registries.*.ca_files",
        "Extra PEM CA certificates trusted for this host.",
    ),
    (
        "registries.*.auth",
        "Credentials used when the pull request carries none.",
    ),
    ("registries.*.auth.username", "User name (with password)."),
    ("registries.*.auth.password", "Password."),
    (
        "registries.*.auth.auth",
        "base64(user:password), as in docker's config.json.",
    ),
    (
        "registries.*.auth.identity_token",
        "Identity (refresh) token, exchanged for a bearer token.",
    ),
    (
        "network",
        "Pod networking: the first CNI config by name in cni_conf_dir, else\nthe built-in network. The dir is watched (inotify): a config that\nappears, changes or goes is used without a restart.",
    ),
    (
        "network.cni_conf_dir",
        "Where CNI configs (.conflist, .conf) are read from.",
    ),
    (
        "network.cni_bin_dirs",
        "Where CNI plugin binaries are looked up, in order.",
    ),
    (
        "network.builtin",
        "The built-in network used while no CNI config exists, native (no\nCNI plugins): a bridge, a veth per pod, leases under the root,\nmasquerade and hostPorts (iptables). kubelet\'s pod CIDR replaces\nthe subnet for new pods. subnet_v6 = \"fd00:88::/64\" adds IPv6.",
    ),
    (
        "network.builtin.enabled",
        "false: no built-in network; pods wait for a CNI config.",
    ),
    ("network.builtin.bridge", "The host bridge pods attach to."),
    ("network.builtin.subnet", "The pods' IPv4 range."),
    (
        "network.builtin.subnet_v6",
        "The pods' IPv6 range (dual stack).",
    ),
    (
        "streaming",
        "The exec / attach / port-forward server whose one-time URLs the\nExec, Attach and PortForward calls return. For HTTPS (https:// URLs):\ntls_cert_file = \"/etc/carrack/streaming.pem\"\ntls_key_file = \"/etc/carrack/streaming.key\"",
    ),
    (
        "streaming.address",
        "Listen address; port 0 picks a free port at start.",
    ),
    (
        "streaming.token_ttl_seconds",
        "How long a returned URL stays usable (single use).",
    ),
    (
        "streaming.tls_cert_file",
        "The server's certificate chain (PEM); with tls_key_file, HTTPS.",
    ),
    (
        "streaming.tls_key_file",
        "The certificate's private key (PEM).",
    ),
];

/// The comment of a key path, with map-entry names replaced by `*`.
pub fn doc_of(path: &[String]) -> Option<&'static str> {
    let key: Vec<&str> = path
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let is_map_entry = i == 1 && (path[0] == "runtimes" || path[0] == "registries");
            if is_map_entry { "*" } else { seg.as_str() }
        })
        .collect();
    let key = key.join(".");
    DOCS.iter().find(|(k, _)| *k == key).map(|(_, d)| *d)
}

/// Splits a table header's inside (`registries."a.b"`) into its keys.
fn header_keys(inner: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => keys.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() && !quoted => {}
            c => cur.push(c),
        }
    }
    keys.push(cur);
    keys
}

fn push_comment(out: &mut String, doc: &str) {
    for line in doc.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
}

/// A serialised config with its comments woven in; `Err` names the first
/// key that has no documentation.
pub fn annotate(toml_text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut table: Vec<String> = Vec::new();
    let mut in_array = false;
    let mut seen: Vec<String> = Vec::new();
    for line in toml_text.lines() {
        let trimmed = line.trim();
        if in_array {
            in_array = !trimmed.starts_with(']');
        } else if let Some(inner) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            table = header_keys(inner);
            // A map of tables (runtimes, registries) has no header of its
            // own: its comment goes above its first entry.
            let parent = &table[..1];
            if table.len() > 1
                && !seen.iter().any(|s| s == &parent[0])
                && let Some(doc) = doc_of(parent)
            {
                push_comment(&mut out, doc);
            }
            seen.push(table[0].clone());
            push_comment(&mut out, doc_of(&table).ok_or_else(|| table.join("."))?);
        } else if let Some((key, value)) = trimmed.split_once(" = ") {
            let mut path = table.clone();
            path.extend(header_keys(key));
            push_comment(&mut out, doc_of(&path).ok_or_else(|| path.join("."))?);
            in_array = value.trim() == "[";
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

impl Config {
    /// The configuration as TOML with every key documented.
    pub fn to_documented_toml(&self) -> String {
        let header = "# carrackd configuration. Every key has a built-in default: carrackd\n\
                      # runs with no file at all, and a file needs only the keys it changes.\n\
                      # `carrackd config default` prints this; `carrackd check` checks the node.\n\n";
        match annotate(&self.to_toml()) {
            Ok(text) => format!("{header}{text}"),
            Err(key) => format!(
                "# config key {key} has no documentation\n{}",
                self.to_toml()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_key_of_the_default_config_is_documented() {
        let text = Config::default().to_toml();
        annotate(&text).unwrap_or_else(|key| panic!("config key {key} has no entry in DOCS"));
    }

    #[test]
    fn optional_and_map_keys_are_documented_too() {
        let mut c = Config::default();
        c.network.builtin.subnet_v6 = Some("fd00:88::/64".into());
        let mut host = carrack_image::RegistryHostConfig {
            insecure: true,
            ..Default::default()
        };
        host.mirrors.push("http://127.0.0.1:5000".into());
        host.ca_files.push("/etc/ca.pem".into());
        host.auth = Some(Default::default());
        c.registries.hosts.insert("registry.k8s.io".into(), host);
        let text = annotate(&c.to_toml()).unwrap_or_else(|k| panic!("{k} undocumented"));
        assert!(
            text.contains("# Settings for one registry host.\n[registries.\"registry.k8s.io\"]"),
            "{text}"
        );
    }

    #[test]
    fn documented_output_parses_back_to_the_same_config() {
        let c = Config::default();
        let text = c.to_documented_toml();
        assert!(!text.contains("has no documentation"), "{text}");
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), c);
        // Each key line is preceded by a comment.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains(" = ") && !l.starts_with('#') && !l.starts_with(' ') {
                assert!(lines[i - 1].starts_with('#'), "undocumented: {l}");
            }
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        assert_eq!(
            annotate("root = \"/x\"\nsurprise = 1\n").unwrap_err(),
            "surprise"
        );
        assert_eq!(
            header_keys("registries.\"a.b:5000\""),
            ["registries", "a.b:5000"]
        );
    }
}
