//! Types shared by the eBPF programs (`mesh-ebpf`) and the node agent (`mesh-agent`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel sees these structs as the raw bytes
//! of map keys and values, so both sides must agree on layout and on every padding byte (the
//! padding is an explicit field, always zero, so hash lookups never depend on stack garbage).
//!
//! Address convention: an address is four `u32` words holding the bytes in network order, as the
//! kernel hands them over (`user_ip4`, `local_ip6`, ...). IPv4 uses word 0 only, the others are
//! zero. Ports are always host order here; the eBPF side converts on the way in.
#![no_std]

/// Well-known ports of the node proxy, opened inside every enrolled pod's network namespace.
pub mod ports {
    /// Outbound capture listener, bound to the pod's loopback.
    pub const OUTBOUND: u16 = 15001;
    /// Inbound plaintext capture listener (reached through `sk_lookup`).
    pub const INBOUND: u16 = 15006;
    /// Inbound HBONE (mTLS) listener.
    pub const HBONE: u16 = 15008;
    /// Agent admin HTTP (loopback of the host).
    pub const ADMIN: u16 = 15000;

    /// Ports that belong to the proxy itself and are never captured or forwarded, to rule out
    /// loops.
    pub const fn is_proxy_port(port: u16) -> bool {
        port == OUTBOUND || port == INBOUND || port == HBONE
    }
}

/// Names of the programs in the eBPF object, as the agent looks them up.
pub mod programs {
    pub const CONNECT4: &str = "mesh_connect4";
    pub const CONNECT6: &str = "mesh_connect6";
    pub const GETPEERNAME4: &str = "mesh_getpeername4";
    pub const GETPEERNAME6: &str = "mesh_getpeername6";
    pub const SOCK_OPS: &str = "mesh_sock_ops";
    pub const SK_LOOKUP: &str = "mesh_sk_lookup";
}

/// Names of the maps in the eBPF object (also their pin names under `<bpffs>/maps/`).
pub mod maps {
    /// LPM trie of IPv4 destinations that are captured (service VIPs, workload CIDRs).
    pub const CAPTURE_V4: &str = "MESH_CAPTURE_V4";
    /// LPM trie of IPv6 destinations that are captured.
    pub const CAPTURE_V6: &str = "MESH_CAPTURE_V6";
    /// Socket cookie of a captured app socket -> original destination. Read by getpeername.
    pub const ORIG_DST_BY_COOKIE: &str = "MESH_ORIG_DST_COOKIE";
    /// (netns cookie, app socket address) -> original destination. Read by the proxy on accept.
    pub const ORIG_DST: &str = "MESH_ORIG_DST";
    /// Socket storage on the proxy's delivery sockets: the real client, so an app accepting a
    /// connection the proxy delivered sees the true peer in accept()/getpeername(). Created
    /// (with the BTF the kernel requires) and pinned by the agent before it loads the object.
    pub const PEER_CLIENT: &str = "MESH_PEER_CLIENT";
    /// Pins of maps earlier versions had and this one does not; removed at load.
    pub const RETIRED: [&str; 1] = ["MESH_PEER_REWRITE"];
    /// Enrolled pod IP -> its slot, for `sk_lookup`.
    pub const POD_BY_IP: &str = "MESH_POD_BY_IP";
    /// SOCKMAP of the pods' inbound listeners, indexed by [`listener_index`].
    pub const INBOUND_LISTENERS: &str = "MESH_INBOUND_LISTENERS";
    /// Per-CPU counters, indexed by [`stats`].
    pub const STATS: &str = "MESH_STATS";
    /// Network namespace cookie of an enrolled pod -> its slot: the node-wide socket hooks
    /// act only in these namespaces.
    pub const POD_NETNS: &str = "MESH_POD_NETNS";
    /// cgroup v2 ids of this node's agents, whose own sockets are never captured.
    pub const AGENT_CGROUPS: &str = "MESH_AGENT_CGROUPS";
}

/// Sizes of the maps. Pods per node are bounded by `MAX_PODS`.
pub mod limits {
    pub const MAX_PODS: u32 = 1024;
    /// Agent processes excluded from capture at once (an upgrade runs two).
    pub const MAX_AGENTS: u32 = 8;
    pub const MAX_CAPTURE_PREFIXES: u32 = 65536;
    pub const MAX_TRACKED_CONNECTIONS: u32 = 262144;
}

/// Indices into the per-CPU counter array.
pub mod stats {
    pub const CONNECT_CAPTURED: u32 = 0;
    pub const CONNECT_DIRECT: u32 = 1;
    pub const ORIG_DST_RECORDED: u32 = 2;
    pub const LOOKUP_STEERED: u32 = 3;
    /// Inbound connection to an enrolled pod refused (SK_DROP, the client gets a RST) because
    /// its listener is gone (agent down).
    pub const LOOKUP_FAIL_CLOSED: u32 = 4;
    pub const PEERNAME_REWRITTEN: u32 = 5;
    /// Inbound connection refused (SK_DROP) because its destination is an address of an
    /// enrolled pod's namespace that the agent has not registered: added after enrollment and
    /// not followed yet (or while the agent is down), link-local, or local only by a route.
    pub const LOOKUP_UNKNOWN_ADDRESS: u32 = 6;
    pub const COUNT: u32 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_captured",
        "connect_direct",
        "orig_dst_recorded",
        "lookup_steered",
        "lookup_fail_closed",
        "peername_rewritten",
        "lookup_unknown_address",
    ];
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket address as stored in the maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockAddr {
    /// Address bytes in network order (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Port, host order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
}

/// Key of `ORIG_DST`: a socket address inside one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    pub netns_cookie: u64,
    pub addr: SockAddr,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

impl ConnKey {
    pub const fn new(netns_cookie: u64, addr: SockAddr) -> Self {
        ConnKey {
            netns_cookie,
            addr,
            _pad: 0,
        }
    }
}

/// Value of `POD_BY_IP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodSlot {
    /// Slot number, `< limits::MAX_PODS`, allocated by the agent.
    pub slot: u32,
    /// Reserved, always zero.
    pub flags: u32,
}

/// Which inbound listener of a pod a SOCKMAP entry holds.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plaintext inbound capture (15006).
    Inbound = 0,
    /// HBONE (15008).
    Hbone = 1,
}

/// Listeners per pod in `INBOUND_LISTENERS`: {inbound, hbone} x {v4, v6}.
pub const LISTENERS_PER_POD: u32 = 4;

/// Index of a pod's listener in the `INBOUND_LISTENERS` SOCKMAP.
#[inline(always)]
pub const fn listener_index(slot: u32, kind: ListenerKind, ipv6: bool) -> u32 {
    slot * LISTENERS_PER_POD + (kind as u32) * 2 + ipv6 as u32
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with explicit padding fields.
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for PodSlot {}
}

#[cfg(feature = "user")]
mod convert {
    extern crate std;
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// Address words (network-order bytes) of an IP.
    pub fn ip_words(ip: IpAddr) -> [u32; 4] {
        let mut words = [0u32; 4];
        match ip {
            IpAddr::V4(v4) => words[0] = u32::from_ne_bytes(v4.octets()),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                for (i, w) in words.iter_mut().enumerate() {
                    *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
            }
        }
        words
    }

    impl SockAddr {
        pub fn from_std(sa: SocketAddr) -> Self {
            SockAddr {
                addr: ip_words(sa.ip()),
                port: sa.port(),
                family: if sa.is_ipv4() { AF_INET } else { AF_INET6 },
            }
        }

        /// `None` for an unknown family (a corrupt entry).
        pub fn to_std(&self) -> Option<SocketAddr> {
            let ip = match self.family {
                AF_INET => IpAddr::V4(Ipv4Addr::from(self.addr[0].to_ne_bytes())),
                AF_INET6 => {
                    let mut o = [0u8; 16];
                    for (i, w) in self.addr.iter().enumerate() {
                        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                    }
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, self.port))
        }
    }
}

#[cfg(feature = "user")]
pub use convert::ip_words;

#[cfg(all(test, feature = "user"))]
mod tests {
    extern crate std;
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn sockaddr_round_trips() {
        for s in ["10.96.0.20:80", "[fd00::5]:8080", "127.0.0.1:15001"] {
            let sa: SocketAddr = s.parse().unwrap();
            assert_eq!(SockAddr::from_std(sa).to_std(), Some(sa));
        }
    }

    #[test]
    fn ipv4_word_is_network_order_bytes() {
        let sa: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // The kernel's user_ip4 for 10.0.0.1 has the bytes 0a 00 00 01 in memory.
        assert_eq!(SockAddr::from_std(sa).addr[0].to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn listener_indices_do_not_collide() {
        let a = listener_index(3, ListenerKind::Hbone, true);
        let b = listener_index(4, ListenerKind::Inbound, false);
        assert_eq!(a + 1, b);
        assert_eq!(core::mem::size_of::<ConnKey>(), 32);
    }
}
