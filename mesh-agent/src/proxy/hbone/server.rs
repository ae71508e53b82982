//! The inbound side of HBONE: sk_lookup steers connections for a pod's IP on 15008 to that
//! pod's HBONE listener. The listener presents the pod's certificate, demands the client's,
//! and serves HTTP/2 CONNECT streams: each is checked (target, policy), delivered to the
//! app inside the destination pod, and relayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_api::Snapshot;
use mesh_common::ports;
use mesh_identity::SpiffeId;
use mesh_proto::limits::{RequestWatch, Watched};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::handover::serve_draining;
use crate::metrics::Failure;
use crate::proxy::http::sniff;
use crate::proxy::inbound::{decision_holds, deliver, track};
use crate::proxy::policy::{admit_counted, Carries, PeerInfo, Transport};
use crate::proxy::relay::relay_stream;
use crate::proxy::request_security::{self, serve::serve_inbound, serve::Inbound};
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
    let shared = context.shared.clone();
    let requests = RequestWatch::new(super::FIRST_REQUEST_TIMEOUT, None);
    let tls = Watched::new(tls, requests.clone());
    let service = hyper::service::service_fn(move |request| {
        let context = context.clone();
        let peer = peer.clone();
        let in_flight = requests.begin();
        async move {
            let _in_flight = in_flight;
            Ok::<_, Infallible>(connect(request, context, &peer, client).await)
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .initial_stream_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_concurrent_streams(4096)
        .max_send_buf_size(super::SEND_BUFFER)
        .max_pending_accept_reset_streams(super::MAX_RESETS)
        .max_local_error_reset_streams(super::MAX_RESETS)
        .serve_connection(TokioIo::new(tls), service);
    // Draining (upgrade, SIGTERM): GOAWAY, so the peer opens its next streams elsewhere
    // while the ones under way finish.
    let served = serve_draining!(shared.drain, connection).await;
    if let Err(e) = served {
        tracing::debug!(%client, error = %e, "HBONE connection ended");
    }
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// One CONNECT stream: check it, deliver it, answer 200 and relay, or answer why not.
async fn connect(
    mut request: Request<Incoming>,
    context: Arc<PodContext>,
    peer: &SpiffeId,
    client: SocketAddr,
) -> Response<Empty<Bytes>> {
    let counters = &context.counters.inbound;
    if request.method() != Method::CONNECT {
        return answer(StatusCode::METHOD_NOT_ALLOWED);
    }
    let target = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
    let Some(target) = target else {
        counters.fail(Failure::HboneTargetRefused);
        return answer(StatusCode::BAD_REQUEST);
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
        return answer(StatusCode::MISDIRECTED_REQUEST);
    };
    let counters = &destination.counters.inbound;
    counters.connections.inc();
    let snapshot = destination.registry.snapshot();
    let source = claimed_source(&request, &snapshot, peer).unwrap_or(client);
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
        return answer(StatusCode::FORBIDDEN);
    }
    let delivered = match deliver(&destination, target, source).await {
        Ok(delivered) => delivered,
        Err(e) => {
            tracing::debug!(pod = %destination.pod, %target, error = %e, "delivering an HBONE stream failed");
            counters.fail(Failure::UpstreamConnect);
            return answer(StatusCode::SERVICE_UNAVAILABLE);
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
        return answer(StatusCode::FORBIDDEN);
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "HBONE stream upgrade failed");
                return;
            }
        };
        let Some(protocol) = http else {
            let counters = &destination.counters.inbound;
            tokio::select! {
                _ = relay_stream(delivered.stream, upgraded, counters) => {}
                _ = registration.closed() => {}
            }
            return;
        };
        let (stream, is_http) = sniff::decide_buffered(upgraded, protocol).await;
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
        let counters = &destination.counters.inbound;
        let workload = &destination.workload;
        if admit_counted(
            &snapshot,
            workload,
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
    });
    answer(StatusCode::OK)
}

/// The app address the client says the stream comes from (`Forwarded: for="ip:port"`),
/// believed only if that address belongs to a workload with the client's verified identity;
/// a pooled connection carries streams of every pod of that identity on the client's node.
fn claimed_source(
    request: &Request<Incoming>,
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
