//! Which rule of the host Service's Route a request matches, and where each try goes: a
//! backend by weight, then an endpoint of that backend (and subset) from the balancer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::request::Parts;
use mesh_api::{Backend, CompiledRoute, ObjectKey, RequestAttributes, Route, RouteRule};
use mesh_api::{Retries, Service, Snapshot};
use parking_lot::Mutex;

use super::errors::ProxyError;
use super::Downstream;
use crate::balance::outlier::OutlierReporter;
use crate::balance::{InFlight, Picked};
use crate::registry::{pick_backend, Source};

/// Routes with their regexes compiled, for the snapshot in force. Rebuilt lazily, one route
/// at a time, when the snapshot changes. (A `Weak` identifies the snapshot: it keeps the
/// allocation, so a new snapshot can never be mistaken for the old one at the same address.)
#[derive(Default)]
pub struct RouteCache {
    compiled: Mutex<Compiled>,
}

/// The snapshot the routes were compiled for, and the routes by key.
type Compiled = (Weak<Snapshot>, HashMap<ObjectKey, Arc<CompiledRoute>>);

impl RouteCache {
    fn get(&self, snapshot: &Arc<Snapshot>, route: &Route) -> Arc<CompiledRoute> {
        let mut cache = self.compiled.lock();
        if !Weak::ptr_eq(&cache.0, &Arc::downgrade(snapshot)) {
            *cache = (Arc::downgrade(snapshot), HashMap::new());
        }
        cache
            .1
            .entry(route.metadata.key())
            .or_insert_with(|| Arc::new(CompiledRoute::new(route)))
            .clone()
    }
}

/// Requests per Route rule on this node, for status: by (route, rule index); `None` counts
/// the requests no rule matched. Indexes refer to the route as it is now; an edited route's
/// counts carry over by position.
#[derive(Default)]
pub struct RuleCounters {
    counts: Mutex<HashMap<(ObjectKey, Option<usize>), u64>>,
}

impl RuleCounters {
    pub fn count(&self, route: &Route, rule: Option<usize>) {
        *self
            .counts
            .lock()
            .entry((route.metadata.key(), rule))
            .or_default() += 1;
    }

    pub fn get(&self, route: &ObjectKey, rule: Option<usize>) -> u64 {
        self.counts
            .lock()
            .get(&(route.clone(), rule))
            .copied()
            .unwrap_or(0)
    }
}

/// The request as the matcher sees it.
pub struct Attributes<'a>(pub &'a Parts);

impl RequestAttributes for Attributes<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }

    fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.0.headers.get(lowercase_name)?.to_str().ok()
    }
}

/// What applies to one request: the host service, the matched rule (if any) and the
/// settings it resolves to.
pub struct Plan<'s> {
    pub host: &'s Service,
    pub route: Option<&'s Route>,
    pub rule: Option<&'s RouteRule>,
    /// Index of `rule` in the route's rules.
    pub rule_index: Option<usize>,
    pub timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub retries: Option<&'s Retries>,
    /// MeshConfig's default when no route sets retries.
    pub default_attempts: u32,
}

impl<'s> Plan<'s> {
    pub fn new(
        snapshot: &'s Arc<Snapshot>,
        cache: &RouteCache,
        host: &'s Service,
        parts: &Parts,
    ) -> Plan<'s> {
        let route = snapshot.route_for(host);
        let rule_index =
            route.and_then(|route| cache.get(snapshot, route).http_rule(&Attributes(parts)));
        let rule = route
            .zip(rule_index)
            .and_then(|(route, i)| route.spec.rules.get(i));
        let mesh = snapshot.mesh_config();
        let timeout_ms = rule
            .and_then(|r| r.timeout_ms)
            .or(route.and_then(|r| r.spec.timeout_ms))
            .or(mesh.request_timeout_ms);
        let retries = rule
            .and_then(|r| r.retries.as_ref())
            .or(route.and_then(|r| r.spec.retries.as_ref()));
        Plan {
            host,
            route,
            rule,
            rule_index,
            timeout: timeout_ms.map(Duration::from_millis),
            per_try_timeout: retries
                .and_then(|r| r.per_try_timeout_ms)
                .map(Duration::from_millis),
            retries,
            default_attempts: mesh.default_retry_attempts,
        }
    }

    /// Retries after the first try.
    pub fn attempts(&self) -> u32 {
        self.retries.map_or(self.default_attempts, |r| r.attempts)
    }

    pub fn rule_name(&self) -> Option<&'s str> {
        self.rule.and_then(|r| r.name.as_deref())
    }
}

/// Where one try goes.
pub struct Destination<'s> {
    pub service: &'s Service,
    pub endpoint: SocketAddr,
    /// Under `least_request`: the request counts as outstanding on `endpoint` while this is
    /// held; report how the try went on it.
    pub load: Option<InFlight>,
    /// With `outlierDetection`: where to report how the try went.
    pub outliers: Option<OutlierReporter>,
    /// The pick `endpoint` came from: a connect retry takes the next endpoint in its order,
    /// as the L4 path does, rather than a new pick (which would move a round-robin cursor
    /// and try a dead endpoint again for every other request).
    pub picked: Option<Arc<Picked>>,
}

impl<'s> Destination<'s> {
    /// The next endpoint of the same pick not in `tried`, for a try whose connection could
    /// not be made.
    pub fn next_of_pick(&self, tried: &[SocketAddr]) -> Option<Destination<'s>> {
        let picked = self.picked.as_ref()?;
        let endpoint = picked.order.iter().find(|e| !tried.contains(e)).copied()?;
        Some(Destination {
            service: self.service,
            endpoint,
            load: picked.start(endpoint),
            outliers: self.outliers.clone(),
            picked: Some(picked.clone()),
        })
    }
}

/// Picks the backend (by weight) and an endpoint not tried yet (`tried`), for a request with
/// `headers` (hashed by a `ring_hash`/`maglev` service's `hashOn`) on `conn`.
pub fn choose<'s>(
    snapshot: &'s Snapshot,
    plan: &Plan<'s>,
    conn: &Downstream,
    headers: &http::HeaderMap,
    tried: &[SocketAddr],
) -> Result<Destination<'s>, ProxyError> {
    let dialled = conn.target.dialled;
    let (service, subset, port) = match plan.rule.and_then(pick_backend) {
        Some(backend) => resolve(snapshot, plan.host, backend, dialled.port())?,
        None => (plan.host, None, dialled.port()),
    };
    let target = service
        .port(port)
        .map(|p| p.target())
        .ok_or(ProxyError::NoRoute)?;
    let context = &conn.context;
    let source = Source {
        ip: context
            .address_towards(dialled.ip())
            .unwrap_or(conn.app.ip()),
        workload: Some(&context.workload),
    };
    let client = source.client(snapshot, service, Some(headers));
    let picked =
        context
            .registry
            .endpoints(snapshot, service, subset, target, dialled.ip(), &client);
    let endpoint = picked
        .order
        .iter()
        .find(|e| !tried.contains(e))
        .or(picked.order.first())
        .copied()
        .ok_or(ProxyError::NoHealthyEndpoint)?;
    Ok(Destination {
        service,
        endpoint,
        load: picked.start(endpoint),
        outliers: picked.outliers().cloned(),
        picked: Some(Arc::new(picked)),
    })
}

fn resolve<'s>(
    snapshot: &'s Snapshot,
    host: &Service,
    backend: &Backend,
    dialled_port: u16,
) -> Result<(&'s Service, Option<&'s mesh_api::Subset>, u16), ProxyError> {
    let service = snapshot
        .service(&host.metadata.namespace, &backend.service)
        .ok_or(ProxyError::NoRoute)?;
    let subset = match backend.subset.as_deref() {
        // Validation keeps subsets a route names in place; a missing one has no endpoints.
        Some(name) => Some(service.subset(name).ok_or(ProxyError::NoHealthyEndpoint)?),
        None => None,
    };
    Ok((service, subset, backend.port_for(dialled_port)))
}
