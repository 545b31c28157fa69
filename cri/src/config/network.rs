//! The `[network]` table of carrackd's configuration: where CNI configs
//! and plugins are found, and the built-in network used while there is no
//! CNI config. [`crate::pod_network`] turns it into `carrack-network`'s
//! configuration.
//!
//! ```toml
//! [network]
//! cni_conf_dir = "/etc/cni/net.d"
//! cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
//! [network.builtin]
//! enabled = true
//! bridge = "carrack0"
//! subnet = "10.88.0.0/16"
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The built-in default network, used while no CNI config exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinNetwork {
    /// Use it at all (false: NetworkReady stays false until a CNI config appears).
    pub enabled: bool,
    /// The host bridge (at most 15 bytes).
    pub bridge: String,
    /// The IPv4 range pods get addresses from.
    pub subnet: String,
    /// An optional IPv6 range, for dual-stack pods.
    pub subnet_v6: Option<String>,
}

impl Default for BuiltinNetwork {
    fn default() -> Self {
        Self {
            enabled: true,
            bridge: "carrack0".into(),
            subnet: "10.88.0.0/16".into(),
            subnet_v6: None,
        }
    }
}

/// The `[network]` section of carrackd's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PodNetworkConfig {
    /// Where CNI network configs are read from (the first by name wins).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The built-in network.
    pub builtin: BuiltinNetwork,
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        Self {
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            builtin: BuiltinNetwork::default(),
        }
    }
}

/// A CIDR's address and prefix length, when `s` is one.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

impl PodNetworkConfig {
    /// Checks the section; `Err((key, message))` names the bad key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let b = &self.builtin;
        if b.bridge.is_empty() || b.bridge.len() > 15 || b.bridge.contains(['/', ' ']) {
            return Err((
                "network.builtin.bridge".into(),
                format!(
                    "expected an interface name of 1 to 15 bytes, got {:?}",
                    b.bridge
                ),
            ));
        }
        if !parse_cidr(&b.subnet).is_some_and(|(a, _)| a.is_ipv4()) {
            return Err((
                "network.builtin.subnet".into(),
                format!(
                    "expected an IPv4 CIDR like 10.88.0.0/16, got {:?}",
                    b.subnet
                ),
            ));
        }
        if let Some(v6) = &b.subnet_v6
            && !parse_cidr(v6).is_some_and(|(a, _)| a.is_ipv6())
        {
            return Err((
                "network.builtin.subnet_v6".into(),
                format!("expected an IPv6 CIDR like fd00:88::/64, got {v6:?}"),
            ));
        }
        if !self.cni_conf_dir.is_absolute() {
            return Err((
                "network.cni_conf_dir".into(),
                format!(
                    "expected an absolute path, got {}",
                    self.cni_conf_dir.display()
                ),
            ));
        }
        Ok(())
    }
}
