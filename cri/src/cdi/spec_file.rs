//! A CDI spec file: its schema (JSON, or YAML for files named `.yaml` or
//! `.yml`), read and checked. A file that does not parse or breaks a rule
//! of the specification defines no device at all; the reason is kept for
//! the error of a request that names one of its devices.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::name::{check_device_name, parse_kind};

/// The CDI specification versions a file may declare (`cdiVersion`).
const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The OCI hooks a CDI hook may name.
const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// One spec file: a vendor's devices of one class.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecFile {
    /// The CDI version the file follows.
    pub cdi_version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Free-form annotations (not used).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Edits made once for any device of this file.
    #[serde(default)]
    pub container_edits: Option<ContainerEdits>,
}

/// One device of a spec file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSpec {
    /// The device's name within its kind.
    pub name: String,
    /// Free-form annotations (not used).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// What injecting this device does to the container.
    pub container_edits: ContainerEdits,
}

/// Edits to a container's OCI spec.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `NAME=value` variables.
    #[serde(default)]
    pub env: Vec<String>,
    /// Device nodes created in the container.
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    /// Host network interfaces moved into the container.
    #[serde(default)]
    pub net_devices: Vec<NetDevice>,
    /// OCI hooks.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// OCI `linux.intelRdt`, as the runtime spec writes it.
    #[serde(default)]
    pub intel_rdt: Option<serde_json::Value>,
    /// Groups added to the container process.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// A device node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Its path in the container.
    pub path: String,
    /// Its path on the host (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p` (default: the host node's).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Major number (default: the host node's).
    #[serde(default)]
    pub major: Option<i64>,
    /// Minor number (default: the host node's).
    #[serde(default)]
    pub minor: Option<i64>,
    /// Permission bits of the node (default: the host node's).
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Device cgroup access: a subset of `rwm`, or `none` (default `rwm`).
    #[serde(default)]
    pub permissions: Option<String>,
    /// Owner (default: the container process's uid when not root).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group (default: the container process's gid when not root).
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A network device.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDevice {
    /// The interface on the host.
    pub host_interface_name: String,
    /// Its name in the container.
    pub name: String,
}

/// An OCI hook.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// The OCI hook it is (`createContainer`, …).
    pub hook_name: String,
    /// The program.
    pub path: String,
    /// Its arguments (argv, with argv\[0\]).
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds before the runtime kills it.
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// A mount.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Its source on the host.
    pub host_path: String,
    /// Its destination in the container.
    pub container_path: String,
    /// The file system type (`bind` when absent and the options bind).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Mount options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// Reads and checks the spec file at `path`: JSON, or YAML when named
/// `.yaml` or `.yml`.
pub fn read(path: &Path) -> Result<SpecFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let spec: SpecFile = if yaml {
        serde_norway::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    };
    spec.check()?;
    Ok(spec)
}

impl SpecFile {
    /// The rules of the specification a runtime relies on: a known
    /// version, a valid kind, at least one device, device names valid and
    /// unique, and edits it can apply.
    pub fn check(&self) -> Result<(), String> {
        if !VERSIONS.contains(&self.cdi_version.trim_start_matches('v')) {
            return Err(format!(
                "cdiVersion {:?} is none of {}",
                self.cdi_version,
                VERSIONS.join(", ")
            ));
        }
        parse_kind(&self.kind)?;
        if self.devices.is_empty() {
            return Err("no devices".into());
        }
        if let Some(e) = &self.container_edits {
            e.check().map_err(|m| format!("containerEdits: {m}"))?;
        }
        let mut names = HashSet::new();
        for d in &self.devices {
            check_device_name(&d.name)?;
            if !names.insert(d.name.as_str()) {
                return Err(format!("device {:?} is defined twice", d.name));
            }
            if d.container_edits.is_empty() {
                return Err(format!("device {:?} has no containerEdits", d.name));
            }
            d.container_edits
                .check()
                .map_err(|m| format!("device {:?}: containerEdits: {m}", d.name))?;
        }
        Ok(())
    }
}

impl ContainerEdits {
    /// Whether the edits change nothing.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.net_devices.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
            && self.intel_rdt.is_none()
            && self.additional_gids.is_empty()
    }

    /// Environment entries `NAME=value`, absolute paths, known device
    /// types, permissions and hook names.
    fn check(&self) -> Result<(), String> {
        check_env(&self.env)?;
        for n in &self.device_nodes {
            if !n.path.starts_with('/') {
                return Err(format!("deviceNodes: path {:?} is not absolute", n.path));
            }
            if let Some(h) = &n.host_path
                && !h.is_empty()
                && !h.starts_with('/')
            {
                return Err(format!("deviceNodes: hostPath {h:?} is not absolute"));
            }
            if let Some(k) = &n.kind
                && !matches!(k.as_str(), "" | "b" | "c" | "u" | "p")
            {
                return Err(format!("deviceNodes: {:?}: type {k:?}", n.path));
            }
            if let Some(p) = &n.permissions
                && p != "none"
                && !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
            {
                return Err(format!("deviceNodes: {:?}: permissions {p:?}", n.path));
            }
        }
        for m in &self.mounts {
            if m.host_path.is_empty() || !m.container_path.starts_with('/') {
                return Err(format!(
                    "mounts: hostPath {:?}, containerPath {:?}: both needed, the latter absolute",
                    m.host_path, m.container_path
                ));
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(format!(
                    "hooks: hookName {:?} is none of {}",
                    h.hook_name,
                    HOOK_NAMES.join(", ")
                ));
            }
            if !h.path.starts_with('/') {
                return Err(format!("hooks: path {:?} is not absolute", h.path));
            }
            check_env(&h.env).map_err(|e| format!("hooks: {e}"))?;
        }
        let mut hosts = HashSet::new();
        let mut names = HashSet::new();
        for n in &self.net_devices {
            if n.host_interface_name.is_empty() || n.name.is_empty() {
                return Err("netDevices: hostInterfaceName and name are needed".into());
            }
            if !hosts.insert(&n.host_interface_name) || !names.insert(&n.name) {
                return Err(format!(
                    "netDevices: {:?} ({:?}) appears twice",
                    n.host_interface_name, n.name
                ));
            }
        }
        Ok(())
    }

    /// Appends `other`'s edits (its Intel RDT settings replace these).
    pub fn append(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.net_devices.extend(other.net_devices.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        if other.intel_rdt.is_some() {
            self.intel_rdt.clone_from(&other.intel_rdt);
        }
        self.additional_gids
            .extend(other.additional_gids.iter().copied());
    }
}

/// Every entry is `NAME=value` with a name.
fn check_env(env: &[String]) -> Result<(), String> {
    match env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        Some(e) => Err(format!("env {e:?} is not NAME=value")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: vendor.example/fake
containerEdits:
  env: ["FAKE_VENDOR=1"]
devices:
  - name: dev0
    containerEdits:
      deviceNodes:
        - path: /dev/fake0
          hostPath: /dev/null
      mounts:
        - hostPath: /etc/hostname
          containerPath: /fake/hostname
          options: [ro, bind]
      hooks:
        - hookName: createContainer
          path: /bin/true
          args: [/bin/true, x]
"#;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn yaml_and_json_files_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let y = read(&write(dir.path(), "fake.yaml", YAML)).unwrap();
        assert_eq!(y.kind, "vendor.example/fake");
        assert_eq!(
            y.devices[0].container_edits.device_nodes[0].path,
            "/dev/fake0"
        );
        assert_eq!(
            y.devices[0].container_edits.hooks[0].args,
            ["/bin/true", "x"]
        );
        let json: serde_json::Value = serde_norway::from_str(YAML).unwrap();
        let j = read(&write(dir.path(), "fake.json", &json.to_string())).unwrap();
        assert_eq!(j, y);
    }

    #[test]
    fn broken_rules_are_named() {
        let spec: SpecFile = serde_norway::from_str(YAML).unwrap();
        let broken = |f: &dyn Fn(&mut SpecFile)| {
            let mut s = spec.clone();
            f(&mut s);
            s.check().unwrap_err()
        };
        assert!(broken(&|s| s.cdi_version = "9.9.9".into()).contains("cdiVersion"));
        assert!(broken(&|s| s.kind = "fake".into()).contains("vendor/class"));
        assert!(broken(&|s| s.devices.clear()).contains("no devices"));
        assert!(broken(&|s| s.devices.push(s.devices[0].clone())).contains("twice"));
        assert!(
            broken(&|s| s.devices[0].container_edits = ContainerEdits::default())
                .contains("no containerEdits")
        );
        assert!(
            broken(&|s| s.devices[0].container_edits.hooks[0].hook_name = "later".into())
                .contains("hookName \"later\"")
        );
        assert!(
            broken(
                &|s| s.devices[0].container_edits.device_nodes[0].permissions = Some("rwx".into())
            )
            .contains("permissions")
        );
        assert!(
            broken(&|s| s.container_edits.as_mut().unwrap().env = vec!["=1".into()])
                .contains("containerEdits: env")
        );
        assert!(
            broken(&|s| s.devices[0].container_edits.mounts[0].container_path = "rel".into())
                .contains("mounts")
        );
        let dir = tempfile::tempdir().unwrap();
        let unknown = YAML.replace("kind:", "surprise: 1\nkind:");
        let e = read(&write(dir.path(), "x.yaml", &unknown)).unwrap_err();
        assert!(e.contains("surprise"), "{e}");
    }
}
