//! Same-node legs without loopback TCP (`--sockmap-redirect`, off by default).
//!
//! A same-node connection through the mesh is two loopback TCP connections: app -> proxy in
//! the client pod, proxy -> app in the server pod. With the switch on, `sock_ops` puts both
//! ends of every loopback connection in an enrolled pod's namespace in `LOOPBACK_SOCKETS`,
//! and `mesh_sk_msg` (attached to that map) hands each message one of them sends straight to
//! the receive queue of the other end: no segments, no ACKs, no softirq. The connection's
//! handshake, FIN and RST still go through TCP, so accept(), the original destination, the
//! proxy's policy decision and the close path are the same as without it.
//!
//! A message whose peer is not in the map (the map was full, or the peer is not established
//! yet) goes through TCP as before.

use aya_ebpf::{
    bindings::{bpf_sock_ops, sk_action::SK_PASS, BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
    EbpfContext,
};
use mesh_common::{settings, SockAddr, SocketPairKey, AF_INET, AF_INET6};

use crate::addr;
use crate::maps::{setting, LOOPBACK_KEYS, LOOPBACK_SOCKETS};
use crate::scope;

/// Called by `sock_ops` when a connection becomes established, on either end.
#[inline(always)]
pub fn track(ctx: &SockOpsContext) {
    if !setting(settings::SOCKMAP_REDIRECT) || !scope::in_pod(ctx) {
        return;
    }
    let Some(key) = key_of(ctx) else {
        return;
    };
    // A full map leaves this connection on TCP, which is always correct.
    // SAFETY: `ops` is the program's context, valid for its duration.
    let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
    if LOOPBACK_SOCKETS.update(key, ops, 0).is_ok() && LOOPBACK_KEYS.insert(&key, &1, 0).is_ok() {
        // For `forget` when the socket closes.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// Called by `sock_ops` when a socket reaches TCP_CLOSE (the SOCKHASH entry goes by itself).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext) {
    if let Some(key) = key_of(ctx) {
        let _ = LOOPBACK_KEYS.remove(&key);
    }
}

/// The socket's own key, if it is a connection between two ends on this host.
#[inline(always)]
fn key_of(ctx: &SockOpsContext) -> Option<SocketPairKey> {
    let family = ctx.family() as u16;
    let local = end(
        family,
        ctx.local_ip4(),
        ctx.local_ip6(),
        ctx.local_port() as u16,
    )?;
    let remote = end(
        family,
        ctx.remote_ip4(),
        ctx.remote_ip6(),
        port_from_network_word(ctx.remote_port()),
    )?;
    if !on_this_host(&local, &remote) {
        return None;
    }
    // SAFETY: the netns cookie helper is valid for sock_ops.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(SocketPairKey {
        netns_cookie,
        local,
        remote,
    })
}

/// Runs for every message sent on a socket in `LOOPBACK_SOCKETS`.
#[sk_msg]
pub fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context is valid for the program's duration.
    let md = unsafe { &*ctx.msg };
    let family = md.family as u16;
    let (Some(local), Some(remote)) = (
        end(family, md.local_ip4, md.local_ip6, md.local_port as u16),
        end(
            family,
            md.remote_ip4,
            md.remote_ip6,
            port_from_network_word(md.remote_port),
        ),
    ) else {
        return SK_PASS;
    };
    // SAFETY: helper valid for sk_msg programs.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let peer = SocketPairKey {
        netns_cookie,
        local: remote,
        remote: local,
    };
    // Redirecting to a missing key would drop the message: look first.
    // SAFETY: the value is only tested for presence.
    if unsafe { LOOPBACK_KEYS.get(&peer) }.is_none() {
        return SK_PASS;
    }
    LOOPBACK_SOCKETS.redirect_msg(&ctx, peer, BPF_F_INGRESS as u64) as u32
}

/// `remote_port` in `bpf_sock_ops` and `sk_msg_md` is the network-order port in the high half
/// of a network-order word.
#[inline(always)]
fn port_from_network_word(word: u32) -> u16 {
    u32::from_be(word) as u16
}

#[inline(always)]
fn end(family: u16, ip4: u32, ip6: [u32; 4], port: u16) -> Option<SockAddr> {
    match family {
        AF_INET => Some(addr::v4(ip4, port)),
        AF_INET6 => Some(addr::v6_normalised(ip6, port)),
        _ => None,
    }
}

/// Both ends on this host: the same address (a pod's own IP) or both loopback.
#[inline(always)]
fn on_this_host(local: &SockAddr, remote: &SockAddr) -> bool {
    if local.family != remote.family {
        return false;
    }
    if local.addr == remote.addr {
        return true;
    }
    let loopback = |a: &SockAddr| {
        if a.family == AF_INET {
            // 127.0.0.0/8: the first byte of the network-order word.
            a.addr[0].to_ne_bytes()[0] == 127
        } else {
            a.addr == addr::LOOPBACK_V6
        }
    };
    loopback(local) && loopback(remote)
}
