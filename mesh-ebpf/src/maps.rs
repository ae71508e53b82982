//! Map definitions. Every map is pinned by name so a restarted agent re-adopts the same maps
//! (and with them every attached program keeps its state).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap},
};
use mesh_common::{limits, ConnKey, PodSlot, SockAddr, LISTENERS_PER_POD};

#[map(name = "MESH_CAPTURE_V4")]
pub static CAPTURE_V4: LpmTrie<u32, u8> = LpmTrie::pinned(limits::MAX_CAPTURE_PREFIXES, 0);

#[map(name = "MESH_CAPTURE_V6")]
pub static CAPTURE_V6: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(limits::MAX_CAPTURE_PREFIXES, 0);

#[map(name = "MESH_ORIG_DST_COOKIE")]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, SockAddr> =
    LruHashMap::pinned(limits::MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "MESH_ORIG_DST")]
pub static ORIG_DST: LruHashMap<ConnKey, SockAddr> =
    LruHashMap::pinned(limits::MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "MESH_PEER_REWRITE")]
pub static PEER_REWRITE: LruHashMap<ConnKey, SockAddr> =
    LruHashMap::pinned(limits::MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "MESH_POD_BY_IP")]
pub static POD_BY_IP: HashMap<[u32; 4], PodSlot> = HashMap::pinned(limits::MAX_PODS * 4, 0);

#[map(name = "MESH_INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockMap = SockMap::pinned(limits::MAX_PODS * LISTENERS_PER_POD, 0);

#[map(name = "MESH_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(mesh_common::stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}
