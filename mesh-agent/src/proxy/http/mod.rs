//! HTTP in the node proxy: the outbound side terminates the app's HTTP/1.1 or HTTP/2
//! connection and routes every request on its own (rule, backend, endpoint), over pooled
//! upstream connections. See docs/ARCHITECTURE.md, "Life of an HTTP request".
//!
//! - `sniff`: which connections are HTTP (`auto` ports look at the first bytes).
//! - `forward`: one request: rule, faults, header rules, tries, timeouts, retries.
//! - `routing`: the Route rule a request matches; backend and endpoint per try.
//! - `pool`: upstream connections per (pod, endpoint), reused; `keep_reading`: an early
//!   answer from a server that stopped reading the request body still arrives.
//! - `body`: request bodies kept for retries; response bodies that report their end.
//! - `retry`, `budget`: when to try again, and how much retrying a service can take.
//! - `upgrade`: WebSocket and other protocol switches.
//! - `errors`: the proxy's own answers (HTTP status or gRPC status, response flags).
//! - `headers`: hop-by-hop headers, request targets, header rules, request and trace ids.
//! - `record`: a request's Istio metrics and access log line (`proxy::telemetry`).

pub(crate) mod body;
mod budget;
pub(crate) mod errors;
mod forward;
pub mod headers;
mod keep_reading;
mod pool;
mod record;
mod retry;
mod routing;
pub mod sniff;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_api::{ObjectKey, Protocol, Service, Snapshot};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use super::counted_io::CountedIo;
use super::dial::Security;
use super::telemetry::{PeerLabels, SharedPeerLabels};
use super::PodContext;
use crate::handover::serve_draining;
use crate::registry::Route;

pub(crate) use forward::{is_grpc, upstream_version};
pub use pool::Pool;
pub(crate) use routing::Attributes;

/// Node-wide HTTP state.
#[derive(Default)]
pub struct NodeHttp {
    pub routes: routing::RouteCache,
    pub rule_requests: routing::RuleCounters,
    pub budgets: budget::RetryBudgets,
    pub telemetry: Arc<crate::proxy::telemetry::Telemetry>,
    /// Retries the budget refused.
    pub retries_over_budget: Counter,
}

/// An outbound connection the HTTP proxy serves.
pub struct HttpTarget {
    /// The Service whose port the client reached (its Route applies).
    pub service: ObjectKey,
    pub protocol: Protocol,
    /// Where the client connected to.
    pub dialled: SocketAddr,
    /// Set when the client dialled a workload directly: every request goes there.
    pub fixed: Option<SocketAddr>,
}

impl HttpTarget {
    /// The HTTP target of a routed connection, if its port may be HTTP.
    pub fn of(route: &Route, dialled: SocketAddr) -> Option<HttpTarget> {
        match route {
            Route::Service {
                service, protocol, ..
            } if protocol.may_be_http() => Some(HttpTarget {
                service: service.clone(),
                protocol: *protocol,
                dialled,
                fixed: None,
            }),
            Route::Workload {
                target,
                http_service: Some((service, protocol)),
            } => Some(HttpTarget {
                service: service.clone(),
                protocol: *protocol,
                dialled,
                fixed: Some(*target),
            }),
            _ => None,
        }
    }
}

/// One app connection being served.
pub struct Downstream {
    pub context: Arc<PodContext>,
    pub app: SocketAddr,
    pub target: HttpTarget,
    /// The metric labels of the last destination this connection's requests reached.
    labels: parking_lot::Mutex<Option<CachedLabels>>,
}

struct CachedLabels {
    snapshot: Weak<Snapshot>,
    service: Option<ObjectKey>,
    endpoint: Option<SocketAddr>,
    security: Option<Security>,
    labels: SharedPeerLabels,
}

impl Downstream {
    /// The metric labels for a request of this connection that reached `endpoint` of
    /// `service`: built when the destination (or the config) changes, else reused.
    pub fn peer_labels(
        &self,
        snapshot: &Arc<Snapshot>,
        service: Option<&Service>,
        endpoint: Option<SocketAddr>,
        security: Option<Security>,
    ) -> SharedPeerLabels {
        let service_key = service.map(|s| s.metadata.key());
        let mut cached = self.labels.lock();
        if let Some(c) = cached.as_ref() {
            if Weak::ptr_eq(&c.snapshot, &Arc::downgrade(snapshot))
                && c.service == service_key
                && c.endpoint == endpoint
                && c.security == security
            {
                return c.labels.clone();
            }
        }
        let labels = SharedPeerLabels(Arc::new(PeerLabels::new(
            snapshot,
            &self.context,
            service,
            endpoint,
            security,
        )));
        *cached = Some(CachedLabels {
            snapshot: Arc::downgrade(snapshot),
            service: service_key,
            endpoint,
            security,
            labels: labels.clone(),
        });
        labels
    }
}

/// How the proxy serves an HTTP connection, HTTP/1.1 or HTTP/2 (whichever the client
/// speaks): the app's outbound ones and the inbound ones judged per request alike.
pub fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        // The same bound as HTTP/1 heads (forward.rs MAX_REQUEST_HEAD), not hyper's 16 KiB.
        .max_header_list_size(64 * 1024);
    builder
}

/// Serves the app's connection as HTTP/1.1 or HTTP/2 (whichever it speaks) until it closes.
/// Malformed requests get 400 (431 for oversized headers) from hyper and end only this
/// connection.
pub async fn serve_outbound(
    stream: TcpStream,
    app: SocketAddr,
    target: HttpTarget,
    context: Arc<PodContext>,
) {
    let counters = context.counters.outbound.clone();
    counters.active.inc();
    // Istio counts the app's connection itself as a TCP connection too; its bytes are those
    // of the HTTP messages both ways.
    let labels = {
        let snapshot = context.registry.snapshot();
        let key = &target.service;
        let service = snapshot.service(&key.namespace, &key.name);
        PeerLabels::new(&snapshot, &context, service, None, None)
    };
    let telemetry = context.shared.http.telemetry.clone();
    telemetry.tcp_opened(&labels);
    let shared = context.shared.clone();
    let downstream = Arc::new(Downstream {
        context,
        app,
        target,
        labels: Default::default(),
    });
    let service = hyper::service::service_fn(move |request| {
        let downstream = downstream.clone();
        async move { Ok::<_, Infallible>(forward::handle(downstream, request).await) }
    });
    let (io, counts) = CountedIo::new(stream);
    let builder = server_builder();
    // Draining (upgrade, SIGTERM): finish the requests under way, then close.
    let served = serve_draining!(
        shared.drain,
        builder.serve_connection_with_upgrades(TokioIo::new(io), service)
    )
    .await;
    if let Err(e) = served {
        tracing::debug!(%app, error = %e, "HTTP connection from the app ended");
    }
    // After an upgrade the relay goes on in its own task; its bytes so far are counted.
    let (read, written) = counts.get();
    telemetry.tcp_closed(&labels, read, written);
    counters.bytes_sent.inc_by(read);
    counters.bytes_received.inc_by(written);
    counters.active.dec();
}
