//! Which sockets the node-wide socket hooks act on: those in an enrolled pod's network
//! namespace, unless an agent of this node opened them (its delivery and upstream sockets
//! live in pod namespaces too, and capturing them would loop).

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie};
use aya_ebpf::EbpfContext;

use crate::maps::{AGENT_CGROUPS, POD_NETNS};

/// Whether the socket of `ctx` is in an enrolled pod's network namespace.
#[inline(always)]
pub fn in_pod<C: EbpfContext>(ctx: &C) -> bool {
    // SAFETY: helper valid for the socket program types that call this.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is only tested for presence.
    unsafe { POD_NETNS.get(netns) }.is_some()
}

/// Whether the calling process is an agent of this node (process-context hooks only).
#[inline(always)]
pub fn by_agent() -> bool {
    // SAFETY: helper valid in process context (cgroup sock_addr programs).
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    unsafe { AGENT_CGROUPS.get(cgroup) }.is_some()
}

/// Whether a process-context hook should act on this socket at all.
#[inline(always)]
pub fn captured<C: EbpfContext>(ctx: &C) -> bool {
    in_pod(ctx) && !by_agent()
}
