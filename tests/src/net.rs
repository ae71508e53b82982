//! The test "node network": a Linux bridge in the root network namespace that pods attach to.

use crate::cmd::{ip, ip_logged, link_exists};
use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A Linux bridge `mt<pid>br<idx>` with 10.<200+idx>.0.1/24 and fd00:<200+idx>::1/64.
///
/// Pods on it get 10.<200+idx>.0.<octet> and fd00:<200+idx>::<octet>; the bridge address is
/// their default gateway, so the root namespace (where the agent runs) can reach every pod.
/// Deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    index: u8,
}

impl Bridge {
    /// Creates the bridge for subnet `subnet_index` (0..=55, so the second octet stays <= 255).
    pub fn new(subnet_index: u8) -> Result<Bridge> {
        anyhow::ensure!(subnet_index <= 55, "subnet_index {subnet_index} > 55");
        crate::janitor::sweep_once();
        let name = format!("{}br{}", crate::prefix(), subnet_index);
        // A bridge of this very name can only be a leftover of a crashed run with our prefix.
        if link_exists(&name) {
            ip_logged(&["link", "del", &name]);
        }
        // Stale bridges are gone after the sweep; any other holder of our gateway address
        // would make routing to our pods ambiguous, so refuse rather than misroute.
        crate::janitor::ensure_addr_free(&gateway_v4(subnet_index).to_string(), &name)?;
        let bridge = Bridge {
            name,
            index: subnet_index,
        };
        // From here on Drop cleans up whatever part of the setup succeeded.
        ip(&["link", "add", &bridge.name, "type", "bridge"])?;
        let v4 = format!("{}/24", bridge.gateway_v4());
        let v6 = format!("{}/64", bridge.gateway_v6());
        ip(&["addr", "add", &v4, "dev", &bridge.name])?;
        ip(&["-6", "addr", "add", &v6, "dev", &bridge.name, "nodad"])?;
        ip(&["link", "set", &bridge.name, "up"])
            .with_context(|| format!("bringing up bridge {}", bridge.name))?;
        Ok(bridge)
    }

    /// Interface name in the root namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subnet index this bridge was created with.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// A bridge on the first of `indices` whose subnet is free (tests running at the same
    /// time take different ones).
    pub fn first_free(indices: &[u8]) -> Result<Bridge> {
        let mut errors = Vec::new();
        for &index in indices {
            match Bridge::new(index) {
                Ok(b) => return Ok(b),
                Err(e) => errors.push(format!("{index}: {e:#}")),
            }
        }
        anyhow::bail!("no free bridge subnet: {}", errors.join("; "))
    }

    /// The bridge's IPv4 address (the pods' default gateway).
    pub fn gateway_v4(&self) -> Ipv4Addr {
        gateway_v4(self.index)
    }

    /// The bridge's IPv6 address (the pods' IPv6 default gateway).
    pub fn gateway_v6(&self) -> Ipv6Addr {
        pod_v6(self.index, 1)
    }

    /// The bridge's IPv4 address as an [`IpAddr`].
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.gateway_v4())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if link_exists(&self.name) {
            ip_logged(&["link", "del", &self.name]);
        }
    }
}

fn gateway_v4(index: u8) -> Ipv4Addr {
    pod_v4(index, 1)
}

/// 10.<200+index>.0.<host>
pub(crate) fn pod_v4(index: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200 + index, 0, host)
}

/// fd00:<200+index>::<host>, written with the decimal digits as in `fd00:200::5`, so the
/// address reads like its IPv4 twin (the groups are hex, which is fine for a ULA).
pub(crate) fn pod_v6(index: u8, host: u8) -> Ipv6Addr {
    let hexish = |n: u16| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(
        0xfd00,
        hexish(200 + index as u16),
        0,
        0,
        0,
        0,
        0,
        hexish(host as u16),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_read_like_their_ipv4_twin() {
        assert_eq!(super::pod_v4(3, 7).to_string(), "10.203.0.7");
        assert_eq!(super::pod_v6(3, 7).to_string(), "fd00:203::7");
        assert_eq!(super::pod_v6(0, 254).to_string(), "fd00:200::254");
    }
}
