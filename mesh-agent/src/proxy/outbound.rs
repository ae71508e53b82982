//! Outbound: the app dialled a captured destination and connect4/6 sent it to this pod's
//! listener on 127.0.0.1:15001. Find the original destination, route it, connect from inside
//! the pod, relay.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::inbound::{self, Delivered};
use super::{relay::relay, upstream, PodContext};
use crate::metrics::Failure;
use crate::registry::Route;

pub async fn serve(listener: TcpListener, context: Arc<PodContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, app)) => {
                tokio::spawn(handle(stream, app, context.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(pod = %context.pod, error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(app_stream: TcpStream, app: SocketAddr, context: Arc<PodContext>) {
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
    let Some(upstream) = connect_first(&context, &candidates, app.port()).await else {
        counters.fail(Failure::UpstreamConnect);
        return;
    };
    match upstream {
        Upstream::Remote(stream) => relay(app_stream, stream, counters, None).await,
        Upstream::Local(delivered, peer) => {
            let peer_counters = &peer.counters.inbound;
            peer_counters.connections.inc();
            relay(app_stream, delivered.stream, counters, Some(peer_counters)).await;
        }
    }
}

enum Upstream {
    /// Over the network, from inside the source pod.
    Remote(TcpStream),
    /// Straight into a pod this agent serves (same node): one proxy hop instead of two.
    Local(Delivered, Arc<PodContext>),
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
/// retry rather than a failed request.
async fn connect_first(
    context: &PodContext,
    candidates: &[SocketAddr],
    app_port: u16,
) -> Option<Upstream> {
    for target in candidates.iter().take(3) {
        let attempt = match context.local_pods.get(target.ip()) {
            Some(peer) => {
                // The destination app sees this pod's own address as the client.
                let client = context
                    .address_towards(target.ip())
                    .map(|ip| SocketAddr::new(ip, app_port))
                    .unwrap_or(*target);
                inbound::deliver(&peer, *target, client)
                    .await
                    .map(|d| Upstream::Local(d, peer))
            }
            None => upstream::connect(&context.netns, *target, context.connect_timeout)
                .await
                .map(Upstream::Remote),
        };
        match attempt {
            Ok(upstream) => return Some(upstream),
            Err(e) => {
                tracing::debug!(pod = %context.pod, %target, error = %e, "upstream connect failed")
            }
        }
    }
    None
}
