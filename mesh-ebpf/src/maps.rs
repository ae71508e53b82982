//! Map definitions. Every map that holds state beyond one agent's sockets is pinned by name so a
//! restarted agent re-adopts the same maps (and with them every attached program keeps its
//! state).

use core::cell::UnsafeCell;

use aya_ebpf::{
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_NO_PREALLOC},
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

/// Socket storage: the real client, on the proxy's own delivery sockets (entries die with
/// their sockets). The kernel wants BTF for the key and value of socket storage, which this
/// object does not carry, so the agent creates and pins this map itself
/// (`mesh-agent/src/datapath/peer_client.rs`) before loading the object, and the loader
/// adopts the pin like any other.
#[map(name = "MESH_PEER_CLIENT")]
pub static PEER_CLIENT: SocketStorage<SockAddr> = SocketStorage::pinned();

#[map(name = "MESH_POD_BY_IP")]
pub static POD_BY_IP: HashMap<[u32; 4], PodSlot> = HashMap::pinned(limits::MAX_PODS * 4, 0);

#[map(name = "MESH_INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockMap = SockMap::pinned(limits::MAX_PODS * LISTENERS_PER_POD, 0);

/// Network namespace cookies of enrolled pods (value: the pod's slot). The socket hooks are
/// attached once per node to a cgroup above every pod and act only for sockets in these
/// namespaces, whichever cgroup their process sits in.
#[map(name = "MESH_POD_NETNS")]
pub static POD_NETNS: HashMap<u64, u32> = HashMap::pinned(limits::MAX_PODS, 0);

/// cgroup v2 ids of the agents serving this node (two during an upgrade): their own sockets
/// in pod namespaces (delivery, upstream connections) are never captured.
#[map(name = "MESH_AGENT_CGROUPS")]
pub static AGENT_CGROUPS: HashMap<u64, u8> = HashMap::pinned(limits::MAX_AGENTS, 0);

#[map(name = "MESH_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(mesh_common::stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// A `BPF_MAP_TYPE_SK_STORAGE` map definition (aya-ebpf has none outside BTF maps).
#[repr(transparent)]
pub struct SocketStorage<V> {
    def: UnsafeCell<bpf_map_def>,
    _value: core::marker::PhantomData<V>,
}

// SAFETY: the definition is only read by the loader; programs use the map through helpers.
unsafe impl<V> Sync for SocketStorage<V> {}

impl<V> SocketStorage<V> {
    const fn pinned() -> Self {
        SocketStorage {
            def: UnsafeCell::new(bpf_map_def {
                type_: BPF_MAP_TYPE_SK_STORAGE,
                key_size: core::mem::size_of::<i32>() as u32,
                value_size: core::mem::size_of::<V>() as u32,
                max_entries: 0,
                map_flags: BPF_F_NO_PREALLOC,
                id: 0,
                pinning: 1, // by name
            }),
            _value: core::marker::PhantomData,
        }
    }

    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.def.get().cast()
    }
}
