//! Inbound capture. TCP arriving at an enrolled pod from elsewhere is handed to the pod's
//! inbound listener, so the accepted socket's local address is the original destination.
//! Port 15008 goes to the HBONE listener.
//!
//! Traffic a pod sends to itself is left alone: that is how the proxy delivers to the app
//! (from the pod's own address, inside the pod), and steering it would loop. Loopback is
//! recognised by the source address, not the ingress device: the kernel reports the pod's
//! interface as ingress even for local delivery to the pod's own IP.
//!
//! The program is attached only to enrolled pods' namespaces, so everything it sees arriving
//! on a non-loopback interface is for the pod. An address the agent has not registered in
//! `POD_BY_IP` (added inside the pod after enrollment and not followed yet, added while the
//! agent is down, link-local, or made local by a route) is refused, never passed to whatever
//! listens there: steering does not depend on the agent having seen every address.
//!
//! Fail closed: if the pod is enrolled but its listener is gone (agent down), the connection is
//! refused rather than delivered to the app around the mesh. (SK_DROP makes the kernel's
//! listener lookup fail, so TCP answers the SYN with a RST: the client sees "connection
//! refused" at once instead of hanging.)

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_common::{listener_index, ports, stats, ListenerKind, AF_INET, AF_INET6};

use crate::addr;
use crate::maps::{count, INBOUND_LISTENERS, POD_BY_IP};

const IPPROTO_TCP: u32 = 6;
/// The loopback device is always ifindex 1 in a network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn mesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let local_port = lookup.local_port as u16; // host order in sk_lookup
    let (local, remote) = match lookup.family {
        f if f == AF_INET as u32 => (
            addr::v4(lookup.local_ip4, local_port),
            addr::v4(lookup.remote_ip4, 0),
        ),
        f if f == AF_INET6 as u32 => (
            addr::v6_normalised(lookup.local_ip6, local_port),
            addr::v6_normalised(lookup.remote_ip6, 0),
        ),
        _ => return SK_PASS,
    };
    if local.addr == remote.addr {
        return SK_PASS;
    }
    let Some(pod) = (unsafe { POD_BY_IP.get(local.addr) }) else {
        count(stats::LOOKUP_UNKNOWN_ADDRESS);
        return SK_DROP;
    };
    let kind = if local_port == ports::HBONE {
        ListenerKind::Hbone
    } else {
        ListenerKind::Inbound
    };
    let ipv6 = lookup.family == AF_INET6 as u32;
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, listener_index(pod.slot, kind, ipv6), 0) {
        Ok(()) => {
            count(stats::LOOKUP_STEERED);
            SK_PASS
        }
        Err(_) => {
            count(stats::LOOKUP_FAIL_CLOSED);
            SK_DROP
        }
    }
}
