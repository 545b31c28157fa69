//! IP ranges of the built-in network: parsing `10.88.0.0/16` or
//! `fd00:88::/64`, the gateway (the first host address, `.1`), and the
//! addresses a pod may get (every other host address; for IPv4 neither the
//! network nor the broadcast address).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 range, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {reason}")]
pub struct CidrError {
    /// The text given.
    pub text: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

fn bits(ip: IpAddr) -> u32 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = |reason| CidrError {
            text: s.to_string(),
            reason,
        };
        let (addr, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = len.parse().map_err(|_| err("prefix is not a number"))?;
        if u32::from(prefix) > bits(addr) {
            return Err(err("prefix longer than the address"));
        }
        // A pod range needs a gateway and at least one pod address.
        let host_bits = bits(addr) - u32::from(prefix);
        if (addr.is_ipv4() && host_bits < 2) || (addr.is_ipv6() && host_bits < 1) {
            return Err(err("too small for a gateway and a pod"));
        }
        let mask = Self::mask(addr.is_ipv4(), prefix);
        Ok(Self {
            network: from_u128(addr.is_ipv4(), to_u128(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    fn mask(v4: bool, prefix: u8) -> u128 {
        let width = if v4 { 32 } else { 128 };
        let host = width - u32::from(prefix);
        let all = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host) - 1)
        }
    }

    /// True for an IPv4 range.
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && to_u128(ip) & Self::mask(self.is_ipv4(), self.prefix) == to_u128(self.network)
    }

    /// The gateway: the first address after the network address.
    pub fn gateway(&self) -> IpAddr {
        from_u128(self.is_ipv4(), to_u128(self.network) + 1)
    }

    /// The first and last address a pod may get (inclusive), as numbers.
    fn pod_span(&self) -> (u128, u128) {
        let host = bits(self.network) - u32::from(self.prefix);
        let size_minus_one = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let base = to_u128(self.network);
        let last = base + size_minus_one - u128::from(self.is_ipv4());
        (base + 2, last)
    }

    /// How many addresses pods may get.
    pub fn pod_capacity(&self) -> u128 {
        let (first, last) = self.pod_span();
        (last - first).saturating_add(1)
    }

    /// The pod addresses in order, starting after `after` (wrapping round
    /// to the first one), each once.
    pub fn pod_addresses_after(&self, after: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let (first, last) = self.pod_span();
        let start = after
            .filter(|a| self.contains(*a))
            .map(to_u128)
            .filter(|a| *a >= first && *a < last)
            .map(|a| a + 1)
            .unwrap_or(first);
        let v4 = self.is_ipv4();
        (start..=last)
            .chain(first..start)
            .map(move |n| from_u128(v4, n))
    }
}

/// The CIDRs of a pod CIDR as kubelet sends it: one, or an IPv4 and an
/// IPv6 one separated by a comma.
pub fn parse_pod_cidr(text: &str) -> Result<(Option<Cidr>, Option<Cidr>), CidrError> {
    let (mut v4, mut v6) = (None, None);
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c: Cidr = part.parse()?;
        let slot = if c.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.is_some() {
            return Err(CidrError {
                text: text.to_string(),
                reason: "two ranges of the same family",
            });
        }
        *slot = Some(c);
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let c: Cidr = "10.88.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), ip("10.88.0.1"));
        assert!(c.contains(ip("10.88.255.254")));
        assert!(!c.contains(ip("10.89.0.1")));
        assert!(!c.contains(ip("fd00::1")));
        let c6: Cidr = "fd00:88::/64".parse().unwrap();
        assert_eq!(c6.gateway(), ip("fd00:88::1"));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/31",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_addresses_skip_network_gateway_and_broadcast_and_wrap() {
        let c: Cidr = "10.0.0.0/29".parse().unwrap();
        let all: Vec<String> = c.pod_addresses_after(None).map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(c.pod_capacity(), 5);
        let from: Vec<String> = c
            .pod_addresses_after(Some(ip("10.0.0.4")))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            from,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        let v6: Cidr = "fd00::/126".parse().unwrap();
        assert_eq!(v6.pod_addresses_after(None).count(), 2);
    }

    #[test]
    fn pod_cidr_by_family() {
        let (v4, v6) = parse_pod_cidr("10.244.1.0/24, fd00:244:1::/64").unwrap();
        assert_eq!(v4.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(v6.unwrap().to_string(), "fd00:244:1::/64");
        assert!(parse_pod_cidr("10.0.0.0/24,10.1.0.0/24").is_err());
        assert_eq!(parse_pod_cidr("").unwrap(), (None, None));
    }
}
