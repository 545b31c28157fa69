//! carrackd's configuration: a TOML file whose every key has a built-in
//! default, so that carrackd runs with no file at all.
//!
//! ```toml
//! root = "/var/lib/carrack"
//! state = "/run/carrack"
//! socket = "/run/carrack/carrack.sock"
//! default_runtime = "runc"
//! cgroup_driver = "auto"            # systemd when systemd is PID 1, else cgroupfs
//! cgroup_parent = ""                # "/carrack" (cgroupfs) or "carrack.slice" (systemd)
//! metrics_address = "127.0.0.1:9464"   # Prometheus /metrics; unset: off
//! stream_page_bytes = 4194304      # one response of the Stream* list RPCs
//! cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]   # CDI device specs
//! disk_usage_refresh_seconds = 10      # writable layers' usage, at most this old
//! stats_collection_seconds = 10        # CPU, memory, network read in the background; 0: per call
//! [runtimes.runc]
//! binary = "/usr/sbin/runc"
//! root = "/run/carrack/runc"
//! [registries."registry.k8s.io"]
//! mirrors = ["http://127.0.0.1:5000"]
//! [network]                        # see network.rs
//! cni_conf_dir = "/etc/cni/net.d"
//! cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
//! [network.builtin]
//! subnet = "10.88.0.0/16"
//! [streaming]                      # see streaming.rs
//! address = "127.0.0.1:0"
//! token_ttl_seconds = 60
//! ```
//!
//! The tables of the pod network and of the streaming server are types of
//! their own here ([`PodNetworkConfig`], [`StreamingSettings`]); the
//! modules that use them take them from here.

mod network;
mod streaming;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carrack_image::RegistryConfig;
use serde::{Deserialize, Serialize};

pub use network::{BuiltinNetwork, PodNetworkConfig};
pub use streaming::StreamingSettings;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// One OCI runtime a pod can ask for by `runtime_handler`. A key the file
/// leaves out takes the handler's default ([`RuntimeHandler::builtin`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The runtime binary (runc's CLI contract).
    pub binary: PathBuf,
    /// The runtime's `--root` (its state directory).
    pub root: PathBuf,
}

impl RuntimeHandler {
    /// The defaults of handler `name` under the state dir `state`: the
    /// carrack, runc and crun binaries for those names, else the name
    /// itself (looked up on PATH); the root `<state>/<name>`
    /// (`<state>/runtime` for carrack).
    pub fn builtin(name: &str, state: &Path) -> RuntimeHandler {
        let (binary, dir) = match name {
            "carrack" => (beside_self("carrack-runtime"), "runtime"),
            "runc" => (PathBuf::from("/usr/sbin/runc"), name),
            "crun" => (PathBuf::from("/usr/bin/crun"), name),
            _ => (PathBuf::from(name), name),
        };
        RuntimeHandler {
            binary,
            root: state.join(dir),
        }
    }

    /// Gives each key the file left out (empty) its default.
    fn fill_defaults(&mut self, name: &str, state: &Path) {
        let builtin = RuntimeHandler::builtin(name, state);
        if self.binary.as_os_str().is_empty() {
            self.binary = builtin.binary;
        }
        if self.root.as_os_str().is_empty() {
            self.root = builtin.root;
        }
    }
}

/// The daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: the database, images, bundles, sandbox files.
    pub root: PathBuf,
    /// Volatile state: shims, pinned namespaces.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// The runtime handler used when a pod names none (`""`).
    pub default_runtime: String,
    /// Runtime handlers by name.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// The carrack-shim binary (empty: beside carrackd, or on PATH).
    pub shim_binary: PathBuf,
    /// The cgroup driver: `systemd`, `cgroupfs`, or `auto` (systemd when
    /// systemd is PID 1). See [`crate::pod_cgroup`].
    pub cgroup_driver: crate::pod_cgroup::DriverSetting,
    /// Parent of the cgroups of pods that do not name one, in the driver's
    /// form (a cgroupfs path, or a slice); empty: the driver's default.
    pub cgroup_parent: String,
    /// Layer downloads at once.
    pub max_concurrent_downloads: usize,
    /// Per-registry settings (mirrors, insecure, ca_files, auth).
    pub registries: RegistryConfig,
    /// Pod networking: CNI dirs and the built-in network.
    pub network: PodNetworkConfig,
    /// Where carrackd serves Prometheus `/metrics`: `host:port`, or a bare
    /// port for loopback; empty (the default): not served.
    pub metrics_address: String,
    /// The most bytes of one response of the Stream* list RPCs
    /// (StreamContainers, …): a page holds the items that fit, and at
    /// least one.
    pub stream_page_bytes: usize,
    /// A change in a container's writable layer shows in its stats within
    /// this many seconds (`carrack_image::usage`).
    pub disk_usage_refresh_seconds: u64,
    /// Every pod's and container's CPU, memory, processes and network
    /// counters are read in the background this often, and the stats calls
    /// answer from those samples; 0: read at each call
    /// (`crate::stats::collection`).
    pub stats_collection_seconds: u64,
    /// The exec/attach/port-forward server (`[streaming]`).
    pub streaming: StreamingSettings,
    /// Directories of CDI spec files, lowest priority first (see
    /// [`crate::cdi`]); empty: no CDI devices.
    pub cdi_spec_dirs: Vec<PathBuf>,
}

/// Finds `name` beside the running carrackd, else returns it bare (PATH).
pub fn beside_self(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Default for Config {
    fn default() -> Self {
        let state = PathBuf::from("/run/carrack");
        let runtimes = ["carrack", "runc", "crun"]
            .into_iter()
            .map(|name| (name.to_owned(), RuntimeHandler::builtin(name, &state)))
            .collect();
        Config {
            root: PathBuf::from("/var/lib/carrack"),
            socket: state.join("carrack.sock"),
            state,
            default_runtime: "carrack".to_owned(),
            runtimes,
            shim_binary: beside_self("carrack-shim"),
            cgroup_driver: Default::default(),
            cgroup_parent: String::new(),
            max_concurrent_downloads: 4,
            registries: RegistryConfig::default(),
            network: Default::default(),
            metrics_address: String::new(),
            // 4 MiB: what a gRPC client receives by default (kubelet takes
            // 16 MiB), so any client reads every page.
            stream_page_bytes: 4 << 20,
            disk_usage_refresh_seconds: 10,
            stats_collection_seconds: 10,
            streaming: Default::default(),
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
        }
    }
}

impl Config {
    /// Reads `path`, every missing key taking its default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses TOML text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        for (name, h) in &mut config.runtimes {
            h.fill_defaults(name, &config.state);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.runtimes.contains_key(&self.default_runtime) {
            return Err(ConfigError::Invalid {
                key: "default_runtime".into(),
                message: format!(
                    "{:?} is not one of the runtimes {:?}",
                    self.default_runtime,
                    self.runtimes.keys().collect::<Vec<_>>()
                ),
            });
        }
        if !self.metrics_address.is_empty()
            && let Err(message) = crate::telemetry::parse_address(&self.metrics_address)
        {
            return Err(ConfigError::Invalid {
                key: "metrics_address".into(),
                message,
            });
        }
        if self.stats_collection_seconds > 600 {
            return Err(ConfigError::Invalid {
                key: "stats_collection_seconds".into(),
                message: format!(
                    "expected 0 (read at each call) to 600 seconds, got {}",
                    self.stats_collection_seconds
                ),
            });
        }
        if !(1..=3600).contains(&self.disk_usage_refresh_seconds) {
            return Err(ConfigError::Invalid {
                key: "disk_usage_refresh_seconds".into(),
                message: format!(
                    "expected 1 to 3600 seconds, got {}",
                    self.disk_usage_refresh_seconds
                ),
            });
        }
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("socket", &self.socket),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!("expected an absolute path, got {}", p.display()),
                });
            }
        }
        if let Some(d) = self.cdi_spec_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(ConfigError::Invalid {
                key: "cdi_spec_dirs".into(),
                message: format!("expected absolute paths, got {}", d.display()),
            });
        }
        if !self.cgroup_parent.is_empty() {
            self.cgroup_driver()
                .check_parent(&self.cgroup_parent)
                .map_err(|message| ConfigError::Invalid {
                    key: "cgroup_parent".into(),
                    message,
                })?;
        }
        self.network
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        self.streaming.validate()?;
        Ok(())
    }

    /// Moves the runtime roots that sit under the default state dir under
    /// `state` (after `--state` changed it).
    pub fn set_state(&mut self, state: PathBuf) {
        let old = self.state.clone();
        for h in self.runtimes.values_mut() {
            if let Ok(rest) = h.root.strip_prefix(&old) {
                h.root = state.join(rest);
            }
        }
        if let Ok(rest) = self.socket.strip_prefix(&old) {
            self.socket = state.join(rest);
        }
        self.state = state;
    }

    /// The handler for a pod's `runtime_handler` (empty: the default).
    pub fn handler(&self, name: &str) -> Option<(&str, &RuntimeHandler)> {
        let name = if name.is_empty() {
            self.default_runtime.as_str()
        } else {
            name
        };
        self.runtimes
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The cgroup driver in effect (`auto` resolved on this machine).
    pub fn cgroup_driver(&self) -> crate::pod_cgroup::CgroupDriver {
        self.cgroup_driver.resolve()
    }

    /// The SQLite database of sandboxes, containers and images.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("carrack.db")
    }

    /// The image store's settings: under `root`, sharing the database.
    pub fn image_store_config(&self) -> carrack_image::ImageStoreConfig {
        carrack_image::ImageStoreConfig {
            root: self.root.clone(),
            db_path: self.db_path(),
            registries: self.registries.clone(),
            max_concurrent_downloads: self.max_concurrent_downloads,
            overlay_method: None,
            usage_refresh: std::time::Duration::from_secs(self.disk_usage_refresh_seconds),
        }
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, PathBuf::from("/run/carrack/carrack.sock"));
    }

    #[test]
    fn cgroup_driver_and_parent_must_agree() {
        let c = Config::parse(
            "cgroup_driver = \"systemd\"\ncgroup_parent = \"pods.slice\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.cgroup_driver(), crate::pod_cgroup::CgroupDriver::Systemd);
        for bad in [
            "cgroup_driver = \"systemd\"\ncgroup_parent = \"/carrack\"\n",
            "cgroup_driver = \"cgroupfs\"\ncgroup_parent = \"pods.slice\"\n",
        ] {
            let e = Config::parse(bad, Path::new("x")).unwrap_err().to_string();
            assert!(e.contains("cgroup_parent"), "{e}");
        }
        let e = Config::parse("cgroup_driver = \"cgroupv3\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("cgroup_driver"), "{e}");
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let c = Config::default();
        let back = Config::parse(&c.to_toml(), Path::new("x")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn keys_override_and_unknown_keys_fail() {
        let c = Config::parse(
            "root = \"/tmp/r\"\ndefault_runtime = \"runc\"\n[registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.handler("").unwrap().0, "runc");
        let e = Config::parse("rooot = \"/x\"", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("rooot"), "{e}");
        let e = Config::parse("default_runtime = \"nope\"", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("default_runtime"), "{e}");
        let c = Config::parse(
            "[network]\ncni_conf_dir = \"/tmp/net.d\"\n[network.builtin]\nsubnet = \"10.1.0.0/16\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.network.cni_conf_dir, PathBuf::from("/tmp/net.d"));
        assert_eq!(c.network.builtin.subnet, "10.1.0.0/16");
        assert_eq!(c.network.builtin.bridge, "carrack0");
        let e = Config::parse("[network.builtin]\nsubnet = \"x\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("network.builtin.subnet"), "{e}");
        let e = Config::parse("metrics_address = \"nowhere\"", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("metrics_address"), "{e}");
        let c = Config::parse("metrics_address = \"9464\"", Path::new("x")).unwrap();
        assert_eq!(c.metrics_address, "9464");
        let c = Config::parse("cdi_spec_dirs = [\"/opt/cdi\"]", Path::new("x")).unwrap();
        assert_eq!(c.cdi_spec_dirs, [PathBuf::from("/opt/cdi")]);
        let e = Config::parse("cdi_spec_dirs = [\"cdi\"]", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("cdi_spec_dirs"), "{e}");
        let e = Config::parse("disk_usage_refresh_seconds = 0", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("disk_usage_refresh_seconds"), "{e}");
        let e = Config::parse("stats_collection_seconds = 601", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("stats_collection_seconds"), "{e}");
        let c = Config::parse("stats_collection_seconds = 0", Path::new("x")).unwrap();
        assert_eq!(c.stats_collection_seconds, 0);
        let c = Config::parse("disk_usage_refresh_seconds = 2", Path::new("x")).unwrap();
        assert_eq!(
            c.image_store_config().usage_refresh,
            std::time::Duration::from_secs(2)
        );
    }

    /// A file needs only the keys it changes, in a runtime handler's table
    /// too; a handler the file adds gets its name as binary and root dir.
    #[test]
    fn runtime_handler_keys_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("carrackd.toml");
        std::fs::write(
            &file,
            "[runtimes.carrack]\nbinary = \"/opt/carrack-runtime\"\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        let h = &c.runtimes["carrack"];
        assert_eq!(h.binary, PathBuf::from("/opt/carrack-runtime"));
        assert_eq!(h.root, PathBuf::from("/run/carrack/runtime"));
        let c = Config::parse(
            "state = \"/tmp/s\"\ndefault_runtime = \"kata\"\n[runtimes.kata]\n[runtimes.runc]\nroot = \"/r\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.runtimes["kata"],
            RuntimeHandler {
                binary: PathBuf::from("kata"),
                root: PathBuf::from("/tmp/s/kata"),
            }
        );
        assert_eq!(c.runtimes["runc"].binary, PathBuf::from("/usr/sbin/runc"));
        assert_eq!(c.runtimes["runc"].root, PathBuf::from("/r"));
        let e = Config::parse("[runtimes.runc]\nbinnary = \"/x\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("binnary"), "{e}");
    }

    #[test]
    fn set_state_moves_runtime_roots_and_socket() {
        let mut c = Config::default();
        c.set_state("/tmp/s".into());
        assert_eq!(c.runtimes["runc"].root, PathBuf::from("/tmp/s/runc"));
        assert_eq!(c.socket, PathBuf::from("/tmp/s/carrack.sock"));
    }
}
