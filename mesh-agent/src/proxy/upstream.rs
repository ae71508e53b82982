//! Sockets inside the pod's network namespace, so traffic leaves with the pod's own address
//! whatever the CNI, and so the proxy can reach the app locally.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::sys::netns::NetnsSockets;

fn tokio_socket(fd: OwnedFd) -> TcpSocket {
    TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
}

/// Connects to `target` from inside the pod.
pub async fn connect(
    netns: &NetnsSockets,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = tokio_socket(netns.socket(target.is_ipv6()).await?);
    finish_connect(socket, target, timeout).await
}

/// Connects to `target` from inside the pod, from `local_ip`; `prepare` sees the socket before
/// it connects (so anything it records is there before the peer can accept the connection).
///
/// The port is left to connect() (the socket has IP_BIND_ADDRESS_NO_PORT, set in
/// `sys::netns`): the kernel then picks one whose 4-tuple is free and may reuse a 4-tuple
/// whose earlier connection is in TIME_WAIT (`net.ipv4.tcp_tw_reuse`). A port chosen at bind() time is never one held by a TIME_WAIT
/// socket, so a pod whose connections end with the proxy closing first (the client closed
/// first) would run out of ports after one port range per TIME_WAIT period (60 s).
pub async fn connect_from(
    netns: &NetnsSockets,
    local_ip: IpAddr,
    target: SocketAddr,
    timeout: Duration,
    prepare: impl FnOnce(&TcpSocket) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = tokio_socket(netns.socket(target.is_ipv6()).await?);
    socket.bind(SocketAddr::new(local_ip, 0))?;
    prepare(&socket)?;
    finish_connect(socket, target, timeout).await
}

async fn finish_connect(
    socket: TcpSocket,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {target} timed out"),
            )
        })??;
    Ok(stream)
}

/// A listening socket inside the pod, bound to `addr`.
pub async fn bind_listener(netns: &NetnsSockets, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = tokio_socket(netns.socket(addr.is_ipv6()).await?);
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        set_v6only(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// IPv6 listeners take IPv6 only; IPv4 has its own listener (and SOCKMAP slot).
fn set_v6only(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsFd;
    crate::sys::sockopt::enable(socket.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
}
