//! Typed handles on the pinned maps, each behind its own lock (a map operation is one short
//! syscall, so contention is negligible next to the connection it serves).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap, IterableMap, LpmTrie, MapData, PerCpuArray, SkStorage, SockMap};
use aya::Ebpf;
use mesh_common::{ip_words, maps as names, stats, ConnKey, ListenerKind, PodSlot, SockAddr};
use parking_lot::Mutex;

pub struct Maps {
    capture_v4: Mutex<LpmTrie<MapData, u32, u8>>,
    capture_v6: Mutex<LpmTrie<MapData, [u8; 16], u8>>,
    orig_dst: Mutex<HashMap<MapData, ConnKey, SockAddr>>,
    peer_client: Mutex<SkStorage<MapData, SockAddr>>,
    pod_by_ip: Mutex<HashMap<MapData, [u32; 4], PodSlot>>,
    listeners: Mutex<SockMap<MapData>>,
    pod_netns: Mutex<HashMap<MapData, u64, u32>>,
    agent_cgroups: Mutex<HashMap<MapData, u64, u8>>,
    stats: PerCpuArray<MapData, u64>,
    capture_capacity: usize,
    /// `max_entries` of the maps [`Maps::fill`] reports, by name.
    capacities: Vec<(&'static str, u32)>,
}

/// How full one map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u32,
    pub capacity: u32,
}

/// The maps whose filling refuses work: a full capture trie refuses a config, a full pod map
/// an enrollment (or an address a pod adds). The SOCKMAP is indexed by pod slot, so it cannot
/// fill before the slots (`MESH_POD_NETNS`) do; the original-destination maps are LRU and
/// evict rather than refuse.
const WATCHED: [&str; 4] = [
    names::CAPTURE_V4,
    names::CAPTURE_V6,
    names::POD_BY_IP,
    names::POD_NETNS,
];

/// The destinations the kernel captures: (address, prefix length).
pub type CaptureSet = BTreeSet<(IpAddr, u8)>;

/// Kernel-side counters summed over CPUs, by name.
pub type KernelStats = Vec<(&'static str, u64)>;

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} is missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let capacities: Vec<(&'static str, u32)> = WATCHED
            .iter()
            .map(|&name| (name, max_entries(ebpf, name)))
            .collect();
        let capture_capacity = capacities
            .iter()
            .filter(|(name, _)| [names::CAPTURE_V4, names::CAPTURE_V6].contains(name))
            .map(|(_, capacity)| *capacity)
            .min()
            .unwrap_or(0) as usize;
        Ok(Maps {
            capture_capacity,
            capacities,
            capture_v4: Mutex::new(take(ebpf, names::CAPTURE_V4)?),
            capture_v6: Mutex::new(take(ebpf, names::CAPTURE_V6)?),
            orig_dst: Mutex::new(take(ebpf, names::ORIG_DST)?),
            peer_client: Mutex::new(take(ebpf, names::PEER_CLIENT)?),
            pod_by_ip: Mutex::new(take(ebpf, names::POD_BY_IP)?),
            listeners: Mutex::new(take(ebpf, names::INBOUND_LISTENERS)?),
            pod_netns: Mutex::new(take(ebpf, names::POD_NETNS)?),
            agent_cgroups: Mutex::new(take(ebpf, names::AGENT_CGROUPS)?),
            stats: take(ebpf, names::STATS)?,
        })
    }

    /// Makes the socket hooks act for sockets in the pod's network namespace (`cookie`).
    pub fn add_pod_netns(&self, cookie: u64, slot: u32) -> Result<()> {
        self.pod_netns
            .lock()
            .insert(cookie, slot, 0)
            .context("adding the pod's network namespace to MESH_POD_NETNS (full?)")
    }

    /// The slot `MESH_POD_NETNS` holds for namespace `cookie`: the socket hooks act there.
    pub fn pod_netns_slot(&self, cookie: u64) -> Option<u32> {
        self.pod_netns.lock().get(&cookie, 0).ok()
    }

    /// How full each map that can refuse work is, counted now (one syscall per entry: these
    /// maps hold what the config and the pods put there, not connections).
    pub fn fill(&self) -> Vec<MapFill> {
        self.capacities
            .iter()
            .map(|&(map, capacity)| {
                let entries = match map {
                    names::CAPTURE_V4 => self.capture_v4.lock().keys().count(),
                    names::CAPTURE_V6 => self.capture_v6.lock().keys().count(),
                    names::POD_BY_IP => self.pod_by_ip.lock().keys().count(),
                    _ => self.pod_netns.lock().keys().count(),
                };
                MapFill {
                    map,
                    entries: entries as u32,
                    capacity,
                }
            })
            .collect()
    }

    /// Stops capture in the namespace of the pod in `slot` (found by value: a pod whose
    /// namespace is gone by now has no cookie to ask with).
    pub fn remove_pod_netns_of(&self, slot: u32) {
        let mut map = self.pod_netns.lock();
        let held: Vec<u64> = map
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, s)| *s == slot)
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in held {
            let _ = map.remove(&cookie);
        }
    }

    /// Keeps the socket hooks off the sockets of processes in the cgroups `ids` (this agent,
    /// and during an upgrade the one it takes over from) and of no others: ids of agents that
    /// are gone are removed, so the set never fills up over upgrades.
    pub fn keep_agent_cgroups(&self, ids: &[u64]) -> Result<()> {
        let mut map = self.agent_cgroups.lock();
        for id in ids {
            map.insert(id, 1, 0)
                .context("registering the agent's cgroup in MESH_AGENT_CGROUPS")?;
        }
        let stale: Vec<u64> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ids.contains(k))
            .collect();
        for key in stale {
            let _ = map.remove(&key);
        }
        Ok(())
    }

    /// How many destinations each capture trie holds (IPv4 and IPv6 have one each; the
    /// smaller bounds what a config may capture).
    pub fn capture_capacity(&self) -> usize {
        self.capture_capacity
    }

    /// Makes the kernel's capture set exactly `wanted`: adds what is new, removes what is gone.
    pub fn sync_capture_set(&self, wanted: &CaptureSet) -> Result<()> {
        let current = self.capture_set();
        for (ip, len) in current.difference(wanted) {
            match ip {
                IpAddr::V4(v4) => {
                    let key = Key::new(u32::from(*len), u32::from_ne_bytes(v4.octets()));
                    let _ = self.capture_v4.lock().remove(&key);
                }
                IpAddr::V6(v6) => {
                    let _ = self
                        .capture_v6
                        .lock()
                        .remove(&Key::new(u32::from(*len), v6.octets()));
                }
            }
        }
        for (ip, len) in wanted.difference(&current) {
            match ip {
                IpAddr::V4(v4) => {
                    let key = Key::new(u32::from(*len), u32::from_ne_bytes(v4.octets()));
                    self.capture_v4.lock().insert(&key, 1, 0)
                }
                IpAddr::V6(v6) => {
                    self.capture_v6
                        .lock()
                        .insert(&Key::new(u32::from(*len), v6.octets()), 1, 0)
                }
            }
            .with_context(|| format!("adding {ip}/{len} to the capture map (full?)"))?;
        }
        Ok(())
    }

    pub fn capture_set(&self) -> CaptureSet {
        let mut set = CaptureSet::new();
        for key in self.capture_v4.lock().keys().flatten() {
            let ip = std::net::Ipv4Addr::from(key.data().to_ne_bytes());
            set.insert((IpAddr::V4(ip), key.prefix_len() as u8));
        }
        for key in self.capture_v6.lock().keys().flatten() {
            let ip = std::net::Ipv6Addr::from(key.data());
            set.insert((IpAddr::V6(ip), key.prefix_len() as u8));
        }
        set
    }

    /// The original destination of a captured connection, found by the app socket's address
    /// (the proxy's peer) in the pod's namespace. The entry is consumed.
    pub fn take_original_destination(
        &self,
        netns_cookie: u64,
        app: SocketAddr,
    ) -> Option<SocketAddr> {
        let key = ConnKey::new(netns_cookie, SockAddr::from_std(normalise(app)));
        let map = self.orig_dst.lock();
        let fd = map.map().fd().as_fd();
        let found: SockAddr = crate::sys::bpf::lookup_and_delete(fd, &key).ok()??;
        found.to_std()
    }

    /// Makes the app see `client` as the peer of the connection the proxy is about to open
    /// with `socket` (a delivery socket, not yet connected). The entry lives in the socket's
    /// own storage and goes away with it.
    pub fn set_peer_client(&self, socket: &impl AsRawFd, client: SocketAddr) -> Result<()> {
        let value = SockAddr::from_std(normalise(client));
        self.peer_client
            .lock()
            .insert(socket, value, 0)
            .context("storing the real client on the delivery socket")
    }

    /// Tells `sk_lookup` that `ip` belongs to the pod in `slot`.
    pub fn add_pod_ip(&self, ip: IpAddr, slot: u32) -> Result<()> {
        self.pod_by_ip
            .lock()
            .insert(ip_words(normalise_ip(ip)), PodSlot { slot, flags: 0 }, 0)
            .with_context(|| format!("registering pod IP {ip} with sk_lookup"))
    }

    pub fn remove_pod_ip(&self, ip: IpAddr) {
        let _ = self.pod_by_ip.lock().remove(&ip_words(normalise_ip(ip)));
    }

    /// Registers `ip` for the pod in `slot` unless another slot already has it (a pod must
    /// not take over another pod's steering by adding that pod's address to itself). True if
    /// `ip` is the slot's now.
    pub fn claim_pod_ip(&self, ip: IpAddr, slot: u32) -> Result<bool> {
        let key = ip_words(normalise_ip(ip));
        let mut map = self.pod_by_ip.lock();
        match map.get(&key, 0) {
            Ok(held) if held.slot == slot => Ok(true),
            Ok(_) => Ok(false),
            Err(_) => map
                .insert(key, PodSlot { slot, flags: 0 }, 0)
                .map(|()| true)
                .with_context(|| format!("registering pod IP {ip} with sk_lookup (map full?)")),
        }
    }

    /// Withdraws `ip` if it is registered for `slot` (and leaves another pod's entry alone).
    pub fn release_pod_ip(&self, ip: IpAddr, slot: u32) {
        let key = ip_words(normalise_ip(ip));
        let mut map = self.pod_by_ip.lock();
        if map.get(&key, 0).is_ok_and(|held| held.slot == slot) {
            let _ = map.remove(&key);
        }
    }

    /// Withdraws every address registered for `slot` except `keep`: entries a previous agent
    /// left for addresses the pod no longer has.
    pub fn retain_pod_ips(&self, slot: u32, keep: &[IpAddr]) {
        let keep: Vec<[u32; 4]> = keep.iter().map(|ip| ip_words(normalise_ip(*ip))).collect();
        let mut map = self.pod_by_ip.lock();
        let stale: Vec<[u32; 4]> = map
            .iter()
            .flatten()
            .filter(|(key, held)| held.slot == slot && !keep.contains(key))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            let _ = map.remove(&key);
        }
    }

    /// Puts a pod's inbound listener into the SOCKMAP `sk_lookup` steers to.
    pub fn set_listener(
        &self,
        slot: u32,
        kind: ListenerKind,
        ipv6: bool,
        socket: &impl AsRawFd,
    ) -> Result<()> {
        let index = mesh_common::listener_index(slot, kind, ipv6);
        self.listeners
            .lock()
            .set(index, socket, 0)
            .with_context(|| {
                format!("inserting listener {kind:?} (ipv6={ipv6}) of slot {slot} into the SOCKMAP")
            })
    }

    pub fn kernel_stats(&self) -> KernelStats {
        stats::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .stats
                    .get(&(i as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }
}

/// `max_entries` of map `name` as loaded (a pinned map keeps the size it was created with).
fn max_entries(ebpf: &Ebpf, name: &str) -> u32 {
    let data = match ebpf.map(name) {
        Some(aya::maps::Map::LpmTrie(data) | aya::maps::Map::HashMap(data)) => data,
        _ => return 0,
    };
    data.info().map(|i| i.max_entries()).unwrap_or(0)
}

/// Removes the pins of maps that earlier versions had and this one no longer uses, so a
/// pinned set left by an older agent does not linger (the old programs that used them are
/// replaced in their links when pods are resumed).
pub(super) fn remove_retired_pins(map_dir: &std::path::Path) {
    for name in names::RETIRED {
        let pin = map_dir.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {
                tracing::info!(pin = %pin.display(), "removed a map pin an earlier version left")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "could not remove a retired map pin")
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are stored as IPv4, as the eBPF side does.
fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn normalise(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalise_ip(sa.ip()), sa.port())
}
