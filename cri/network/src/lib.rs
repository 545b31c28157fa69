//! Pod networking for Carrack: CNI plugins, and a default network when no CNI
//! configuration exists.
//!
//! # Public API (used by carrackd)
//!
//! ```ignore
//! // Namespaces: carrackd creates the pinned netns before setup and removes it
//! // after teardown (and after a failed setup).
//! netns::create(path: &Path) -> Result<(), NetNsError>;   // new netns, lo up
//! netns::remove(path: &Path) -> Result<(), NetNsError>;   // idempotent
//! netns::run_in(path, || ...) -> Result<T, NetNsError>;    // closure in the netns
//!
//! let net = NetworkManager::new(NetworkConfig::default()).await?;
//! net.status().await -> NetworkStatus { ready, reason, message };
//! net.setup_pod(&PodNetworkRequest) -> Result<PodNetworkStatus, NetworkError>;
//! net.teardown_pod(&PodNetworkRequest) -> Result<(), NetworkError>; // idempotent
//! net.check_pod(&PodNetworkRequest) -> Result<(), NetworkError>;
//! net.update_pod_cidr("10.244.1.0/24");  // UpdateRuntimeConfig: ipRanges, built-in range
//! ```
//!
//! The CNI config is the first file by name in the conf dirs, cached and
//! refreshed through an inotify watch on them ([`conf_watch`]): a config
//! that appears, changes or goes is used by the next call without a
//! restart, and `status()` turns ready as soon as one exists.
//!
//! The default network ([`builtin`], configured by [`BuiltinNetworkConfig`]),
//! used when no CNI config exists and `builtin.enabled`, is native and
//! needs no CNI plugin binary: a bridge, a veth pair per pod, addresses and
//! routes through rtnetlink, its own IPAM with leases in
//! `builtin.state_dir`, masquerade and hostPorts through iptables. It
//! follows kubelet's pod CIDR ([`NetworkManager::update_pod_cidr`]) for
//! pods set up afterwards. Bandwidth annotations on it need the `bandwidth`
//! CNI plugin (see [`builtin`]).
//!
//! A pod is torn down by the network that set it up: the CNI result cache
//! says which CNI pods are; the built-in network's leases say which of its
//! pods are, whatever config is in force at teardown.

pub mod builtin;
pub mod cni;
mod conf_watch;
pub mod netns;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

pub use cni::{CniError, ConfList, Interface};
pub use netns::NetNsError;

/// Errors from the network manager.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A CNI error (plugin message included).
    #[error(transparent)]
    Cni(#[from] CniError),
    /// The built-in network failed (what was made is removed again).
    #[error(transparent)]
    Builtin(#[from] builtin::BuiltinError),
    /// The pod's namespace path is missing for a non-hostNetwork pod.
    #[error("pod {0}: netns path is empty")]
    NoNetns(String),
    /// Setup failed and the cleanup DEL failed as well.
    #[error("{setup}; cleanup also failed: {cleanup}")]
    SetupAndCleanup {
        /// The setup error.
        setup: Box<NetworkError>,
        /// The cleanup error.
        cleanup: CniError,
    },
}

/// The default network used when no CNI config exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinNetworkConfig {
    /// Use it at all (false: NetworkReady stays false until a CNI config appears).
    pub enabled: bool,
    /// Network name (reported as the pod's network; names its lease dir).
    pub name: String,
    /// Bridge name (at most 15 bytes; also names its iptables chains).
    pub bridge: String,
    /// IPv4 subnet.
    pub subnet: String,
    /// Optional IPv6 subnet for dual stack.
    pub subnet_v6: Option<String>,
    /// Lease directory (one directory per network name inside).
    pub state_dir: PathBuf,
}

impl Default for BuiltinNetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "carrack".into(),
            bridge: "carrack0".into(),
            subnet: "10.88.0.0/16".into(),
            subnet_v6: None,
            state_dir: "/var/lib/carrack/network/leases".into(),
        }
    }
}

/// Daemon configuration for pod networking.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Where CNI configs are looked for, in order.
    pub cni_conf_dirs: Vec<PathBuf>,
    /// Where CNI plugins are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Result cache (survives restarts; DEL uses it).
    pub cni_cache_dir: PathBuf,
    /// Interface name inside the pod.
    pub ifname: String,
    /// The default network.
    pub builtin: BuiltinNetworkConfig,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            cni_conf_dirs: vec!["/etc/cni/net.d".into()],
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cni_cache_dir: "/var/lib/carrack/network/cni-cache".into(),
            ifname: "eth0".into(),
            builtin: BuiltinNetworkConfig::default(),
        }
    }
}

/// NetworkReady condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// True when pods can be networked.
    pub ready: bool,
    /// CamelCase reason when not ready.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// A hostPort mapping (CNI portMappings capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Host address to bind ("" for all).
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// Traffic shaping (CNI bandwidth capability), bits per second and bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    pub ingress_rate: u64,
    /// Ingress burst.
    pub ingress_burst: u64,
    /// Egress rate.
    pub egress_rate: u64,
    /// Egress burst.
    pub egress_burst: u64,
}

/// What carrackd passes per pod.
#[derive(Debug, Clone, Default)]
pub struct PodNetworkRequest {
    /// Sandbox id (CNI_CONTAINERID).
    pub pod_id: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Pinned netns path (ignored for hostNetwork pods).
    pub netns: PathBuf,
    /// hostNetwork pods skip all of this.
    pub host_network: bool,
    /// hostPort mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Bandwidth limits (from kubernetes.io/ingress-bandwidth annotations).
    pub bandwidth: Option<Bandwidth>,
}

/// The outcome of a pod setup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkStatus {
    /// Pod IPs, IPv4 first (primary), then IPv6.
    pub ips: Vec<IpAddr>,
    /// Interfaces from the result.
    pub interfaces: Vec<Interface>,
    /// Network name used.
    pub network: String,
}

#[derive(Debug)]
struct Inner {
    cfg: NetworkConfig,
    runner: cni::CniRunner,
    confs: conf_watch::ConfWatch,
    builtin: Option<builtin::BuiltinNetwork>,
    pod_cidr: Mutex<Option<String>>,
}

/// The network new pods go on.
enum Active<'a> {
    /// A CNI config from the conf dirs.
    Cni(ConfList),
    /// The built-in network (no CNI config, and it is enabled).
    Builtin(&'a builtin::BuiltinNetwork),
}

/// Pod network manager; cheap to clone, Send + Sync.
#[derive(Debug, Clone)]
pub struct NetworkManager {
    inner: Arc<Inner>,
}

impl NetworkManager {
    /// Creates a manager (creates the cache dir; checks the built-in
    /// network's ranges when it is enabled).
    pub async fn new(cfg: NetworkConfig) -> Result<Self, NetworkError> {
        std::fs::create_dir_all(&cfg.cni_cache_dir).map_err(|source| CniError::Cache {
            path: cfg.cni_cache_dir.clone(),
            source,
        })?;
        let runner = cni::CniRunner {
            bin_dirs: cfg.cni_bin_dirs.clone(),
            cache_dir: cfg.cni_cache_dir.clone(),
        };
        let builtin = cfg
            .builtin
            .enabled
            .then(|| builtin::BuiltinNetwork::new(&cfg.builtin))
            .transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                confs: conf_watch::ConfWatch::new(&cfg.cni_conf_dirs),
                cfg,
                runner,
                builtin,
                pod_cidr: Mutex::new(None),
            }),
        })
    }

    /// The network in force now: the first CNI config, else the built-in
    /// one when enabled.
    fn active(&self) -> Result<Active<'_>, CniError> {
        match (self.inner.confs.current(), &self.inner.builtin) {
            (Some(c), _) => Ok(Active::Cni(c)),
            (None, Some(b)) => Ok(Active::Builtin(b)),
            (None, None) => Err(CniError::NoConfig(self.inner.cfg.cni_conf_dirs.clone())),
        }
    }

    /// The CNI config in force now, if any (None: the built-in network or
    /// nothing).
    pub fn cni_config(&self) -> Option<ConfList> {
        self.inner.confs.current()
    }

    /// NetworkReady: a config exists, its plugins are installed, and (CNI
    /// 1.1) every plugin answers STATUS successfully; or the built-in
    /// network is in force and its iptables commands are installed.
    pub async fn status(&self) -> NetworkStatus {
        let not_ready = |message: String| NetworkStatus {
            ready: false,
            reason: "NetworkPluginNotReady".into(),
            message,
        };
        let ready = NetworkStatus {
            ready: true,
            reason: String::new(),
            message: String::new(),
        };
        let conf = match self.active() {
            Ok(Active::Cni(c)) => c,
            Ok(Active::Builtin(b)) => {
                return match b.status() {
                    Ok(()) => ready,
                    Err(m) => not_ready(m),
                };
            }
            Err(e) => {
                return not_ready(format!(
                    "Network plugin returns error: cni config uninitialized: {e}"
                ));
            }
        };
        match self.inner.runner.status(&conf).await {
            Ok(()) => ready,
            Err(e) => not_ready(format!("Network plugin returns error: {e}")),
        }
    }

    /// Records the node's pod CIDR (UpdateRuntimeConfig; one CIDR, or an
    /// IPv4 and an IPv6 one separated by a comma).
    ///
    /// - CNI configs get it as the `ipRanges` capability of the plugins
    ///   that declare it.
    /// - The built-in network gives pods set up from now on addresses from
    ///   it (per family: an IPv4 CIDR replaces `subnet`, an IPv6 one
    ///   `subnet_v6`, and makes pods dual-stack); pods that exist keep
    ///   their addresses. An empty CIDR goes back to the configured
    ///   ranges; a CIDR that does not parse is logged and leaves the
    ///   built-in network's ranges as they were.
    pub fn update_pod_cidr(&self, cidr: &str) {
        let v = (!cidr.is_empty()).then(|| cidr.to_string());
        *self.inner.pod_cidr.lock().expect("pod_cidr lock") = v;
        if let Some(b) = &self.inner.builtin
            && let Err(e) = b.set_pod_cidr(cidr)
        {
            tracing::warn!(error = %e, "pod CIDR not taken by the built-in network");
        }
    }

    /// The CNI invocation for `req`.
    fn invocation(&self, req: &PodNetworkRequest) -> cni::Invocation {
        let mut rc = Map::new();
        if !req.port_mappings.is_empty() {
            rc.insert("portMappings".into(), json!(req.port_mappings));
        }
        if let Some(b) = &req.bandwidth {
            rc.insert("bandwidth".into(), json!(b));
        }
        if let Some(c) = self.inner.pod_cidr.lock().expect("pod_cidr lock").clone() {
            rc.insert("ipRanges".into(), ip_ranges(&c));
        }
        cni::Invocation {
            container_id: req.pod_id.clone(),
            netns: req.netns.clone(),
            ifname: self.inner.cfg.ifname.clone(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), req.namespace.clone()),
                ("K8S_POD_NAME".into(), req.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), req.pod_id.clone()),
                ("K8S_POD_UID".into(), req.uid.clone()),
            ],
            runtime_config: rc,
        }
    }

    /// Networks a pod (CNI ADD, or the built-in network). On failure
    /// everything it did is undone before the error (with the plugin's
    /// message) is returned.
    pub async fn setup_pod(
        &self,
        req: &PodNetworkRequest,
    ) -> Result<PodNetworkStatus, NetworkError> {
        if req.host_network {
            return Ok(PodNetworkStatus::default());
        }
        if req.netns.as_os_str().is_empty() {
            return Err(NetworkError::NoNetns(req.pod_id.clone()));
        }
        let conf = match self.active()? {
            Active::Cni(c) => c,
            Active::Builtin(b) => {
                return Ok(b
                    .setup(req, &self.inner.cfg.ifname, &self.inner.runner)
                    .await?);
            }
        };
        let inv = self.invocation(req);
        match self.inner.runner.add(&conf, &inv).await {
            Ok(result) => {
                let (ips, interfaces) = cni::result_ips(&result);
                Ok(PodNetworkStatus {
                    ips,
                    interfaces,
                    network: conf.name,
                })
            }
            Err(e) => match self
                .inner
                .runner
                .del(&self.installed(&conf), &inv, None)
                .await
            {
                Ok(()) => Err(e.into()),
                Err(cleanup) => Err(NetworkError::SetupAndCleanup {
                    setup: Box::new(e.into()),
                    cleanup,
                }),
            },
        }
    }

    /// `conf` without the plugins whose binaries are missing: a plugin that
    /// could not run made nothing, so the DEL after a failed ADD skips it.
    fn installed(&self, conf: &ConfList) -> ConfList {
        let mut c = conf.clone();
        c.plugins.retain(|p| {
            let ty = p
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            self.inner.runner.find_plugin(ty).is_ok()
        });
        c
    }

    /// The built-in network, when the pod has something on it.
    fn builtin_pod(&self, pod_id: &str) -> Option<&builtin::BuiltinNetwork> {
        self.inner.builtin.as_ref().filter(|b| b.has_pod(pod_id))
    }

    /// Removes a pod's network: CNI DEL with the config and result cached
    /// at ADD time, or the built-in network's teardown for its pods;
    /// idempotent (a pod never set up, or already torn down, gets a CNI DEL
    /// without prevResult from the config in force, which plugins accept).
    ///
    /// Call it before the pod's netns is removed: the `bridge` plugin finds
    /// the pod's addresses inside the namespace to delete its masquerade
    /// rules, and leaves them when the namespace is already gone (the lease
    /// and veth still go).
    pub async fn teardown_pod(&self, req: &PodNetworkRequest) -> Result<(), NetworkError> {
        if req.host_network {
            return Ok(());
        }
        let ifname = &self.inner.cfg.ifname;
        if let Some(mut c) = self.inner.runner.cached_any(&req.pod_id, ifname) {
            if !req.netns.as_os_str().is_empty() {
                c.invocation.netns = req.netns.clone();
            }
            // The netns path stays even when the namespace is gone: the
            // bridge plugin skips its masquerade teardown on an empty CNI_NETNS.
            self.inner
                .runner
                .del(&c.conf, &c.invocation, Some(&c.result))
                .await?;
            return Ok(());
        }
        if let Some(b) = self.builtin_pod(&req.pod_id) {
            b.teardown(&req.pod_id, &self.inner.runner).await?;
            return Ok(());
        }
        let conf = match self.active() {
            Ok(Active::Cni(c)) => c,
            Ok(Active::Builtin(_)) | Err(CniError::NoConfig(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut inv = self.invocation(req);
        if !netns::exists(&inv.netns) {
            inv.netns = PathBuf::new();
        }
        self.inner.runner.del(&conf, &inv, None).await?;
        Ok(())
    }

    /// Verifies a pod's network: CNI CHECK (0.4.0+) against the cached
    /// result, or the built-in network's leases and veth.
    pub async fn check_pod(&self, req: &PodNetworkRequest) -> Result<(), NetworkError> {
        if req.host_network {
            return Ok(());
        }
        if let Some(c) = self
            .inner
            .runner
            .cached_any(&req.pod_id, &self.inner.cfg.ifname)
        {
            return Ok(self.inner.runner.check(&c).await?);
        }
        if let Some(b) = self.builtin_pod(&req.pod_id) {
            b.check(&req.pod_id).await?;
        }
        Ok(())
    }

    /// The IPs recorded for a pod (from the CNI cache or the built-in
    /// network's leases; survives restarts).
    pub fn pod_ips(&self, pod_id: &str) -> Vec<IpAddr> {
        if let Some(c) = self.inner.runner.cached_any(pod_id, &self.inner.cfg.ifname) {
            return cni::result_ips(&c.result).0;
        }
        self.inner
            .builtin
            .as_ref()
            .map(|b| b.pod_ips(pod_id))
            .unwrap_or_default()
    }
}

/// The CIDRs of a pod CIDR as kubelet sends it: one, or an IPv4 and an
/// IPv6 one separated by a comma.
fn pod_cidrs(pod_cidr: &str) -> impl Iterator<Item = &str> {
    pod_cidr.split(',').map(str::trim).filter(|c| !c.is_empty())
}

/// The `ipRanges` capability for a pod CIDR: one range set per CIDR.
fn ip_ranges(pod_cidr: &str) -> serde_json::Value {
    pod_cidrs(pod_cidr)
        .map(|c| json!([{ "subnet": c }]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_ranges_one_set_per_family() {
        assert_eq!(
            ip_ranges("10.244.1.0/24,fd00:244:1::/64"),
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:1::/64"}]])
        );
        assert_eq!(
            ip_ranges(" 10.244.1.0/24 "),
            json!([[{"subnet": "10.244.1.0/24"}]])
        );
    }

    #[test]
    fn config_defaults_and_toml_names() {
        let c: NetworkConfig =
            serde_json::from_value(json!({"builtin": {"subnet": "10.1.0.0/16"}})).unwrap();
        assert_eq!(c.builtin.subnet, "10.1.0.0/16");
        assert_eq!(c.builtin.bridge, "carrack0");
        assert_eq!(c.cni_conf_dirs, vec![PathBuf::from("/etc/cni/net.d")]);
        assert!(serde_json::from_value::<NetworkConfig>(json!({"bogus": 1})).is_err());
    }
}
