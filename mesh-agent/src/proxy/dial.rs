//! Opening the connection a pod's outbound traffic rides on, to one endpoint: delivered
//! straight into the destination pod when this agent serves it (same node), an HBONE stream
//! when the endpoint is a mesh workload on another node, plaintext otherwise. The L4 relay
//! carries bytes over it; the HTTP proxy runs an HTTP client connection over it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_api::MtlsMode;
use mesh_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::circuit::Limit;
use super::early::Early;
use super::hbone::{HboneStream, HboneTarget};
use super::inbound::{self, Delivered};
use super::policy::{admit_counted, Carries, PeerInfo, Transport};
use super::request_security;
use super::tracker::{NewConnection, Registration};
use super::{upstream, PodContext};
use crate::balance::{InFlight, Outcome, Picked};
use crate::metrics::{Direction, Failure};

pub enum Upstream {
    /// Plaintext over the network, from inside the source pod.
    Remote(TcpStream),
    /// An HBONE stream to another node; listed while open. The early bytes it was opened
    /// with are on their way already.
    Hbone(HboneStream, Registration),
    /// Straight into a pod this agent serves (same node): one proxy hop instead of two.
    /// Subject to the destination's policy like any inbound connection.
    Local(Delivered, Arc<PodContext>, Registration),
}

impl Upstream {
    /// Whether the bytes travel with mutual TLS between two mesh identities (HBONE), or
    /// never leave this node's pods (same-node delivery, which the agent vouches for).
    pub fn security(&self) -> Security {
        match self {
            Upstream::Remote(_) => Security::None,
            Upstream::Hbone(..) => Security::MutualTls,
            Upstream::Local(..) => Security::Local,
        }
    }

    /// The connection as one byte stream, and what must live as long as it: the tracker's
    /// registration (closed when policy no longer allows the connection) and, for same-node
    /// delivery, the destination pod.
    pub fn into_io(self) -> (UpstreamIo, Option<Registration>, Option<Arc<PodContext>>) {
        match self {
            Upstream::Remote(stream) => (UpstreamIo::Tcp(stream), None, None),
            Upstream::Hbone(stream, registration) => {
                (UpstreamIo::Hbone(stream), Some(registration), None)
            }
            Upstream::Local(delivered, peer, registration) => {
                peer.counters.inbound.connections.inc();
                (
                    UpstreamIo::Tcp(delivered.stream),
                    Some(registration),
                    Some(peer),
                )
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    None,
    MutualTls,
    Local,
}

/// An upstream byte stream, whichever way it was opened.
pub enum UpstreamIo {
    Tcp(TcpStream),
    Hbone(HboneStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Hbone(s) => s.is_write_vectored(),
        }
    }
}

/// Tries the candidates in load-balancing order, at most three, so one dead endpoint costs a
/// retry rather than a failed request. A denial by the destination's policy is final.
/// Failures are returned, not counted: the caller knows whether the client sees them.
/// Under `least_request` each try is reported to the balancer (its connect latency, or a
/// failure), and the handle returned with the connection counts it as outstanding while held.
/// With `outlierDetection`, each try's outcome counts towards ejecting its endpoint.
/// Whatever was read of the app's bytes ahead (`early`) reaches the endpoint that answers.
pub async fn connect_first(
    context: &Arc<PodContext>,
    candidates: &Picked,
    app: SocketAddr,
    carries: Carries,
    early: &mut Early<'_>,
) -> Result<(Upstream, SocketAddr, Option<InFlight>), Failure> {
    let mut failure = Failure::UpstreamConnect;
    for target in candidates.order.iter().take(3) {
        let load = candidates.start(*target);
        let timeout = candidates
            .connect_timeout
            .unwrap_or(context.connect_timeout);
        let result = connect(context, *target, app, carries, timeout, early).await;
        if let Some(load) = &load {
            match &result {
                Ok(_) => load.succeeded(),
                Err(_) => load.failed(),
            }
        }
        match result {
            Ok(upstream) => {
                candidates.report(*target, Outcome::Success);
                return Ok((upstream, *target, load));
            }
            // The destination's policy said no: nothing wrong with the endpoint.
            Err(Failure::AuthzDenied) => return Err(Failure::AuthzDenied),
            Err(reason) => {
                if let Some(service) = candidates.report(*target, Outcome::Failure) {
                    let circuits = &context.shared.circuits;
                    circuits.opened(service, Limit::outlier_ejection);
                }
                failure = reason;
            }
        }
    }
    Err(failure)
}

/// Opens a connection to one endpoint for the app at `app`, within `timeout` (the
/// service's `connectionPool.connectTimeoutMs`, else the agent's). `carries` says whether
/// the caller parses HTTP on it (then same-node delivery leaves request-level policy to it).
/// An HBONE stream takes the app's first bytes along (`early`); the other paths write what
/// was read of them first.
pub async fn connect(
    context: &Arc<PodContext>,
    target: SocketAddr,
    app: SocketAddr,
    carries: Carries,
    timeout: Duration,
    early: &mut Early<'_>,
) -> Result<Upstream, Failure> {
    match context.local_pods.get(target.ip()) {
        Some(peer) => connect_local(context, peer, target, app.port(), carries, early).await,
        // Boxed: the HBONE handshake's state is large, and a task's future is as big as
        // its largest state; unboxed, every proxied connection (also same-node ones)
        // would carry it for its whole life.
        None => {
            Box::pin(connect_remote(
                context, target, app, carries, timeout, early,
            ))
            .await
        }
    }
}

/// Same node: the destination's policy is checked here, with the source pod's identity
/// (this agent enrolled it, so it vouches for it). For HTTP, per request as well
/// (`request_security::judge`, called by the HTTP proxy before each request goes out).
async fn connect_local(
    context: &PodContext,
    peer: Arc<PodContext>,
    target: SocketAddr,
    app_port: u16,
    carries: Carries,
    early: &Early<'_>,
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
    // Bytes the source's proxy took for TCP (a `tcp` Service port onto a pod port another
    // Service serves as HTTP) cannot be judged per request: refused rather than delivered
    // unjudged. (From another node the destination serves such a stream as HTTP.)
    if carries == Carries::Bytes
        && request_security::judged_per_request(&snapshot, &peer.workload, target.port())
    {
        tracing::debug!(pod = %context.pod, %target, "TCP to a port whose requests are judged one by one refused");
        counters.fail(Failure::AuthzDenied);
        return Err(Failure::AuthzDenied);
    }
    admit_counted(
        &snapshot,
        &peer.workload,
        &source,
        target.port(),
        Transport::Local,
        carries,
        counters,
    )?;
    let mut delivered = inbound::deliver(&peer, target, client).await.map_err(|e| {
        tracing::debug!(pod = %context.pod, %target, error = %e, "same-node delivery failed");
        Failure::UpstreamConnect
    })?;
    early.write_to(&mut delivered.stream).await.map_err(|e| {
        tracing::debug!(pod = %context.pod, %target, error = %e, "same-node delivery failed");
        Failure::UpstreamConnect
    })?;
    let registration = inbound::track(&peer, Transport::Local, source, client, target, carries);
    Ok(Upstream::Local(delivered, peer, registration))
}

/// Another node: HBONE to mesh workloads unless their PeerAuthentication is DISABLE or this
/// node has no identities (static config); plaintext otherwise.
async fn connect_remote(
    context: &PodContext,
    target: SocketAddr,
    app: SocketAddr,
    carries: Carries,
    timeout: Duration,
    early: &mut Early<'_>,
) -> Result<Upstream, Failure> {
    let snapshot = context.registry.snapshot();
    let hbone_peer = snapshot
        .workload_by_ip(target.ip())
        .filter(|w| snapshot.mtls_mode_for(w, target.port()) != MtlsMode::Disable)
        .filter(|_| context.identities.has_signer());
    let Some(workload) = hbone_peer else {
        let connected = async {
            let mut stream = upstream::connect(&context.netns, target, timeout).await?;
            early.write_to(&mut stream).await?;
            Ok::<_, std::io::Error>(Upstream::Remote(stream))
        };
        return connected.await.map_err(|e| {
            tracing::debug!(pod = %context.pod, %target, error = %e, "upstream connect failed");
            Failure::UpstreamConnect
        });
    };
    let identity = SpiffeId::parse(&snapshot.mesh_config().identity_of(workload))
        .map_err(|_| Failure::HboneHandshake)?;
    let credential = context
        .identities
        .credential_within(&context.identity, timeout)
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
            early.take_ahead(),
            timeout,
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
            carries,
        },
        None,
    );
    Ok(Upstream::Hbone(stream, registration))
}
