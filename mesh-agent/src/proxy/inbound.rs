//! Inbound: sk_lookup handed a connection for this pod to its inbound listener, so the
//! accepted socket's local address is where the client was going. Deliver it to the app from
//! inside the pod, through the loopback device, and make the app see the real client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::http::sniff;
use super::policy::{admit_counted, Carries, PeerInfo, Transport};
use super::request_security::{self, serve::serve_inbound, serve::Inbound};
use super::tracker::{NewConnection, Registration};
use super::{upstream, PodContext};
use crate::handover::{relay_or_hand_over, HandedConnection};
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
    // Ports whose requests are judged one by one are served as HTTP (`auto` ones only when
    // the client's first bytes are HTTP); the rest are relayed.
    let mut http = request_security::inbound_http(&snapshot, &context, port);
    let mut client_stream = client_stream;
    let mut carries = Carries::Bytes;
    if let Some(protocol) = http {
        match sniff::decide(client_stream, protocol).await {
            Ok((stream, is_http)) => {
                client_stream = stream;
                http = http.filter(|_| is_http);
                carries = if is_http {
                    Carries::Http
                } else {
                    Carries::Opaque
                };
            }
            Err(_) => return,
        }
    }
    if admit_counted(
        &snapshot,
        &context.workload,
        &peer,
        port,
        Transport::Plaintext,
        carries,
        counters,
    )
    .is_err()
    {
        return;
    }
    let delivered = match deliver(&context, destination, client).await {
        Ok(delivered) => delivered,
        Err(e) => {
            tracing::debug!(pod = %context.pod, %destination, error = %e, "delivering to the app failed");
            counters.fail(Failure::UpstreamConnect);
            return;
        }
    };
    let registration = track(
        &context,
        Transport::Plaintext,
        peer.clone(),
        client,
        destination,
        carries,
    );
    if !decision_holds(
        &context,
        &snapshot,
        &peer,
        port,
        Transport::Plaintext,
        carries,
    ) {
        return;
    }
    match http {
        Some(protocol) => {
            let inbound = Inbound {
                pod: context.clone(),
                peer,
                peer_address: client,
                destination,
                protocol,
            };
            serve_inbound(client_stream, delivered.stream, inbound, registration).await;
        }
        None => {
            let describe = || HandedConnection {
                pod: context.pod.clone(),
                direction: Direction::Inbound,
                peer_pod: None,
                tracked: registration.describe(),
            };
            let relayed = relay_or_hand_over(
                &context,
                delivered.stream,
                client_stream,
                counters,
                None,
                describe,
            );
            tokio::select! {
                _ = relayed => {}
                _ = registration.closed() => {}
            }
        }
    }
}

/// Whether a connection decided under `used` may go on now that it is registered: a config
/// change that came in between (while delivering, sniffing) was re-checked by the tracker
/// without it, so it is judged here against the current config, the tracker's way: relayed
/// bytes on a port now judged per request, or HTTP on a port no longer judged (whose
/// requests would skip the connection-level policy), end; so does one now denied.
pub fn decision_holds(
    context: &PodContext,
    used: &Arc<mesh_api::Snapshot>,
    peer: &PeerInfo,
    port: u16,
    transport: Transport,
    carries: Carries,
) -> bool {
    let current = context.registry.snapshot();
    Arc::ptr_eq(used, &current) || still_admitted(context, &current, peer, port, transport, carries)
}

/// Whether the config `current` admits an open connection into `context`'s pod: the
/// tracker's judgement, also of a connection handed over by the previous agent.
pub fn still_admitted(
    context: &PodContext,
    current: &mesh_api::Snapshot,
    peer: &PeerInfo,
    port: u16,
    transport: Transport,
    carries: Carries,
) -> bool {
    let judged = request_security::judged_per_request(current, &context.workload, port);
    let fits = match carries {
        Carries::Http => judged,
        Carries::Bytes => !judged,
        Carries::Opaque => true,
    };
    let counters = &context.counters.inbound;
    fits && admit_counted(
        current,
        &context.workload,
        peer,
        port,
        transport,
        carries,
        counters,
    )
    .is_ok()
}

/// Lists a connection into `context`'s pod, subject to its inbound policy from now on.
pub fn track(
    context: &PodContext,
    transport: Transport,
    peer: PeerInfo,
    peer_address: SocketAddr,
    destination: SocketAddr,
    carries: Carries,
) -> Registration {
    context.shared.connections.register(
        NewConnection {
            pod: &context.pod,
            direction: Direction::Inbound,
            transport,
            peer,
            peer_address,
            destination,
            carries,
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
