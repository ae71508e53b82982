//! Inbound: sk_lookup handed a connection for this pod to its inbound listener, so the
//! accepted socket's local address is where the client was going. Deliver it to the app from
//! inside the pod, through the loopback device, and make the app see the real client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::policy::{admit_counted, PeerInfo, Transport};
use super::tracker::{NewConnection, Registration};
use super::{relay::relay, upstream, PodContext};
use crate::metrics::{Direction, Failure};

pub async fn handle(client_stream: TcpStream, client: SocketAddr, context: Arc<PodContext>) {
    let counters = &context.counters.inbound;
    counters.connections.inc();
    let _ = client_stream.set_nodelay(true);
    let Ok(destination) = client_stream.local_addr() else {
        return;
    };
    if mesh_common::ports::is_proxy_port(destination.port()) {
        counters.fail(Failure::ProxyPort);
        return;
    }
    let peer = PeerInfo {
        principal: None,
        ip: client.ip(),
    };
    let snapshot = context.registry.snapshot();
    let port = destination.port();
    if admit_counted(
        &snapshot,
        &context.workload,
        &peer,
        port,
        Transport::Plaintext,
        counters,
    )
    .is_err()
    {
        return;
    }
    match deliver(&context, destination, client).await {
        Ok(delivered) => {
            let registration = track(&context, Transport::Plaintext, peer, client, destination);
            tokio::select! {
                _ = relay(delivered.stream, client_stream, counters, None) => {}
                _ = registration.closed() => {}
            }
        }
        Err(e) => {
            tracing::debug!(pod = %context.pod, %destination, error = %e, "delivering to the app failed");
            counters.fail(Failure::UpstreamConnect);
        }
    }
}

/// Lists a connection into `context`'s pod, subject to its inbound policy from now on.
pub fn track(
    context: &PodContext,
    transport: Transport,
    peer: PeerInfo,
    peer_address: SocketAddr,
    destination: SocketAddr,
) -> Registration {
    context.shared.connections.register(
        NewConnection {
            pod: &context.pod,
            direction: Direction::Inbound,
            transport,
            peer,
            peer_address,
            destination,
        },
        Some((context.workload.clone(), context.counters.inbound.clone())),
    )
}

/// A connection to the app inside a pod, which the app sees as coming from the real client.
pub struct Delivered {
    pub stream: TcpStream,
}

/// Connects to the app at `destination` from inside the pod of `context`, so that the app's
/// accept() and getpeername() show `client`.
///
/// Connecting to the pod's own address from inside the pod goes over the loopback device and is
/// pod-local traffic, which sk_lookup leaves alone; it reaches apps bound to the pod IP or the
/// wildcard. The real client is stored on the proxy's socket before it connects (the handshake
/// over loopback can complete before connect() returns, and the app may accept at once); the
/// getpeername hook finds that socket from the app's side of the connection. The entry lives
/// and dies with the socket: nothing to remove afterwards.
pub async fn deliver(
    context: &Arc<PodContext>,
    destination: SocketAddr,
    client: SocketAddr,
) -> std::io::Result<Delivered> {
    let stream = upstream::connect_from(
        &context.netns,
        destination.ip(),
        destination,
        context.connect_timeout,
        |socket| {
            context
                .maps
                .set_peer_client(socket, client)
                .map_err(std::io::Error::other)
        },
    )
    .await?;
    Ok(Delivered { stream })
}
