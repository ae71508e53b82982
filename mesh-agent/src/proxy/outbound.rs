//! Outbound: the app dialled a captured destination and connect4/6 sent it to this pod's
//! listener on 127.0.0.1:15001. Find the original destination, route it, connect from inside
//! the pod, relay.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::net::TcpStream;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use mesh_api::MtlsMode;
use mesh_identity::SpiffeId;

use super::hbone::HboneTarget;
use super::inbound::{self, Delivered};
use super::policy::{admit_counted, PeerInfo, Transport};
use super::relay::{relay, relay_stream};
use super::tracker::{NewConnection, Registration};
use super::{upstream, PodContext};
use crate::metrics::{Direction, Failure};
use crate::registry::Route;

pub async fn handle(app_stream: TcpStream, app: SocketAddr, context: Arc<PodContext>) {
    let counters = &context.counters.outbound;
    counters.connections.inc();
    let _ = app_stream.set_nodelay(true);
    let Some(original) = original_destination(&context, &app_stream, app) else {
        // Someone connected to 15001 directly, or the kernel entry was evicted: fail closed.
        counters.fail(Failure::NoOriginalDestination);
        return;
    };
    let candidates = match context.registry.route(original) {
        Route::Service { endpoints, .. } => endpoints,
        Route::Workload(target) | Route::Passthrough(target) => vec![target],
        Route::Refused(reason) => {
            tracing::debug!(pod = %context.pod, %original, ?reason, "outbound refused");
            counters.fail(reason);
            return;
        }
    };
    let Some(upstream) = connect_first(&context, &candidates, app).await else {
        return;
    };
    match upstream {
        Upstream::Remote(stream) => relay(app_stream, stream, counters, None).await,
        Upstream::Hbone(stream, _registration) => {
            relay_stream(app_stream, TokioIo::new(stream), counters).await
        }
        Upstream::Local(delivered, peer, registration) => {
            let peer_counters = &peer.counters.inbound;
            peer_counters.connections.inc();
            tokio::select! {
                _ = relay(app_stream, delivered.stream, counters, Some(peer_counters)) => {}
                _ = registration.closed() => {}
            }
        }
    }
}

enum Upstream {
    /// Plaintext over the network, from inside the source pod.
    Remote(TcpStream),
    /// An HBONE stream to another node; listed while open.
    Hbone(Upgraded, Registration),
    /// Straight into a pod this agent serves (same node): one proxy hop instead of two.
    /// Subject to the destination's policy like any inbound connection.
    Local(Delivered, Arc<PodContext>, Registration),
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

/// Tries the candidates in load-balancing order, at most three, so one dead endpoint costs a
/// retry rather than a failed request. A denial by the destination's policy is final.
async fn connect_first(
    context: &Arc<PodContext>,
    candidates: &[SocketAddr],
    app: SocketAddr,
) -> Option<Upstream> {
    let counters = &context.counters.outbound;
    let mut failure = Failure::UpstreamConnect;
    for target in candidates.iter().take(3) {
        let attempt = match context.local_pods.get(target.ip()) {
            Some(peer) => connect_local(context, peer, *target, app.port()).await,
            // Boxed: the HBONE handshake's state is large, and a task's future is as big as
            // its largest state; unboxed, every proxied connection (also same-node ones)
            // would carry it for its whole life.
            None => Box::pin(connect_remote(context, *target, app)).await,
        };
        match attempt {
            Ok(upstream) => return Some(upstream),
            Err(Failure::AuthzDenied) => {
                counters.fail(Failure::AuthzDenied);
                return None;
            }
            Err(reason) => failure = reason,
        }
    }
    counters.fail(failure);
    None
}

/// Same node: the destination's policy is checked here, with the source pod's identity
/// (this agent enrolled it, so it vouches for it).
async fn connect_local(
    context: &PodContext,
    peer: Arc<PodContext>,
    target: SocketAddr,
    app_port: u16,
) -> Result<Upstream, Failure> {
    // The destination app sees this pod's own address as the client.
    let client = context
        .address_towards(target.ip())
        .map(|ip| SocketAddr::new(ip, app_port))
        .unwrap_or(target);
    let source = PeerInfo {
        principal: Some(context.identity.to_string()),
        ip: client.ip(),
    };
    let snapshot = peer.registry.snapshot();
    let counters = &peer.counters.inbound;
    admit_counted(
        &snapshot,
        &peer.workload,
        &source,
        target.port(),
        Transport::Local,
        counters,
    )?;
    let delivered = inbound::deliver(&peer, target, client).await.map_err(|e| {
        tracing::debug!(pod = %context.pod, %target, error = %e, "same-node delivery failed");
        Failure::UpstreamConnect
    })?;
    let registration = inbound::track(&peer, Transport::Local, source, client, target);
    Ok(Upstream::Local(delivered, peer, registration))
}

/// Another node: HBONE to mesh workloads unless their PeerAuthentication is DISABLE or this
/// node has no identities (static config); plaintext otherwise.
async fn connect_remote(
    context: &PodContext,
    target: SocketAddr,
    app: SocketAddr,
) -> Result<Upstream, Failure> {
    let snapshot = context.registry.snapshot();
    let hbone_peer = snapshot
        .workload_by_ip(target.ip())
        .filter(|w| snapshot.mtls_mode_for(w, target.port()) != MtlsMode::Disable)
        .filter(|_| context.identities.has_signer());
    let Some(workload) = hbone_peer else {
        return upstream::connect(&context.netns, target, context.connect_timeout)
            .await
            .map(Upstream::Remote)
            .map_err(|e| {
                tracing::debug!(pod = %context.pod, %target, error = %e, "upstream connect failed");
                Failure::UpstreamConnect
            });
    };
    let identity = SpiffeId::parse(&snapshot.mesh_config().identity_of(workload))
        .map_err(|_| Failure::HboneHandshake)?;
    let credential = context
        .identities
        .credential_within(&context.identity, context.connect_timeout)
        .await
        .ok_or(Failure::NoCertificate)?;
    let source = context
        .address_towards(target.ip())
        .map(|ip| SocketAddr::new(ip, app.port()))
        .unwrap_or(app);
    let hbone_target = HboneTarget {
        address: target,
        node: &workload.spec.node,
        identity: identity.clone(),
    };
    let stream = context
        .shared
        .hbone
        .open(
            &context.identities,
            &context.netns,
            credential,
            hbone_target,
            source,
            context.connect_timeout,
        )
        .await
        .map_err(|e| {
            tracing::debug!(pod = %context.pod, %target, error = %e, "HBONE connect failed");
            e.failure()
        })?;
    let registration = context.shared.connections.register(
        NewConnection {
            pod: &context.pod,
            direction: Direction::Outbound,
            transport: Transport::Hbone,
            peer: PeerInfo {
                principal: Some(identity.to_string()),
                ip: target.ip(),
            },
            peer_address: target,
            destination: target,
        },
        None,
    );
    Ok(Upstream::Hbone(stream, registration))
}
