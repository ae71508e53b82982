//! Original destination handoff. When the app's captured connection to the proxy becomes
//! established, copy the original destination from the socket cookie to a key the proxy can
//! compute from the accepted socket: (netns cookie, app socket address). The connection is
//! established on the client side before the proxy can accept it, so the entry is always
//! there in time.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext,
};
use mesh_common::{stats, ConnKey, AF_INET, AF_INET6};

use crate::addr;
use crate::maps::{count, ORIG_DST, ORIG_DST_BY_COOKIE};
use crate::scope;

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => record_original_destination(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => forget(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn record_original_destination(ctx: &SockOpsContext) {
    // Runs for every socket on the node: a namespace lookup first (agent sockets never have
    // a cookie entry, connect4/6 skip them, so they need no check here).
    if !scope::in_pod(ctx) {
        return;
    }
    // SAFETY: helpers valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(original) = (unsafe { ORIG_DST_BY_COOKIE.get(cookie) }) else {
        return;
    };
    let original = *original;
    let local_port = ctx.local_port() as u16; // host order in sock_ops
    let local = match ctx.family() {
        f if f == AF_INET as u32 => addr::v4(ctx.local_ip4(), local_port),
        f if f == AF_INET6 as u32 => addr::v6_normalised(ctx.local_ip6(), local_port),
        _ => return,
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if ORIG_DST
        .insert(ConnKey::new(netns, local), original, 0)
        .is_ok()
    {
        count(stats::ORIG_DST_RECORDED);
    }
    // Ask for state callbacks so the cookie entry goes away with the socket.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
fn forget(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = ORIG_DST_BY_COOKIE.remove(cookie);
}
