//! The inbound side of HBONE: sk_lookup steers connections for a pod's IP on 15008 to that
//! pod's HBONE listener. The listener presents the pod's certificate, demands the client's,
//! and serves HTTP/2 CONNECT streams: each is checked (target, policy), delivered to the
//! app inside the destination pod, and relayed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use mesh_api::{Protocol, Snapshot};
use mesh_common::ports;
use mesh_identity::SpiffeId;
use mesh_proto::limits::{RequestWatch, Watched};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::stream::HboneStream;
use crate::metrics::Failure;
use crate::proxy::http::sniff;
use crate::proxy::inbound::{decision_holds, deliver, track, Delivered};
use crate::proxy::policy::{admit_counted, Carries, PeerInfo, Transport};
use crate::proxy::relay::{relay_stream, relay_tunnel};
use crate::proxy::request_security::{self, serve::serve_inbound, serve::Inbound};
use crate::proxy::tracker::Registration;
use crate::proxy::PodContext;

pub async fn handle(tcp: TcpStream, client: SocketAddr, context: Arc<PodContext>) {
    let counters = &context.counters.inbound;
    // Held through the TLS handshake only: the part any client can reach, before it has
    // proved a mesh identity.
    let Some(handshake_slot) = context.shared.hbone_handshakes.admit(client.ip()) else {
        counters.fail(Failure::HboneHandshake);
        return;
    };
    let _ = tcp.set_nodelay(true);
    // A silent connection gives its slot back after a short wait, not the whole handshake
    // bound: real clients send their ClientHello at once.
    match tokio::time::timeout(super::FIRST_BYTE_TIMEOUT, tcp.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => {
            counters.fail(Failure::HboneHandshake);
            return;
        }
    }
    let Some(credential) = context.identities.credential(&context.identity) else {
        tracing::warn!(pod = %context.pod, %client, "HBONE connection before this pod has a certificate");
        counters.fail(Failure::NoCertificate);
        return;
    };
    let config = match context
        .shared
        .hbone
        .tls
        .server(&context.identities, &credential)
    {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(pod = %context.pod, error = %format!("{e:#}"), "no HBONE server config");
            counters.fail(Failure::NoCertificate);
            return;
        }
    };
    let accepted = tokio::time::timeout(
        super::HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(tcp),
    )
    .await;
    drop(handshake_slot);
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(pod = %context.pod, %client, error = %e, "HBONE TLS handshake refused");
            counters.fail(Failure::HboneHandshake);
            return;
        }
        Err(_) => {
            counters.fail(Failure::HboneHandshake);
            return;
        }
    };
    // Required client auth: a finished handshake has a verified peer identity.
    let Some(peer) = mesh_identity::tls::peer_id(tls.get_ref().1) else {
        counters.fail(Failure::HboneHandshake);
        return;
    };
    let peer = Arc::new(peer);
    let requests = RequestWatch::new(super::FIRST_REQUEST_TIMEOUT, None);
    let tls = Watched::new(tls, requests.clone());
    let handshake = h2::server::Builder::new()
        .initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_concurrent_streams(4096)
        .max_send_buffer_size(super::SEND_BUFFER)
        .max_pending_accept_reset_streams(super::MAX_RESETS)
        .max_local_error_reset_streams(Some(super::MAX_RESETS))
        .handshake::<_, Bytes>(tls);
    let mut connection = match handshake.await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::debug!(%client, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
    };
    let ping_pong = connection
        .ping_pong()
        .expect("a new connection's ping handle is there to take");
    let keep_alive = super::keepalive::until_unanswered(ping_pong);
    tokio::pin!(keep_alive);
    // Draining (upgrade, SIGTERM): GOAWAY, so the peer opens its next streams elsewhere (the
    // successor agent) while the ones under way finish.
    let shared = context.shared.clone();
    let drain = shared.drain.started();
    tokio::pin!(drain);
    let mut going_away = false;
    loop {
        let (request, respond) = tokio::select! {
            _ = &mut drain, if !going_away => {
                connection.graceful_shutdown();
                going_away = true;
                continue;
            }
            accepted = connection.accept() => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::debug!(%client, error = %e, "HBONE connection ended");
                    return;
                }
                None => return,
            },
            _ = &mut keep_alive => return,
        };
        // Each stream on a task of its own (checks, delivery, relay), counted as a request
        // in flight until it has been answered.
        let in_flight = requests.begin();
        let (context, peer) = (context.clone(), peer.clone());
        tokio::spawn(async move {
            let tunnel = connect(&request, &context, &peer, client).await;
            drop(in_flight);
            if let Some((admitted, stream)) = respond_to(tunnel, request, respond) {
                relay_admitted(admitted, stream).await;
            }
        });
    }
}

/// What a CONNECT stream gets: an answer, or an admitted stream to deliver.
enum Tunnel {
    Refused(StatusCode),
    Admitted(Box<Admitted>),
}

/// A stream that passed every check and whose app connection is open.
struct Admitted {
    destination: Arc<PodContext>,
    delivered: Delivered,
    registration: Registration,
    peer_info: PeerInfo,
    source: SocketAddr,
    target: SocketAddr,
    /// Served as HTTP (judged per request) when the port says so.
    http: Option<Protocol>,
}

/// Answers the stream; an admitted one comes back as a tunnel to relay. Bytes the client
/// sent with the CONNECT (early data) wait in the request body until then: a refused
/// stream's are discarded with it, never read.
fn respond_to(
    tunnel: Tunnel,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Option<(Admitted, HboneStream)> {
    let admitted = match tunnel {
        Tunnel::Refused(status) => {
            let _ = respond.send_response(answer(status), true);
            return None;
        }
        Tunnel::Admitted(admitted) => admitted,
    };
    let send = match respond.send_response(answer(StatusCode::OK), false) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "answering an HBONE stream failed");
            return None;
        }
    };
    Some((*admitted, HboneStream::new(send, request.into_body())))
}

fn answer(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// One CONNECT stream's checks and delivery: admitted, or the status that says why not.
async fn connect(
    request: &Request<RecvStream>,
    context: &Arc<PodContext>,
    peer: &SpiffeId,
    client: SocketAddr,
) -> Tunnel {
    let counters = &context.counters.inbound;
    if request.method() != Method::CONNECT {
        return Tunnel::Refused(StatusCode::METHOD_NOT_ALLOWED);
    }
    let target = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
    let Some(target) = target else {
        counters.fail(Failure::HboneTargetRefused);
        return Tunnel::Refused(StatusCode::BAD_REQUEST);
    };
    // The target must be a pod this node serves, under the identity this connection's
    // certificate claimed: a client cannot reach other pods through an accepted connection.
    let destination = context
        .local_pods
        .get(target.ip())
        .filter(|pod| pod.identity == context.identity);
    let Some(destination) = destination.filter(|_| !ports::is_proxy_port(target.port())) else {
        tracing::info!(pod = %context.pod, %target, %peer, "HBONE CONNECT for a target this pod does not serve");
        counters.fail(Failure::HboneTargetRefused);
        return Tunnel::Refused(StatusCode::MISDIRECTED_REQUEST);
    };
    let counters = &destination.counters.inbound;
    counters.connections.inc();
    let snapshot = destination.registry.snapshot();
    let source = claimed_source(request, &snapshot, peer).unwrap_or(client);
    let peer_info = PeerInfo {
        principal: Some(peer.to_string()),
        ip: source.ip(),
    };
    let port = target.port();
    // Ports whose requests are judged one by one are served as HTTP (`auto` ones only if
    // the stream's first bytes are HTTP: then judged per connection after all).
    let http = request_security::inbound_http(&snapshot, &destination, port);
    let carries = if http.is_some() {
        Carries::Http
    } else {
        Carries::Bytes
    };
    let admitted = admit_counted(
        &snapshot,
        &destination.workload,
        &peer_info,
        port,
        Transport::Hbone,
        carries,
        counters,
    );
    if admitted.is_err() {
        return Tunnel::Refused(StatusCode::FORBIDDEN);
    }
    let delivered = match deliver(&destination, target, source).await {
        Ok(delivered) => delivered,
        Err(e) => {
            tracing::debug!(pod = %destination.pod, %target, error = %e, "delivering an HBONE stream failed");
            counters.fail(Failure::UpstreamConnect);
            return Tunnel::Refused(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let registration = track(
        &destination,
        Transport::Hbone,
        peer_info.clone(),
        source,
        target,
        carries,
    );
    let held = decision_holds(
        &destination,
        &snapshot,
        &peer_info,
        port,
        Transport::Hbone,
        carries,
    );
    if !held {
        return Tunnel::Refused(StatusCode::FORBIDDEN);
    }
    Tunnel::Admitted(Box::new(Admitted {
        destination,
        delivered,
        registration,
        peer_info,
        source,
        target,
        http,
    }))
}

/// Relays an admitted stream to its app: bytes as they are, or requests judged one by one.
async fn relay_admitted(admitted: Admitted, stream: HboneStream) {
    let Admitted {
        destination,
        delivered,
        registration,
        peer_info,
        source,
        target,
        http,
    } = admitted;
    let counters = &destination.counters.inbound;
    let Some(protocol) = http else {
        tokio::select! {
            _ = relay_tunnel(delivered.stream, stream, counters) => {}
            _ = registration.closed() => {}
        }
        return;
    };
    let (stream, is_http) = sniff::decide_buffered(stream, protocol).await;
    if is_http {
        let inbound = Inbound {
            pod: destination,
            peer: peer_info,
            peer_address: source,
            destination: target,
            protocol,
        };
        serve_inbound(stream, delivered.stream, inbound, registration).await;
        return;
    }
    // Not HTTP after all: the connection-level decision applies.
    let snapshot = destination.registry.snapshot();
    let port = target.port();
    if admit_counted(
        &snapshot,
        &destination.workload,
        &peer_info,
        port,
        Transport::Hbone,
        Carries::Opaque,
        counters,
    )
    .is_ok()
    {
        drop(registration);
        let registration = track(
            &destination,
            Transport::Hbone,
            peer_info,
            source,
            target,
            Carries::Opaque,
        );
        tokio::select! {
            _ = relay_stream(delivered.stream, stream, counters) => {}
            _ = registration.closed() => {}
        }
    }
}

/// The app address the client says the stream comes from (`Forwarded: for="ip:port"`),
/// believed only if that address belongs to a workload with the client's verified identity;
/// a pooled connection carries streams of every pod of that identity on the client's node.
fn claimed_source(
    request: &Request<RecvStream>,
    snapshot: &Snapshot,
    peer: &SpiffeId,
) -> Option<SocketAddr> {
    let value = request
        .headers()
        .get(http::header::FORWARDED)?
        .to_str()
        .ok()?;
    let claimed: SocketAddr = value.strip_prefix("for=")?.trim_matches('"').parse().ok()?;
    let workload = snapshot.workload_by_ip(claimed.ip())?;
    (snapshot.mesh_config().identity_of(workload) == peer.as_str()).then_some(claimed)
}
