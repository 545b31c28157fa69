//! The built-in default network, native: used when no CNI config exists, it
//! needs no CNI plugin binary.
//!
//! Per pod, [`BuiltinNetwork::setup`]:
//! 1. leases an address from each range ([`ipam`]; IPv4, and IPv6 when
//!    `subnet_v6` is set or kubelet's pod CIDR has an IPv6 range);
//! 2. makes sure the bridge is there with the ranges' gateways ([`bridge`]);
//! 3. makes the bridge's iptables chains once per manager ([`rules`]);
//! 4. creates the veth pair, pod end as `eth0` straight in the pod netns,
//!    and configures the pod side: addresses, link and `lo` up, default
//!    routes ([`veth`], over rtnetlink: no `ip` command);
//! 5. adds the pod's masquerade and hostPort rules;
//! 6. bandwidth limits: there is no native traffic shaping; a pod with the
//!    `kubernetes.io/ingress-bandwidth` or `egress-bandwidth` annotation has
//!    them applied by the standard `bandwidth` CNI plugin when it is in a
//!    CNI bin dir, chained after the native setup (its DEL runs at
//!    teardown), and is refused with an error naming the annotations when
//!    it is not.
//!
//! A failed setup tears down what was made before returning the error.
//! [`BuiltinNetwork::teardown`] finds everything from the pod id alone (the
//! leases, the veth name, the rules' comments), so it is idempotent and
//! also cleans a setup that crashed halfway or ran before a restart.
//!
//! kubelet's pod CIDR (UpdateRuntimeConfig) replaces the configured range
//! of its family for pods set up afterwards; existing pods keep their
//! addresses, and the bridge keeps the old gateway beside the new one. Pods
//! in the old and the new range reach each other through the bridge's
//! routing (their traffic between the ranges is masqueraded).

pub mod bridge;
pub mod cidr;
pub mod ipam;
pub mod netlink;
pub mod rules;
pub mod veth;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::cni::{CniError, CniRunner, ConfList, Invocation};
use crate::{BuiltinNetworkConfig, Interface, NetNsError, PodNetworkRequest, PodNetworkStatus};
use cidr::Cidr;
use ipam::{Ipam, IpamError};
use rules::Family;
use veth::PodAddress;

/// Errors of the built-in network.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// A configured range is not a usable CIDR.
    #[error("{field}: {source}")]
    BadRange {
        /// The config key or request field.
        field: &'static str,
        /// What is wrong.
        source: cidr::CidrError,
    },
    /// The pod id cannot name the pod's rules and leases.
    #[error("pod id {0:?}: expected letters, digits, '-', '_' or '.' (at most 200)")]
    PodId(String),
    /// Leasing or releasing an address failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The request.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A link that was just made or looked up is not there.
    #[error("{0} is missing")]
    Gone(String),
    /// A route could not be expressed.
    #[error("route: {0}")]
    Route(String),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A sysctl could not be set.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An iptables command failed.
    #[error("{command}: {message}")]
    Rules {
        /// The command.
        command: String,
        /// Its error output.
        message: String,
    },
    /// The pod asks for bandwidth limits and no `bandwidth` plugin exists.
    #[error(
        "annotations kubernetes.io/ingress-bandwidth and kubernetes.io/egress-bandwidth: \
         not supported on the built-in network without the `bandwidth` CNI plugin ({0})"
    )]
    BandwidthUnsupported(String),
    /// The `bandwidth` plugin failed.
    #[error("bandwidth limits: {0}")]
    Bandwidth(#[source] CniError),
    /// The pod's network is not what setup made.
    #[error("pod {pod}: {what}")]
    Check {
        /// Pod id.
        pod: String,
        /// What is missing or wrong.
        what: String,
    },
    /// Setup failed, and so did the cleanup after it.
    #[error("{setup}; cleanup also failed: {cleanup}")]
    SetupAndCleanup {
        /// The setup error.
        setup: Box<BuiltinError>,
        /// The cleanup error.
        cleanup: Box<BuiltinError>,
    },
}

/// The ranges pods get addresses from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ranges {
    v4: Cidr,
    v6: Option<Cidr>,
}

impl Ranges {
    fn all(&self) -> Vec<Cidr> {
        std::iter::once(self.v4).chain(self.v6).collect()
    }
}

/// The native default network.
#[derive(Debug)]
pub struct BuiltinNetwork {
    cfg: BuiltinNetworkConfig,
    configured: Ranges,
    pod_cidr: Mutex<(Option<Cidr>, Option<Cidr>)>,
    ipam: Ipam,
    /// Families whose base chains this manager has made sure of.
    base_rules: tokio::sync::Mutex<Vec<Family>>,
}

impl BuiltinNetwork {
    /// The network for `cfg` (nothing is made until the first pod).
    pub fn new(cfg: &BuiltinNetworkConfig) -> Result<Self, BuiltinError> {
        let v4: Cidr = cfg
            .subnet
            .parse()
            .map_err(|source| BuiltinError::BadRange {
                field: "builtin.subnet",
                source,
            })?;
        let v6 = cfg
            .subnet_v6
            .as_deref()
            .map(str::parse::<Cidr>)
            .transpose()
            .map_err(|source| BuiltinError::BadRange {
                field: "builtin.subnet_v6",
                source,
            })?;
        let wrong_family = |field, text: &str, reason| BuiltinError::BadRange {
            field,
            source: cidr::CidrError {
                text: text.into(),
                reason,
            },
        };
        if !v4.is_ipv4() {
            return Err(wrong_family(
                "builtin.subnet",
                &cfg.subnet,
                "expected an IPv4 range",
            ));
        }
        if v6.is_some_and(|c| c.is_ipv4()) {
            return Err(wrong_family(
                "builtin.subnet_v6",
                cfg.subnet_v6.as_deref().unwrap_or(""),
                "expected an IPv6 range",
            ));
        }
        Ok(Self {
            ipam: Ipam::new(&cfg.state_dir, &cfg.name),
            cfg: cfg.clone(),
            configured: Ranges { v4, v6 },
            pod_cidr: Mutex::new((None, None)),
            base_rules: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Takes kubelet's pod CIDR for pods set up from now on (an empty one
    /// goes back to the configured ranges).
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<(), BuiltinError> {
        let parsed = cidr::parse_pod_cidr(pod_cidr).map_err(|source| BuiltinError::BadRange {
            field: "runtime_config.network_config.pod_cidr",
            source,
        })?;
        *self.pod_cidr.lock().expect("pod_cidr lock") = parsed;
        Ok(())
    }

    fn ranges(&self) -> Ranges {
        let (v4, v6) = *self.pod_cidr.lock().expect("pod_cidr lock");
        Ranges {
            v4: v4.unwrap_or(self.configured.v4),
            v6: v6.or(self.configured.v6),
        }
    }

    /// Whether pods can be set up: the iptables commands are installed.
    pub fn status(&self) -> Result<(), String> {
        let mut needed = vec!["iptables-save", "iptables-restore"];
        if self.ranges().v6.is_some() {
            needed.extend(["ip6tables-save", "ip6tables-restore"]);
        }
        for cmd in needed {
            if rules::find_command(cmd).is_none() {
                return Err(format!(
                    "built-in network {}: {cmd} not found in PATH (install iptables)",
                    self.cfg.name
                ));
            }
        }
        Ok(())
    }

    /// The addresses leased to a pod (IPv4 first).
    pub fn pod_ips(&self, pod_id: &str) -> Vec<IpAddr> {
        self.ipam.leases_of(pod_id).unwrap_or_default()
    }

    /// Whether the pod has anything on this network (a lease or a veth).
    pub fn has_pod(&self, pod_id: &str) -> bool {
        !self.pod_ips(pod_id).is_empty()
            || Path::new("/sys/class/net")
                .join(veth::host_name(pod_id))
                .exists()
    }

    fn bandwidth_marker(&self, pod_id: &str) -> PathBuf {
        self.ipam.dir().join(format!("bandwidth.{pod_id}"))
    }

    /// Networks a pod; on failure what was made is removed again.
    pub async fn setup(
        &self,
        req: &PodNetworkRequest,
        ifname: &str,
        runner: &CniRunner,
    ) -> Result<PodNetworkStatus, BuiltinError> {
        if !rules::valid_pod_id(&req.pod_id) {
            return Err(BuiltinError::PodId(req.pod_id.clone()));
        }
        if req.bandwidth.is_some()
            && let Err(e) = runner.find_plugin("bandwidth")
        {
            return Err(BuiltinError::BandwidthUnsupported(e.to_string()));
        }
        match self.try_setup(req, ifname, runner).await {
            Ok(st) => Ok(st),
            Err(e) => match self.teardown(&req.pod_id, runner).await {
                Ok(()) => Err(e),
                Err(cleanup) => Err(BuiltinError::SetupAndCleanup {
                    setup: Box::new(e),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    async fn ensure_base_rules(&self, family: Family) -> Result<(), BuiltinError> {
        let mut done = self.base_rules.lock().await;
        if !done.contains(&family) {
            rules::ensure_base(family, &self.cfg.bridge).await?;
            done.push(family);
        }
        Ok(())
    }

    async fn add_pod_rules(&self, family: Family, input: &str) -> Result<(), BuiltinError> {
        self.ensure_base_rules(family).await?;
        if rules::restore(family, input).await.is_ok() {
            return Ok(());
        }
        // The chains may have been removed behind our back: make them again.
        self.base_rules.lock().await.retain(|f| *f != family);
        self.ensure_base_rules(family).await?;
        rules::restore(family, input).await
    }

    async fn try_setup(
        &self,
        req: &PodNetworkRequest,
        ifname: &str,
        runner: &CniRunner,
    ) -> Result<PodNetworkStatus, BuiltinError> {
        let ranges = self.ranges().all();
        let mut addrs = Vec::new();
        for r in &ranges {
            let ip = self.ipam.allocate(&req.pod_id, ifname, r)?;
            addrs.push(PodAddress {
                ip,
                prefix: r.prefix(),
                gateway: r.gateway(),
            });
        }
        let host = netlink::host()?;
        let (bridge_index, bridge_mac) = bridge::ensure(&host, &self.cfg.bridge, &ranges).await?;
        let host_veth = veth::host_name(&req.pod_id);
        let host_mac = veth::create(&host, &host_veth, bridge_index, &req.netns, ifname).await?;
        let pod = netlink::in_netns(&req.netns)?;
        let pod_mac = veth::configure_pod(&pod, ifname, &addrs).await?;
        drop(pod);
        for (a, r) in addrs.iter().zip(&ranges) {
            let rules =
                rules::pod_rules(&self.cfg.bridge, &req.pod_id, a.ip, r, &req.port_mappings);
            let input = format!("*nat\n{}\nCOMMIT\n", rules.join("\n"));
            self.add_pod_rules(Family::of(a.ip), &input).await?;
        }
        let interfaces = vec![
            Interface {
                name: self.cfg.bridge.clone(),
                mac: bridge_mac,
                sandbox: String::new(),
            },
            Interface {
                name: host_veth,
                mac: host_mac,
                sandbox: String::new(),
            },
            Interface {
                name: ifname.to_string(),
                mac: pod_mac,
                sandbox: req.netns.display().to_string(),
            },
        ];
        if let Some(b) = &req.bandwidth {
            std::fs::write(self.bandwidth_marker(&req.pod_id), b"").map_err(|source| {
                BuiltinError::Io {
                    what: "write bandwidth marker",
                    source,
                }
            })?;
            let prev = cni_result(&interfaces, &addrs);
            let inv = self.bandwidth_invocation(req, ifname, Some(json!(b)));
            runner
                .run(
                    "ADD",
                    &self.bandwidth_conf(),
                    &bandwidth_plugin(),
                    &inv,
                    Some(&prev),
                )
                .await
                .map_err(BuiltinError::Bandwidth)?;
        }
        Ok(PodNetworkStatus {
            ips: addrs.iter().map(|a| a.ip).collect(),
            interfaces,
            network: self.cfg.name.clone(),
        })
    }

    fn bandwidth_conf(&self) -> ConfList {
        ConfList {
            name: self.cfg.name.clone(),
            cni_version: "1.0.0".into(),
            source: PathBuf::new(),
            plugins: vec![bandwidth_plugin()],
        }
    }

    fn bandwidth_invocation(
        &self,
        req: &PodNetworkRequest,
        ifname: &str,
        limits: Option<Value>,
    ) -> Invocation {
        let mut rc = serde_json::Map::new();
        if let Some(l) = limits {
            rc.insert("bandwidth".into(), l);
        }
        Invocation {
            container_id: req.pod_id.clone(),
            netns: req.netns.clone(),
            ifname: ifname.into(),
            args: Vec::new(),
            runtime_config: rc,
        }
    }

    /// Removes everything of the pod: bandwidth shaping, rules, veth,
    /// leases (last, so that a crash halfway leaves the leases that make a
    /// retry find the rest). Idempotent.
    pub async fn teardown(&self, pod_id: &str, runner: &CniRunner) -> Result<(), BuiltinError> {
        if !rules::valid_pod_id(pod_id) {
            return Err(BuiltinError::PodId(pod_id.into()));
        }
        let ips = self.ipam.leases_of(pod_id)?;
        let marker = self.bandwidth_marker(pod_id);
        if marker.exists() {
            let req = PodNetworkRequest {
                pod_id: pod_id.into(),
                ..Default::default()
            };
            let inv = self.bandwidth_invocation(&req, "eth0", None);
            runner
                .run(
                    "DEL",
                    &self.bandwidth_conf(),
                    &bandwidth_plugin(),
                    &inv,
                    None,
                )
                .await
                .map_err(BuiltinError::Bandwidth)?;
            let _ = std::fs::remove_file(&marker);
        }
        let mut families: Vec<Family> = ips.iter().map(|ip| Family::of(*ip)).collect();
        families.dedup();
        for f in families {
            rules::remove_pod(f, &self.cfg.bridge, pod_id).await?;
        }
        let host = netlink::host()?;
        veth::delete(&host, &veth::host_name(pod_id)).await?;
        self.ipam.release(pod_id)?;
        Ok(())
    }

    /// Verifies that the pod still has its leases and its veth on the bridge.
    pub async fn check(&self, pod_id: &str) -> Result<(), BuiltinError> {
        let check = |what: String| BuiltinError::Check {
            pod: pod_id.into(),
            what,
        };
        if self.ipam.leases_of(pod_id)?.is_empty() {
            return Err(check("no address leased".into()));
        }
        let host = netlink::host()?;
        let name = veth::host_name(pod_id);
        let link = netlink::link_by_name(&host, &name)
            .await?
            .ok_or_else(|| check(format!("veth {name} is missing")))?;
        let bridge = netlink::link_by_name(&host, &self.cfg.bridge)
            .await?
            .ok_or_else(|| check(format!("bridge {} is missing", self.cfg.bridge)))?;
        if netlink::controller(&link) != Some(bridge.header.index) {
            return Err(check(format!("veth {name} is not on {}", self.cfg.bridge)));
        }
        Ok(())
    }
}

fn bandwidth_plugin() -> Value {
    json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})
}

/// A CNI 1.0 result describing what the native setup made (the
/// `bandwidth` plugin's prevResult).
fn cni_result(interfaces: &[Interface], addrs: &[PodAddress]) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": interfaces.iter().map(|i| {
            let mut v = json!({"name": i.name, "mac": i.mac});
            if !i.sandbox.is_empty() {
                v["sandbox"] = json!(i.sandbox);
            }
            v
        }).collect::<Vec<_>>(),
        "ips": addrs.iter().map(|a| json!({
            "address": format!("{}/{}", a.ip, a.prefix),
            "gateway": a.gateway.to_string(),
            "interface": 2,
        })).collect::<Vec<_>>(),
    })
}

/// Removes the bridge's iptables chains (both families) and the bridge.
/// carrackd never calls it (the bridge outlives pods and restarts); tests
/// and uninstall scripts do.
pub async fn remove_bridge(bridge: &str) -> Result<(), BuiltinError> {
    rules::remove_base(Family::V4, bridge).await?;
    rules::remove_base(Family::V6, bridge).await?;
    let host = netlink::host()?;
    veth::delete(&host, bridge).await
}
