//! What the app sees as its peer.
//!
//! - Outbound: a captured socket is really connected to 127.0.0.1:15001; report the address
//!   the app dialled (looked up by socket cookie).
//! - Inbound: the proxy delivers connections to the app over the pod's loopback; report the
//!   real client instead, which the proxy stored on its own socket before connecting
//!   (`delivered`). accept() goes through the same hook, so servers log the real client.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
    EbpfContext,
};
use mesh_common::{stats, SockAddr, AF_INET};

use crate::addr::{self, from_user_port, to_user_port};
use crate::delivered;
use crate::maps::{count, ORIG_DST_BY_COOKIE};
use crate::scope;

const ALLOW: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = addr::v4(sa.user_ip4, from_user_port(sa.user_port));
    if let Some(shown) = peer_to_show(&ctx, peer) {
        if shown.family == AF_INET {
            sa.user_ip4 = shown.addr[0];
            sa.user_port = to_user_port(shown.port);
            count(stats::PEERNAME_REWRITTEN);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = addr::v6_normalised(sa.user_ip6, from_user_port(sa.user_port));
    if let Some(shown) = peer_to_show(&ctx, peer) {
        let words = if shown.family == AF_INET {
            // The socket is AF_INET6: an IPv4 peer is shown v4-mapped.
            [0, 0, addr::MAPPED_PREFIX_WORD, shown.addr[0]]
        } else {
            shown.addr
        };
        addr::write_user_ip6(sa, words);
        sa.user_port = to_user_port(shown.port);
        count(stats::PEERNAME_REWRITTEN);
    }
    ALLOW
}

#[inline(always)]
fn peer_to_show(ctx: &SockAddrContext, peer: SockAddr) -> Option<SockAddr> {
    if !scope::captured(ctx) {
        return None;
    }
    // SAFETY: helpers valid for cgroup/sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(original) = unsafe { ORIG_DST_BY_COOKIE.get(cookie) } {
        return Some(*original);
    }
    delivered::real_client(ctx, peer)
}
