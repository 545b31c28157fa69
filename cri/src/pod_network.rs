//! carrackd's pod networking: the [`PodNetwork`] seam implemented over
//! `carrack-network`'s [`NetworkManager`] (CNI plugins, or the built-in
//! bridge network when no CNI config exists), configured by the `[network]`
//! table ([`crate::config::PodNetworkConfig`]).
//!
//! This module owns the mapping from a CRI `PodSandboxConfig` to a CNI
//! request: the pod's identity (`K8S_POD_*` CNI_ARGS), its hostPorts
//! (`portMappings`) and the `kubernetes.io/ingress-bandwidth` /
//! `egress-bandwidth` annotations (`bandwidth`). It does not own the
//! namespaces (see [`crate::pod_host`]) nor the CNI protocol (see
//! `carrack_network::cni`).
//!
//! The CNI result cache and the built-in network's leases live under the
//! daemon's root (`<root>/network/`), so they survive restarts and follow
//! `--root`.

use std::net::IpAddr;
use std::path::Path;

use carrack_network::builtin::BuiltinError;
use carrack_network::{
    Bandwidth, BuiltinNetworkConfig, CniError, NetworkConfig, NetworkError, NetworkManager,
    PodNetworkRequest, PortMapping,
};
use carrack_proto::cri;

use crate::config::PodNetworkConfig;
use crate::pod_host::{NetworkFuture, PodNetwork, SandboxError};

/// The pod annotation with the ingress rate limit (a Kubernetes quantity, bits/s).
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// The pod annotation with the egress rate limit (a Kubernetes quantity, bits/s).
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

impl PodNetworkConfig {
    /// The network manager's config, with the result cache and leases under
    /// `root`.
    pub fn manager_config(&self, root: &Path) -> NetworkConfig {
        let dir = root.join("network");
        NetworkConfig {
            cni_conf_dirs: vec![self.cni_conf_dir.clone()],
            cni_bin_dirs: self.cni_bin_dirs.clone(),
            cni_cache_dir: dir.join("cni-cache"),
            ifname: "eth0".into(),
            builtin: BuiltinNetworkConfig {
                enabled: self.builtin.enabled,
                name: "carrack".into(),
                bridge: self.builtin.bridge.clone(),
                subnet: self.builtin.subnet.clone(),
                subnet_v6: self.builtin.subnet_v6.clone(),
                state_dir: dir.join("leases"),
            },
        }
    }
}

/// A bad field of a pod's config, as the CRI field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidPodNetwork {
    /// The field, e.g. `config.port_mappings[0].host_port`.
    pub field: String,
    /// What was expected.
    pub message: String,
}

fn invalid(field: String, message: impl Into<String>) -> InvalidPodNetwork {
    InvalidPodNetwork {
        field,
        message: message.into(),
    }
}

/// Parses a Kubernetes quantity ("10M", "1.5G", "512Ki", "100000") as a
/// whole number of units.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let v = num.parse::<f64>().ok()? * mult;
    (v.is_finite() && v >= 1.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// The pod's hostPort mappings (containerPort-only entries publish nothing).
pub fn port_mappings(
    config: &cri::PodSandboxConfig,
) -> Result<Vec<PortMapping>, InvalidPodNetwork> {
    let mut out = Vec::new();
    for (i, pm) in config.port_mappings.iter().enumerate() {
        if pm.host_port == 0 {
            continue;
        }
        let field = |f: &str| format!("config.port_mappings[{i}].{f}");
        let port = |v: i32, f: &str| {
            u16::try_from(v)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(field(f), format!("expected 1 to 65535, got {v}")))
        };
        let host_port = port(pm.host_port, "host_port")?;
        let container_port = port(pm.container_port, "container_port")?;
        let protocol = match cri::Protocol::try_from(pm.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(invalid(
                    field("protocol"),
                    format!("unknown protocol {}", pm.protocol),
                ));
            }
        };
        if !pm.host_ip.is_empty() && pm.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                field("host_ip"),
                format!("expected an IP address, got {:?}", pm.host_ip),
            ));
        }
        out.push(PortMapping {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: pm.host_ip.clone(),
        });
    }
    Ok(out)
}

/// The pod's bandwidth limits from its annotations (bits/s; the burst is
/// one second's worth of traffic).
pub fn bandwidth(config: &cri::PodSandboxConfig) -> Result<Option<Bandwidth>, InvalidPodNetwork> {
    let rate = |key: &str| -> Result<u64, InvalidPodNetwork> {
        match config.annotations.get(key) {
            None => Ok(0),
            Some(v) => parse_quantity(v).ok_or_else(|| {
                invalid(
                    format!("config.annotations[{key:?}]"),
                    format!("expected a quantity of bits per second like \"10M\", got {v:?}"),
                )
            }),
        }
    };
    let ingress = rate(INGRESS_BANDWIDTH)?;
    let egress = rate(EGRESS_BANDWIDTH)?;
    Ok((ingress > 0 || egress > 0).then_some(Bandwidth {
        ingress_rate: ingress,
        ingress_burst: ingress,
        egress_rate: egress,
        egress_burst: egress,
    }))
}

/// Checks the network-related fields of a pod config (RunPodSandbox calls
/// this before it makes anything).
pub fn validate_pod(config: &cri::PodSandboxConfig) -> Result<(), InvalidPodNetwork> {
    port_mappings(config)?;
    bandwidth(config)?;
    Ok(())
}

/// The CNI request for a pod.
pub fn pod_request(
    sandbox_id: &str,
    netns: &Path,
    config: &cri::PodSandboxConfig,
) -> Result<PodNetworkRequest, InvalidPodNetwork> {
    let meta = config.metadata.clone().unwrap_or_default();
    Ok(PodNetworkRequest {
        pod_id: sandbox_id.to_owned(),
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        netns: netns.to_path_buf(),
        host_network: false,
        port_mappings: port_mappings(config)?,
        bandwidth: bandwidth(config)?,
    })
}

fn network_error(e: NetworkError) -> SandboxError {
    match e {
        NetworkError::Cni(CniError::NoConfig(dirs)) => SandboxError::NetworkNotReady(format!(
            "no CNI network config in {dirs:?} and the built-in network is disabled"
        )),
        e @ NetworkError::Builtin(BuiltinError::BandwidthUnsupported(_)) => {
            SandboxError::NetworkUnsupported(e.to_string())
        }
        e => SandboxError::Network(e.to_string()),
    }
}

/// [`PodNetwork`] over a [`NetworkManager`].
#[derive(Debug, Clone)]
pub struct CniPodNetwork {
    manager: NetworkManager,
}

impl CniPodNetwork {
    /// Opens the manager for `cfg` (creates the cache dir under `root`).
    pub async fn open(cfg: &PodNetworkConfig, root: &Path) -> Result<Self, NetworkError> {
        Ok(Self {
            manager: NetworkManager::new(cfg.manager_config(root)).await?,
        })
    }
}

impl PodNetwork for CniPodNetwork {
    fn ready(&self) -> NetworkFuture<'_, Result<(), (String, String)>> {
        Box::pin(async move {
            let st = self.manager.status().await;
            if st.ready {
                Ok(())
            } else {
                Err((st.reason, st.message))
            }
        })
    }

    fn setup<'a>(
        &'a self,
        sandbox_id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
    ) -> NetworkFuture<'a, Result<Vec<String>, SandboxError>> {
        Box::pin(async move {
            let req = pod_request(sandbox_id, netns, config)
                .map_err(|e| SandboxError::Network(e.to_string()))?;
            let st = self.manager.setup_pod(&req).await.map_err(network_error)?;
            Ok(st.ips.iter().map(IpAddr::to_string).collect())
        })
    }

    fn teardown<'a>(
        &'a self,
        sandbox_id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
    ) -> NetworkFuture<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            // A config that fails validation now was never set up with it;
            // DEL still runs, without capability args.
            let req = pod_request(sandbox_id, netns, config).unwrap_or_else(|_| {
                let meta = config.metadata.clone().unwrap_or_default();
                PodNetworkRequest {
                    pod_id: sandbox_id.to_owned(),
                    name: meta.name,
                    namespace: meta.namespace,
                    uid: meta.uid,
                    netns: netns.to_path_buf(),
                    ..Default::default()
                }
            });
            self.manager.teardown_pod(&req).await.map_err(network_error)
        })
    }

    fn set_pod_cidr(&self, cidr: &str) {
        self.manager.update_pod_cidr(cidr);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn pod(ports: Vec<cri::PortMapping>, ann: &[(&str, &str)]) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            port_mappings: ports,
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("1Mi"), Some(1_048_576));
        assert_eq!(parse_quantity("100000"), Some(100_000));
        for bad in ["", "M", "10X", "-1", "1.2.3", ".5M", "0"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_ports_and_their_errors_name_the_field() {
        let pm = |h, c, p| cri::PortMapping {
            protocol: p,
            container_port: c,
            host_port: h,
            host_ip: String::new(),
        };
        let got = port_mappings(&pod(
            vec![pm(0, 80, 0), pm(8080, 80, 0), pm(53, 53, 1)],
            &[],
        ))
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].host_port, got[0].protocol.as_str()), (8080, "tcp"));
        assert_eq!(got[1].protocol, "udp");
        let e = port_mappings(&pod(vec![pm(8080, 80, 0), pm(70000, 80, 0)], &[])).unwrap_err();
        assert_eq!(e.field, "config.port_mappings[1].host_port");
        let e = port_mappings(&pod(vec![pm(8080, 0, 0)], &[])).unwrap_err();
        assert_eq!(e.field, "config.port_mappings[0].container_port");
        let mut bad_ip = pm(8080, 80, 0);
        bad_ip.host_ip = "localhost".into();
        let e = port_mappings(&pod(vec![bad_ip], &[])).unwrap_err();
        assert_eq!(e.field, "config.port_mappings[0].host_ip");
    }

    #[test]
    fn bandwidth_from_annotations() {
        assert_eq!(bandwidth(&pod(vec![], &[])).unwrap(), None);
        let b = bandwidth(&pod(vec![], &[(INGRESS_BANDWIDTH, "10M")]))
            .unwrap()
            .unwrap();
        assert_eq!((b.ingress_rate, b.egress_rate), (10_000_000, 0));
        let e = bandwidth(&pod(vec![], &[(EGRESS_BANDWIDTH, "fast")])).unwrap_err();
        assert!(e.field.contains(EGRESS_BANDWIDTH), "{e}");
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = PodNetworkConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.builtin.subnet, "10.88.0.0/16");
        let m = c.manager_config(Path::new("/r"));
        assert_eq!(m.cni_cache_dir, PathBuf::from("/r/network/cni-cache"));
        assert_eq!(m.builtin.state_dir, PathBuf::from("/r/network/leases"));
        let mut bad = c.clone();
        bad.builtin.subnet = "10.88.0.0".into();
        assert_eq!(bad.validate().unwrap_err().0, "network.builtin.subnet");
        let mut bad = c.clone();
        bad.builtin.bridge = "a-very-long-bridge-name".into();
        assert_eq!(bad.validate().unwrap_err().0, "network.builtin.bridge");
        let mut bad = c;
        bad.builtin.subnet_v6 = Some("10.0.0.0/8".into());
        assert_eq!(bad.validate().unwrap_err().0, "network.builtin.subnet_v6");
    }
}
