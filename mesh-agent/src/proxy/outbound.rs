//! Outbound: the app dialled a captured destination and connect4/6 sent it to this pod's
//! listener on 127.0.0.1:15001. Find the original destination, route it, then either relay
//! bytes to one endpoint (TCP ports) or serve it as HTTP, routing each request (HTTP ports,
//! and `auto` ports whose client speaks HTTP).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::circuit::Limit;
use super::dial::{connect_first, Upstream};
use super::early::Early;
use super::http::{self, HttpTarget};
use super::idle;
use super::policy::Carries;
use super::relay::relay_tunnel;
use super::telemetry::{ConnectionRecord, PeerLabels};
use super::tracker::Registration;
use super::PodContext;
use crate::balance::Picked;
use crate::handover::{relay_or_hand_over, HandedConnection};
use crate::metrics::{Direction, DirectionCounters, Failure};
use crate::registry::{Route, Source};

pub async fn handle(app_stream: TcpStream, app: SocketAddr, context: Arc<PodContext>) {
    let counters = &context.counters.outbound;
    counters.connections.inc();
    let _ = app_stream.set_nodelay(true);
    let Some(original) = original_destination(&context, &app_stream, app) else {
        // Someone connected to 15001 directly, or the kernel entry was evicted: fail closed.
        counters.fail(Failure::NoOriginalDestination);
        return;
    };
    let source = Source {
        // The app's socket is on loopback (connect4 sent it to the listener there); the pod
        // is known to others by its own address.
        ip: context.address_towards(original.ip()).unwrap_or(app.ip()),
        workload: Some(&context.workload),
    };
    let route = context.registry.route(original, &source);
    if let Some(target) = HttpTarget::of(&route, original) {
        let app_stream = match http::sniff::decide(app_stream, target.protocol).await {
            Ok((stream, true)) => return http::serve_outbound(stream, app, target, context).await,
            Ok((stream, false)) => stream,
            Err(_) => return,
        };
        // An `auto` port whose client did not speak HTTP.
        return relay_to(app_stream, app, route, &context, Carries::Opaque).await;
    }
    relay_to(app_stream, app, route, &context, Carries::Bytes).await
}

/// The L4 path: one endpoint for the whole connection, bytes relayed both ways.
async fn relay_to(
    app_stream: TcpStream,
    app: SocketAddr,
    route: Route,
    context: &Arc<PodContext>,
    carries: Carries,
) {
    let counters = &context.counters.outbound;
    let (service, candidates) = match route {
        Route::Service {
            service, endpoints, ..
        } => (Some(service), endpoints),
        Route::Workload { target, .. } | Route::Passthrough(target) => {
            (None, Picked::fixed(vec![target]))
        }
        Route::Refused(reason) => {
            tracing::debug!(pod = %context.pod, ?reason, "outbound refused");
            counters.fail(reason);
            return;
        }
    };
    // One snapshot for the connection's settings: its service's limits, idle timeout, labels.
    let snapshot = context.registry.snapshot();
    let service = service
        .as_ref()
        .and_then(|key| snapshot.service(&key.namespace, &key.name));
    // A slot under the service's `maxConnections`, held until the relay ends; none left:
    // the app's connection is reset at once (fail fast, like Envoy's overflow).
    let _slot = match service.map(|s| context.shared.circuits.acquire(s, Limit::max_connections)) {
        Some(Err(_)) => {
            let _ = app_stream.set_zero_linger();
            counters.fail(Failure::CircuitOpen);
            return;
        }
        Some(Ok(slot)) => slot,
        None => None,
    };
    // `_load` (least_request) counts the connection as outstanding until the relay ends.
    let mut early = Early::from(&app_stream);
    let connected = connect_first(context, &candidates, app, carries, &mut early).await;
    let (upstream, endpoint, _load) = match connected {
        Ok(reached) => reached,
        Err(reason) => {
            // Bytes read ahead and then refused: reset the app's connection, as closing it
            // with those bytes still unread would have.
            if !early.already_read().is_empty() {
                let _ = app_stream.set_zero_linger();
            }
            counters.fail(reason);
            return;
        }
    };
    // Sent with the connection's opening, so not seen by the relay.
    let sent_ahead = early.already_read().len() as u64;
    if sent_ahead > 0 {
        counters.bytes_sent.inc_by(sent_ahead);
    }
    let telemetry = &context.shared.http.telemetry;
    let started = (std::time::Instant::now(), std::time::SystemTime::now());
    let security = Some(upstream.security());
    let labels = PeerLabels::new(&snapshot, context, service, Some(endpoint), security);
    let access_log = &snapshot.mesh_config().observability.access_log;
    let log_path = access_log.enabled.then(|| access_log.path.clone());
    let idle_timeout = idle::timeout_for(&snapshot, service);
    // Not held for the connection's life: a long-lived connection must not keep an old
    // config alive.
    drop(snapshot);
    telemetry.tcp_opened(&labels);
    // Watched beside the relay that owns it, and dropped with it (see `idle::idle_for`).
    let app_fd = app_stream.as_raw_fd();
    let relayed = relay_upstream(context, app_stream, upstream, counters);
    let (sent, received) = tokio::select! {
        (sent, received) = relayed => (sent + sent_ahead, received),
        _ = idle::idle_for(app_fd, idle_timeout) => {
            tracing::debug!(pod = %context.pod, %endpoint, ?idle_timeout, "closing an idle connection");
            (0, 0)
        }
    };
    telemetry.tcp_closed(&labels, sent, received);
    if let Some(path) = log_path {
        let record = ConnectionRecord {
            start_time: started.1,
            protocol: "tcp",
            duration_ms: started.0.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: sent,
            bytes_received: received,
            upstream_host: endpoint.to_string(),
            source_principal: labels.source_principal,
            destination_principal: labels.destination_principal,
            destination_service: labels.destination_service,
            connection_security_policy: labels.connection_security_policy,
        };
        telemetry.log_connection(&path, &record);
    }
}

/// Relays the app's connection over `upstream` until both directions end (or policy closes a
/// same-node one); the bytes sent and received.
async fn relay_upstream(
    context: &PodContext,
    app_stream: TcpStream,
    upstream: Upstream,
    counters: &DirectionCounters,
) -> (u64, u64) {
    match upstream {
        Upstream::Remote(stream) => {
            let describe = || handed(context, None, None);
            relay_or_hand_over(context, app_stream, stream, counters, None, describe).await
        }
        Upstream::Hbone(stream, _registration) => relay_tunnel(app_stream, stream, counters).await,
        Upstream::Local(delivered, peer, registration) => {
            let peer_counters = &peer.counters.inbound;
            peer_counters.connections.inc();
            let describe = || handed(context, Some(&peer), Some(&registration));
            let relayed = relay_or_hand_over(
                context,
                app_stream,
                delivered.stream,
                counters,
                Some(peer_counters),
                describe,
            );
            tokio::select! {
                moved = relayed => moved,
                // Closed by policy: the relay's counts are lost with it.
                _ = registration.closed() => (0, 0),
            }
        }
    }
}

/// An outbound relayed connection as a successor agent takes it over.
fn handed(
    context: &PodContext,
    peer: Option<&PodContext>,
    registration: Option<&Registration>,
) -> HandedConnection {
    HandedConnection {
        pod: context.pod.clone(),
        direction: Direction::Outbound,
        peer_pod: peer.map(|p| p.pod.clone()),
        tracked: registration.and_then(Registration::describe),
    }
}

/// From the eBPF map (connect4/6 capture), else from netfilter (iptables REDIRECT capture).
fn original_destination(
    context: &PodContext,
    stream: &TcpStream,
    app: SocketAddr,
) -> Option<SocketAddr> {
    if let Some(original) = context
        .maps
        .take_original_destination(context.netns.cookie(), app)
    {
        return Some(original);
    }
    let listener = stream.local_addr().ok()?;
    let original = SocketAddr::V4(crate::sys::sockopt::original_dst_v4(stream.as_fd()).ok()?);
    // Without NAT the "original" destination is the listener itself.
    (original != listener).then_some(original)
}
