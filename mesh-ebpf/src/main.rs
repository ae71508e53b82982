//! The mesh's kernel side: one file per hook.
//!
//! - `connect`: cgroup connect4/connect6, outbound capture into the pod-local proxy listener.
//! - `sock_ops`: records the original destination under the app socket's address once the
//!   connection to the proxy is established, so the proxy can find it on accept.
//! - `getpeername`: the app sees the address it dialled, and an app accepting a connection the
//!   proxy delivered sees the real client (found by `delivered` on the proxy's own socket).
//! - `sk_lookup`: inbound capture of TCP arriving on the pod's interface.
//!
//! - `scope`: the socket hooks are attached once per node and act only in enrolled pods'
//!   network namespaces, never on an agent's own sockets.
//!
//! Shared map definitions live in `maps`; layouts and names in `mesh-common`.
#![no_std]
#![no_main]

mod addr;
mod connect;
mod delivered;
mod getpeername;
mod maps;
mod scope;
mod sk_lookup;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible so the kernel allows every helper we use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
