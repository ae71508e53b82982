//! The servers: HTTP (hyper, see [`crate::http_serve`]), echo, sink, peer and banner, on one
//! tokio runtime, many connections each.

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a server does with each accepted connection.
#[derive(Clone)]
pub enum Handler {
    /// HTTP/1.1 and HTTP/2: see [`crate::http_serve::ROUTES_HELP`].
    Http(Arc<crate::http_serve::Server>),
    Echo,
    Sink,
    /// Answers `peer=<accept() peer> getpeername=<getpeername()>` and then closes first, or
    /// waits for the client to close, as the client's first byte asks (see [`PEER_CLOSE_FIRST`]).
    Peer,
    /// Writes this line first, then echoes.
    Banner(Arc<str>),
}

/// First byte a client of the peer server sends to have the server close first; any other
/// byte makes the server wait for the client's close.
pub const PEER_CLOSE_FIRST: u8 = b'S';

/// Binds every address, prints `listening <addr>` for each, and serves until killed.
pub fn serve(addrs: &[SocketAddr], handler: Handler) -> Result<()> {
    serve_with(addrs, |listener| {
        tokio::spawn(accept_loop(listener, handler.clone()))
    })
}

/// Binds every address, prints `listening <addr>` for each, and runs `start` on each listener
/// (it spawns the accept loop) until every loop ends.
pub fn serve_with(
    addrs: &[SocketAddr],
    start: impl Fn(TcpListener) -> tokio::task::JoinHandle<()>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for &addr in addrs {
            let listener = bind(addr).with_context(|| format!("listen on {addr}"))?;
            println!("listening {}", listener.local_addr()?);
            tasks.push(start(listener));
        }
        std::io::stdout().flush()?;
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

/// A listener with SO_REUSEADDR (restart without waiting for TIME_WAIT), a deep backlog (for
/// connect-rate), and IPV6_V6ONLY on v6 so `0.0.0.0:P` and `[::]:P` can coexist and IPv4
/// clients are reported as plain IPv4 rather than `::ffff:` addresses.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(TcpListener::from_std(s.into())?)
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. EMFILE under load: back off instead of spinning or dying.
                eprintln!("pod-tool: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            match handler {
                Handler::Http(server) => {
                    crate::http_serve::serve_connection(sock, peer, server).await
                }
                Handler::Echo => echo(sock).await,
                Handler::Sink => sink(sock).await,
                Handler::Peer => peer_report(sock, peer).await,
                Handler::Banner(banner) => crate::banner::serve_connection(sock, banner).await,
            }
        });
    }
}

pub async fn echo(mut sock: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if sock.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn peer_report(mut sock: TcpStream, accepted: SocketAddr) {
    let mut mode = [0u8; 1];
    if sock.read_exact(&mut mode).await.is_err() {
        return;
    }
    let seen = match sock.peer_addr() {
        Ok(a) => a.to_string(),
        Err(e) => format!("?({e})"),
    };
    let line = format!("peer={accepted} getpeername={seen}\n");
    if sock.write_all(line.as_bytes()).await.is_err() || mode[0] == PEER_CLOSE_FIRST {
        return;
    }
    // The client closes first: wait for its FIN (or anything else it sends) before closing.
    let mut rest = [0u8; 64];
    while let Ok(1..) = sock.read(&mut rest).await {}
}

async fn sink(mut sock: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(1..) = sock.read(&mut buf).await {}
}
