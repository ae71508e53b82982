//! The real client of a connection the proxy delivered to an app.
//!
//! The proxy connects to the app from inside the pod, from the pod's own address, with a port
//! the kernel picks in connect() (so TIME_WAIT 4-tuples can be reused). Before connecting it
//! stores the real client in the socket storage of its own socket (`PEER_CLIENT`). When the
//! app asks for its peer, that peer *is* the proxy's socket: find it by the connection's
//! 4-tuple, seen from the proxy's side, and read its storage. Nothing to register after the
//! port is known (no race with the app's accept()), nothing to clean up (storage dies with the
//! socket), and an app's own connection to itself has no storage, so it is never rewritten.

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        BPF_F_CURRENT_NETNS,
    },
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release, bpf_sk_storage_get},
    programs::SockAddrContext,
    EbpfContext,
};
use mesh_common::{SockAddr, AF_INET, AF_INET6};

use crate::addr;
use crate::maps::PEER_CLIENT;

const SOCK_STREAM: u32 = 1;

/// The client the proxy recorded on the socket at the other end of the app's connection, if
/// that socket is one of the proxy's delivery sockets. `peer` is the address the kernel is
/// about to report (normalised).
#[inline(always)]
pub fn real_client(ctx: &SockAddrContext, peer: SockAddr) -> Option<SockAddr> {
    // SAFETY: the context pointer is valid for the duration of the program; `sk` is the
    // socket the syscall is about and is never null in sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return None;
    }
    let sk = unsafe { &*sa.__bindgen_anon_1.sk };
    let local = app_local_address(sk, peer.family)?;
    // Deliveries come from the app's own address (pod-local, over loopback): anything else
    // cannot be the proxy, and skipping it keeps ordinary getpeername() calls cheap.
    if local.addr != peer.addr {
        return None;
    }
    lookup_recorded_client(ctx, local, peer)
}

/// The app socket's own address, in the family of `peer` (a dual-stack socket with an IPv4
/// peer has a v4-mapped local address, which is read as IPv4).
#[inline(always)]
fn app_local_address(sk: &bpf_sock, peer_family: u16) -> Option<SockAddr> {
    let port = sk.src_port as u16; // host order in bpf_sock
    match peer_family {
        AF_INET => Some(addr::v4(sk.src_ip4, port)),
        AF_INET6 => Some(addr::v6_normalised(sk.src_ip6, port)),
        _ => None,
    }
}

/// Looks up the socket whose local address is `proxy` and whose peer is `app` (as a packet from
/// the app to the proxy would), and reads the client stored on it.
#[inline(always)]
fn lookup_recorded_client(
    ctx: &SockAddrContext,
    app: SockAddr,
    proxy: SockAddr,
) -> Option<SockAddr> {
    let (mut tuple, size) = if app.family == AF_INET {
        let v4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: app.addr[0],
            daddr: proxy.addr[0],
            sport: app.port.to_be(),
            dport: proxy.port.to_be(),
        };
        let size = core::mem::size_of_val(&v4);
        (tuple_of(bpf_sock_tuple__bindgen_ty_1 { ipv4: v4 }), size)
    } else {
        let v6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: app.addr,
            daddr: proxy.addr,
            sport: app.port.to_be(),
            dport: proxy.port.to_be(),
        };
        let size = core::mem::size_of_val(&v6);
        (tuple_of(bpf_sock_tuple__bindgen_ty_1 { ipv6: v6 }), size)
    };
    // SAFETY: helpers valid for cgroup/sock_addr programs; the socket reference taken by the
    // lookup is released on every path below.
    let proxy_sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if proxy_sk.is_null() {
        return None;
    }
    let map = PEER_CLIENT.as_ptr();
    let stored = unsafe { bpf_sk_storage_get(map, proxy_sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<SockAddr>();
    let client = if stored.is_null() {
        None
    } else {
        // SAFETY: a non-null result points at this map's value type, valid until release.
        Some(unsafe { *stored })
    };
    unsafe { bpf_sk_release(proxy_sk.cast()) };
    client
}

#[inline(always)]
fn tuple_of(addresses: bpf_sock_tuple__bindgen_ty_1) -> bpf_sock_tuple {
    bpf_sock_tuple {
        __bindgen_anon_1: addresses,
    }
}
