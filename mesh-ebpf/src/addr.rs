//! Address helpers: the one place that knows how the kernel lays out ports and v4-mapped
//! IPv6 addresses, so every hook normalises the same way.

use mesh_common::{SockAddr, AF_INET, AF_INET6};

/// `::ffff:a.b.c.d` in network-order words: word 2 is 00 00 ff ff.
#[inline(always)]
pub fn is_v4_mapped(words: &[u32; 4]) -> bool {
    words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

#[inline(always)]
pub fn v4(word: u32, port: u16) -> SockAddr {
    SockAddr {
        addr: [word, 0, 0, 0],
        port,
        family: AF_INET,
    }
}

/// An IPv6 socket address, folded to IPv4 when it is v4-mapped (dual-stack sockets), so the
/// proxy, which sees the IPv4 side of the same connection, finds the same key.
#[inline(always)]
pub fn v6_normalised(words: [u32; 4], port: u16) -> SockAddr {
    if is_v4_mapped(&words) {
        v4(words[3], port)
    } else {
        SockAddr {
            addr: words,
            port,
            family: AF_INET6,
        }
    }
}

/// `user_port` in `bpf_sock_addr` is a network-order u16 in a u32.
#[inline(always)]
pub fn from_user_port(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

#[inline(always)]
pub fn to_user_port(port: u16) -> u32 {
    port.to_be() as u32
}

pub const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
pub const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
pub const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Writes `user_ip6` one 32-bit word at a time: the verifier only accepts 4-byte stores to
/// the context, and a plain array assignment may be compiled into a copy through a modified
/// context pointer.
#[inline(always)]
pub fn write_user_ip6(sa: &mut aya_ebpf::bindings::bpf_sock_addr, words: [u32; 4]) {
    for (i, word) in words.iter().enumerate() {
        // SAFETY: in-bounds field of the context, written with a 4-byte store.
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], *word) };
    }
}
