//! Outbound capture. A TCP connect() from a pod to a captured destination (service VIP or mesh
//! workload) is rewritten to the pod-local outbound listener; the original destination is kept
//! under the socket cookie for `sock_ops` and `getpeername`. Everything else goes direct.
//!
//! Fail closed: the rewrite does not depend on the agent being up. If the agent is down its
//! listener is gone and the app's connect() is refused, never silently sent around the mesh.

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
    EbpfContext,
};
use mesh_common::{ports, stats, SockAddr};

use crate::addr::{self, from_user_port, to_user_port};
use crate::maps::{count, CAPTURE_V4, CAPTURE_V6, ORIG_DST_BY_COOKIE};
use crate::scope;

const SOCK_STREAM: u32 = 1;
/// cgroup/connect* return value that lets the syscall proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || !scope::captured(&ctx) {
        return ALLOW;
    }
    let port = from_user_port(sa.user_port);
    if !is_captured_v4(sa.user_ip4, port) {
        count(stats::CONNECT_DIRECT);
        return ALLOW;
    }
    remember(&ctx, addr::v4(sa.user_ip4, port));
    sa.user_ip4 = addr::LOOPBACK_V4;
    sa.user_port = to_user_port(ports::OUTBOUND);
    count(stats::CONNECT_CAPTURED);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || !scope::captured(&ctx) {
        return ALLOW;
    }
    let port = from_user_port(sa.user_port);
    let words = sa.user_ip6;
    let original = addr::v6_normalised(words, port);
    let captured = if addr::is_v4_mapped(&words) {
        is_captured_v4(words[3], port)
    } else {
        is_captured_v6(words, port)
    };
    if !captured {
        count(stats::CONNECT_DIRECT);
        return ALLOW;
    }
    remember(&ctx, original);
    if addr::is_v4_mapped(&words) {
        // A dual-stack socket dialling an IPv4 destination: keep it IPv4 (::ffff:127.0.0.1).
        addr::write_user_ip6(sa, [0, 0, addr::MAPPED_PREFIX_WORD, addr::LOOPBACK_V4]);
    } else {
        addr::write_user_ip6(sa, addr::LOOPBACK_V6);
    }
    sa.user_port = to_user_port(ports::OUTBOUND);
    count(stats::CONNECT_CAPTURED);
    ALLOW
}

#[inline(always)]
fn is_captured_v4(ip: u32, port: u16) -> bool {
    !ports::is_proxy_port(port) && CAPTURE_V4.get(Key::new(32, ip)).is_some()
}

#[inline(always)]
fn is_captured_v6(words: [u32; 4], port: u16) -> bool {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid bit patterns.
    let bytes: [u8; 16] = unsafe { core::mem::transmute(words) };
    !ports::is_proxy_port(port) && CAPTURE_V6.get(Key::new(128, bytes)).is_some()
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, original: SockAddr) {
    // SAFETY: helper valid for cgroup/sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // If the map is full the LRU evicts the oldest entry; a failed insert still captures (the
    // proxy then finds no original destination and closes: fail closed, not bypass).
    let _ = ORIG_DST_BY_COOKIE.insert(cookie, original, 0);
}
