//! Notice of address changes inside a network namespace: a NETLINK_ROUTE socket subscribed to
//! the IPv4 and IPv6 address groups (RTM_NEWADDR / RTM_DELADDR).
//!
//! The messages are deliberately not parsed. Each one only means "the addresses may have
//! changed", and whoever waits re-reads the whole list from the kernel. So nothing in a message
//! (which a process in the pod with CAP_NET_ADMIN could shape) can mislead or crash the agent,
//! and a lost message (receive buffer overflow, ENOBUFS) costs nothing but that re-read.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;

use super::netns::NetnsSockets;

/// A subscription to the address changes of one network namespace.
pub struct AddressEvents {
    socket: AsyncFd<OwnedFd>,
}

impl AddressEvents {
    /// Subscribes to address changes in `netns`. The socket is created inside the namespace
    /// (a netlink socket reports on the namespace it was created in); it is read here, on the
    /// runtime.
    pub async fn subscribe(netns: &NetnsSockets) -> io::Result<AddressEvents> {
        let socket = netns.run(route_socket).await??;
        // SAFETY: the OwnedFd is open, is owned by the AsyncFd from now on, and always
        // returns the same descriptor.
        let socket = unsafe { AsyncFd::register(socket) }?;
        Ok(AddressEvents { socket })
    }

    /// Waits until at least one change has been announced, then consumes every notice that is
    /// pending, so a burst of changes costs one re-read.
    pub async fn changed(&mut self) -> io::Result<()> {
        // Big enough for a typical notice; a longer one is truncated, which is fine: only its
        // arrival counts.
        let mut buffer = [0u8; 4096];
        loop {
            let mut ready = self.socket.readable().await?;
            let mut announced = false;
            loop {
                let fd = self.socket.get_ref().as_raw_fd();
                match recv(fd, &mut buffer, MsgFlags::MSG_DONTWAIT) {
                    Ok(_) => announced = true,
                    // The kernel dropped notices for want of buffer space: something changed.
                    Err(Errno::ENOBUFS) => announced = true,
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
            if announced {
                return Ok(());
            }
        }
    }
}

/// A non-blocking NETLINK_ROUTE socket in the calling thread's namespace, bound to the IPv4
/// and IPv6 address groups.
fn route_socket() -> io::Result<OwnedFd> {
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // Port id 0: the kernel assigns a unique one.
    bind(socket.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(socket)
}
