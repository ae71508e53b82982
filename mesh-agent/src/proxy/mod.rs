//! The userspace proxy: one set of listeners per enrolled pod, all served by the agent's one
//! tokio runtime.
//!
//! - `outbound`: connections the app made, captured by connect4/6; routed by the registry.
//! - `dial`: opening the connection to one endpoint (same node, HBONE, or plaintext).
//! - `http`: HTTP ports: each request routed on its own (Routes, retries, telemetry).
//! - `inbound`: connections to the pod, steered by sk_lookup; delivered to the app.
//! - `upstream`: opening sockets from inside the pod's network namespace.
//! - `hbone`: mutual-TLS HTTP/2 CONNECT tunnels between nodes, both sides.
//! - `policy`: the inbound decision (PeerAuthentication, AuthorizationPolicy).
//! - `request_security`: the same per HTTP request where policy needs the request, and JWTs.
//! - `tracker`: open connections, re-checked when policy changes.
//! - `circuit`: circuit breakers per service (`connectionPool`).
//! - `idle`: closing relayed TCP connections idle for the service's idle timeout.
//! - `relay`: moving bytes both ways and counting them.
//! - `telemetry`: Istio's metrics for connections and requests, and the access log.

mod circuit;
mod counted_io;
mod dial;
mod early;
mod hbone;
pub mod http;
pub(crate) mod idle;
pub(crate) mod inbound;
mod outbound;
pub(crate) mod policy;
mod pump;
pub(crate) mod relay;
pub mod request_security;
mod telemetry;
pub(crate) mod tracker;
mod upstream;

pub use tracker::{enforce_on_changes, ConnectionStatus, ConnectionTable};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use mesh_api::ObjectKey;
use mesh_identity::SpiffeId;

use crate::datapath::Maps;
use crate::handover::ListenerRole;
use crate::identity::Identities;
use crate::metrics::PodCounters;
use crate::registry::Registry;
use crate::sys::netns::NetnsSockets;

/// Everything a pod's connection handlers need.
pub struct PodContext {
    /// `namespace/name`, for logs.
    pub pod: String,
    pub netns: NetnsSockets,
    pub maps: Arc<Maps>,
    pub registry: Arc<Registry>,
    pub counters: PodCounters,
    pub connect_timeout: Duration,
    /// The pod's own addresses (what a peer on this node sees it as).
    pub ips: Vec<IpAddr>,
    /// Every pod this agent serves, by address: same-node traffic is delivered straight into
    /// the destination pod instead of looping through its inbound listener.
    pub local_pods: Arc<LocalPods>,
    /// The declared workload this pod is, for its inbound policy.
    pub workload: ObjectKey,
    /// The pod's SPIFFE ID (from its namespace and service account).
    pub identity: SpiffeId,
    pub identities: Arc<Identities>,
    pub shared: Arc<Shared>,
    /// This pod's upstream HTTP connections, reused across its requests.
    pub http_pool: Arc<http::Pool>,
    /// What this pod's request-level policy needs, for the current config.
    pub security: request_security::SecurityCache,
}

/// Proxy state shared by every pod of the node.
pub struct Shared {
    pub connections: Arc<ConnectionTable>,
    pub hbone: hbone::Pool,
    pub hbone_handshakes: hbone::HandshakeLimit,
    pub http: http::NodeHttp,
    pub circuits: circuit::Breakers,
    /// Connections being served, and the signal that tells them to finish (upgrade, SIGTERM).
    pub drain: crate::handover::Drain,
    /// Relayed connections paused for a successor agent, on their way to it.
    pub handoff: crate::handover::Handoff,
    /// Whether the accept loops accept: a successor agent waits (the old one still accepts
    /// on the same listeners) until it has config and certificates.
    pub accepting: tokio::sync::watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Shared {
        let shared = Shared {
            connections: Default::default(),
            hbone: Default::default(),
            hbone_handshakes: Default::default(),
            http: Default::default(),
            circuits: Default::default(),
            drain: Default::default(),
            handoff: Default::default(),
            accepting: tokio::sync::watch::channel(true).0,
        };
        shared.http.telemetry.register(
            "mesh_circuit_breaker_opens",
            "Circuit breaker overflows (connectionPool limits) and outlier ejections, per service",
            shared.circuits.opens.clone(),
        );
        shared
    }
}

impl PodContext {
    /// This pod's address in the family of `peer`, as the peer should see it.
    pub fn address_towards(&self, peer: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == peer.is_ipv4())
    }
}

/// Pods served by this agent, by IP.
#[derive(Default)]
pub struct LocalPods {
    by_ip: parking_lot::RwLock<HashMap<IpAddr, Arc<PodContext>>>,
}

impl LocalPods {
    pub fn insert(&self, context: &Arc<PodContext>) {
        let mut by_ip = self.by_ip.write();
        for ip in &context.ips {
            by_ip.insert(*ip, context.clone());
        }
    }

    /// Lists `ip` for `context`'s pod unless another pod has it. True if it is the pod's now.
    pub fn claim(&self, ip: IpAddr, context: &Arc<PodContext>) -> bool {
        let mut by_ip = self.by_ip.write();
        let holder = by_ip.entry(ip).or_insert_with(|| context.clone());
        Arc::ptr_eq(holder, context)
    }

    /// Unlists `ip` if it is `context`'s pod's.
    pub fn release(&self, ip: IpAddr, context: &Arc<PodContext>) {
        let mut by_ip = self.by_ip.write();
        if by_ip
            .get(&ip)
            .is_some_and(|holder| Arc::ptr_eq(holder, context))
        {
            by_ip.remove(&ip);
        }
    }

    pub fn get(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        self.by_ip.read().get(&ip).cloned()
    }
}

/// The pod's listeners, already bound inside its network namespace.
#[derive(Default)]
pub struct PodListeners {
    pub outbound: Vec<TcpListener>,
    pub inbound: Vec<TcpListener>,
    pub hbone: Vec<TcpListener>,
}

impl PodListeners {
    /// (role, address) of every listener.
    pub fn addresses(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        let role = |role, ls: &Vec<TcpListener>| {
            ls.iter()
                .filter_map(|l| l.local_addr().ok())
                .map(move |a| (role, a))
                .collect::<Vec<_>>()
        };
        let mut all = role("outbound", &self.outbound);
        all.extend(role("inbound", &self.inbound));
        all.extend(role("hbone", &self.hbone));
        all
    }

    /// A second descriptor of each listener, with its role (what a handover sends).
    pub fn duplicates(&self) -> std::io::Result<Vec<(ListenerRole, std::os::fd::OwnedFd)>> {
        use std::os::fd::AsFd;
        let groups = [
            (ListenerRole::Outbound, &self.outbound),
            (ListenerRole::Inbound, &self.inbound),
            (ListenerRole::Hbone, &self.hbone),
        ];
        let mut fds = Vec::new();
        for (role, group) in groups {
            for listener in group {
                fds.push((role, listener.as_fd().try_clone_to_owned()?));
            }
        }
        Ok(fds)
    }
}

/// Starts serving a pod's listeners; the returned tasks stop when aborted (unenroll).
pub fn serve(context: Arc<PodContext>, listeners: PodListeners) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for listener in listeners.outbound {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            context.clone(),
            "outbound",
            outbound::handle,
        )));
    }
    for listener in listeners.inbound {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            context.clone(),
            "inbound",
            inbound::handle,
        )));
    }
    for listener in listeners.hbone {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            context.clone(),
            "hbone",
            hbone::serve_connection,
        )));
    }
    tasks
}

/// Accepts forever, one task per connection.
async fn accept_loop<Handle, Handled>(
    listener: TcpListener,
    context: Arc<PodContext>,
    role: &'static str,
    handle: Handle,
) where
    Handle: Fn(TcpStream, SocketAddr, Arc<PodContext>) -> Handled,
    Handled: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = context.shared.accepting.subscribe().wait_for(|a| *a).await;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let served = context.shared.drain.serve();
                let handled = handle(stream, peer, context.clone());
                tokio::spawn(async move {
                    handled.await;
                    drop(served);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(pod = %context.pod, role, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub use upstream::{bind_listener, connect as upstream_connect};
