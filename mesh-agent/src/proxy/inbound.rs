//! Inbound: sk_lookup handed a connection for this pod to its inbound listener, so the
//! accepted socket's local address is where the client was going. Deliver it to the app from
//! inside the pod, through the loopback device, and make the app see the real client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::{relay::relay, upstream, PodContext};
use crate::metrics::Failure;

pub async fn serve(listener: TcpListener, context: Arc<PodContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                tokio::spawn(handle(stream, client, context.clone()));
            }
            Err(e) => {
                tracing::warn!(pod = %context.pod, error = %e, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client_stream: TcpStream, client: SocketAddr, context: Arc<PodContext>) {
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
    // Connecting to the pod's own address from inside the pod goes over the loopback device,
    // which sk_lookup leaves alone, and reaches apps bound to the pod IP or the wildcard.
    let cookie = context.netns.cookie();
    let maps = context.maps.clone();
    let mut proxy_local = None;
    let local = SocketAddr::new(destination.ip(), 0);
    let app = upstream::connect_from(
        &context.netns,
        local,
        destination,
        context.connect_timeout,
        |bound| {
            proxy_local = Some(bound);
            // Registered before connecting, so it is there when the app accepts.
            maps.set_peer_rewrite(cookie, bound, client)
                .map_err(std::io::Error::other)
        },
    )
    .await;
    match app {
        Ok(app_stream) => relay(app_stream, client_stream, counters).await,
        Err(e) => {
            tracing::debug!(pod = %context.pod, %destination, error = %e, "delivering to the app failed");
            counters.fail(Failure::UpstreamConnect);
        }
    }
    if let Some(bound) = proxy_local {
        context.maps.clear_peer_rewrite(cookie, bound);
    }
}
