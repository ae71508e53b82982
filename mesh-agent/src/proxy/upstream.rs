//! Sockets inside the pod's network namespace, so traffic leaves with the pod's own address
//! whatever the CNI, and so the proxy can reach the app locally.

use std::io;
use std::net::SocketAddr;
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

/// Connects to `target` from inside the pod, from an address chosen up front: the caller
/// learns its own address (`on_bound`) before the peer can accept the connection.
pub async fn connect_from(
    netns: &NetnsSockets,
    local: SocketAddr,
    target: SocketAddr,
    timeout: Duration,
    on_bound: impl FnOnce(SocketAddr) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = tokio_socket(netns.socket(target.is_ipv6()).await?);
    // The proxy passes the client's FIN on to the app first, so these sockets end in
    // TIME_WAIT. SO_REUSEADDR lets bind() pick a port held only by TIME_WAIT sockets (connect()
    // then applies tcp_tw_reuse); without it a churning pod runs out of ports. The port must be
    // chosen at bind() time (not deferred to connect()) so the peer rewrite is registered
    // before the app can accept.
    socket.set_reuseaddr(true)?;
    socket.bind(local)?;
    on_bound(socket.local_addr()?)?;
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
    stream.set_nodelay(true)?;
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
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
