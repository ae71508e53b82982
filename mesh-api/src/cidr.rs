//! [`Cidr`]: an IP prefix such as `10.0.0.0/8` or `fd00::/64`, as used by authorization
//! `ipBlocks`. Small enough to write here rather than pull in a crate for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address prefix. Always in canonical form: no bits set after the prefix, and never an
/// IPv4-mapped IPv6 address (write the IPv4 prefix instead), so equal prefixes compare equal.
///
/// Parses from `addr/len` or a bare address (a host prefix, /32 or /128); displays and
/// serialises as `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a string is not a [`Cidr`]; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Cidr {
    /// `addr/prefix_len`, refusing lengths past the address size, bits set after the prefix
    /// and IPv4-mapped IPv6 addresses.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = max_len(addr);
        if prefix_len > max {
            return Err(CidrError(format!(
                "\"{addr}/{prefix_len}\": prefix length must be at most {max}"
            )));
        }
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(CidrError(format!(
                    "\"{addr}/{prefix_len}\" is IPv4-mapped; write the IPv4 prefix instead"
                )));
            }
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(CidrError(format!(
                "\"{addr}/{prefix_len}\" has bits set after the prefix; did you mean \
                 \"{network}/{prefix_len}\"?"
            )));
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network address (the first address of the block).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside the block. IPv4-mapped IPv6 addresses (from dual-stack sockets)
    /// match as their IPv4 form; an IPv4 block never contains a native IPv6 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit after the first `len` cleared. `len` is at most the address size.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits.checked_shr(32 - u32::from(len)).unwrap_or(0);
            let kept = kept.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits.checked_shr(128 - u32::from(len)).unwrap_or(0);
            let kept = kept.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(kept))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr_str, len_str) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_str.parse().map_err(|_| {
            CidrError(format!(
                "{s:?} is not a CIDR block: {addr_str:?} is not an IP address"
            ))
        })?;
        let prefix_len = match len_str {
            None => max_len(addr),
            // Digits only: `u8::from_str` would also take a leading '+'.
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse().map_err(|_| prefix_len_error(s, addr))?
            }
            Some(_) => return Err(prefix_len_error(s, addr)),
        };
        Cidr::new(addr, prefix_len)
    }
}

fn prefix_len_error(s: &str, addr: IpAddr) -> CidrError {
    CidrError(format!(
        "{s:?} is not a CIDR block: the prefix length must be a number from 0 to {}",
        max_len(addr)
    ))
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("fd00::/64").to_string(), "fd00::/64");
        assert_eq!(cidr("fd00::1").to_string(), "fd00::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").prefix_len(), 0);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            err("10.0.0.1/8"),
            "\"10.0.0.1/8\" has bits set after the prefix; did you mean \"10.0.0.0/8\"?"
        );
        assert_eq!(
            err("10.0.0.0/33"),
            "\"10.0.0.0/33\": prefix length must be at most 32"
        );
        assert_eq!(
            err("10.0.0.300/8"),
            "\"10.0.0.300/8\" is not a CIDR block: \"10.0.0.300\" is not an IP address"
        );
        assert_eq!(
            err("10.0.0.0/+8"),
            "\"10.0.0.0/+8\" is not a CIDR block: the prefix length must be a number from 0 to 32"
        );
        assert_eq!(
            err("fd00::/"),
            "\"fd00::/\" is not a CIDR block: the prefix length must be a number from 0 to 128"
        );
        assert_eq!(
            err("::ffff:10.0.0.0/104"),
            "\"::ffff:10.0.0.0/104\" is IPv4-mapped; write the IPv4 prefix instead"
        );
        assert!(err("fd00::/1000").contains("from 0 to 128"));
        assert!(err("").contains("is not an IP address"));
    }

    #[test]
    fn contains() {
        let block = cidr("10.0.0.0/8");
        assert!(block.contains(ip("10.255.1.2")));
        assert!(block.contains(ip("::ffff:10.1.1.1")));
        assert!(!block.contains(ip("11.0.0.0")));
        assert!(!block.contains(ip("fd00::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!cidr("0.0.0.0/0").contains(ip("fd00::1")));
        assert!(cidr("::/0").contains(ip("fd00::1")));
        assert!(cidr("fd00:1::/32").contains(ip("fd00:1:ffff::9")));
        assert!(!cidr("fd00:1::/32").contains(ip("fd00:2::")));
        assert!(cidr("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!cidr("10.1.2.3").contains(ip("10.1.2.4")));
    }
}
