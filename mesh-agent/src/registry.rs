//! The agent's view of the mesh (services, workloads) and the per-connection routing decision.
//!
//! The snapshot is swapped atomically when config changes; connections in flight keep the
//! snapshot they started with.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_api::{ObjectKey, Protocol, Service, Snapshot, Subset, Workload};
use parking_lot::RwLock;

use crate::metrics::Failure;

/// Where a captured outbound connection goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A service VIP: try these endpoints in order (load-balancing order first). On HTTP
    /// ports the HTTP proxy routes each request itself and ignores `endpoints`.
    Service {
        service: ObjectKey,
        protocol: Protocol,
        endpoints: Vec<SocketAddr>,
    },
    /// A mesh workload addressed directly. `http_service`: the Service whose HTTP port
    /// targets this workload port, if one does (its protocol then applies).
    Workload {
        target: SocketAddr,
        http_service: Option<(ObjectKey, Protocol)>,
    },
    /// Captured but not part of the mesh: carried to the original destination unchanged.
    Passthrough(SocketAddr),
    /// Refused, with the reason counted.
    Refused(Failure),
}

pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    /// Health of workloads by `namespace/name` (true = healthy); absent = not checked yet,
    /// which counts as healthy.
    health: ArcSwap<HashMap<ObjectKey, bool>>,
    /// Where round robin continues, per service.
    cursors: RwLock<HashMap<ObjectKey, Arc<AtomicUsize>>>,
    /// Where the snapshot came from and its version, for status.
    source: RwLock<ConfigSource>,
    /// Ticks on every new snapshot, for whoever re-checks open connections against policy.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConfigSource {
    pub origin: String,
    pub version: u64,
}

impl Registry {
    pub fn new(snapshot: Snapshot, origin: String) -> Registry {
        Registry {
            snapshot: ArcSwap::from_pointee(snapshot),
            health: ArcSwap::from_pointee(HashMap::new()),
            cursors: RwLock::default(),
            source: RwLock::new(ConfigSource { origin, version: 1 }),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Sees every snapshot change (values are a change count).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn source(&self) -> ConfigSource {
        self.source.read().clone()
    }

    /// Installs a new config. `version`: the control plane's; `None` counts reloads.
    pub fn replace(&self, snapshot: Snapshot, origin: String, version: Option<u64>) {
        self.snapshot.store(Arc::new(snapshot));
        {
            let mut source = self.source.write();
            source.origin = origin;
            source.version = version.unwrap_or(source.version + 1);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_health(&self, health: HashMap<ObjectKey, bool>) {
        self.health.store(Arc::new(health));
    }

    /// `Some(true)` healthy, `Some(false)` unhealthy, `None` not checked.
    pub fn health_of(&self, workload: &ObjectKey) -> Option<bool> {
        self.health.load().get(workload).copied()
    }

    /// Decides where a connection to `original` goes.
    pub fn route(&self, original: SocketAddr) -> Route {
        if mesh_common::ports::is_proxy_port(original.port()) {
            return Route::Refused(Failure::ProxyPort);
        }
        let snapshot = self.snapshot.load();
        if let Some(service) = snapshot.service_by_vip(original.ip()) {
            return self.route_service(&snapshot, service, original);
        }
        if let Some(workload) = snapshot.workload_by_ip(original.ip()) {
            return Route::Workload {
                target: original,
                http_service: http_service_of(&snapshot, workload, original.port()),
            };
        }
        Route::Passthrough(original)
    }

    fn route_service(&self, snapshot: &Snapshot, service: &Service, original: SocketAddr) -> Route {
        let Some(port) = service.port(original.port()) else {
            return Route::Refused(Failure::UnknownServicePort);
        };
        // On TCP ports a Route's first rule without HTTP conditions picks the backend for
        // the whole connection; HTTP ports are routed per request by the HTTP proxy.
        let rule = (!port.protocol.may_be_http())
            .then(|| snapshot.route_for(service).and_then(|r| r.tcp_rule()))
            .flatten();
        let (backend, subset, target) = match rule.and_then(pick_backend) {
            Some(b) => {
                let Some(backend) = snapshot.service(&service.metadata.namespace, &b.service)
                else {
                    return Route::Refused(Failure::NoEndpoint);
                };
                let subset = b.subset.as_deref().and_then(|name| backend.subset(name));
                let port = b.port_for(original.port());
                let Some(target) = backend.port(port).map(|p| p.target()) else {
                    return Route::Refused(Failure::UnknownServicePort);
                };
                (backend, subset, target)
            }
            None => (service, None, port.target()),
        };
        let endpoints = self.endpoints(snapshot, backend, subset, target, original.ip());
        if endpoints.is_empty() && !port.protocol.may_be_http() {
            return Route::Refused(Failure::NoEndpoint);
        }
        Route::Service {
            service: service.metadata.key(),
            protocol: port.protocol,
            endpoints,
        }
    }

    /// The endpoints of `service` (of `subset`, if given) on `target_port`, in the order to
    /// try them: healthy ones only unless none is, rotated round robin. Addresses are in the
    /// family of `dialled` where a workload has one. This is where balancing policies plug in
    /// (issue 9): both the L4 path and the HTTP path ask here.
    pub fn endpoints(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        subset: Option<&Subset>,
        target_port: u16,
        dialled: IpAddr,
    ) -> Vec<SocketAddr> {
        let all: Vec<&Workload> = snapshot
            .endpoints(service)
            .into_iter()
            .filter(|w| subset.is_none_or(|s| s.selects(w)))
            .collect();
        let health = self.health.load();
        let healthy: Vec<&Workload> = all
            .iter()
            .copied()
            .filter(|w| health.get(&w.metadata.key()) != Some(&false))
            .collect();
        // When every endpoint fails its checks, the checks are more likely wrong than every
        // endpoint dead: use them all rather than refuse (Envoy's "panic" mode).
        let candidates = if healthy.is_empty() { all } else { healthy };
        let mut endpoints: Vec<SocketAddr> = candidates
            .into_iter()
            .filter_map(|w| endpoint_ip(w, dialled))
            .map(|ip| SocketAddr::new(ip, target_port))
            .collect();
        if endpoints.is_empty() {
            return endpoints;
        }
        let mut key = service.metadata.key();
        if let Some(subset) = subset {
            // Each subset keeps its own rotation.
            key.name = format!("{}/{}", key.name, subset.name);
        }
        let start = self.cursor(&key).fetch_add(1, Ordering::Relaxed) % endpoints.len();
        endpoints.rotate_left(start);
        endpoints
    }

    fn cursor(&self, key: &ObjectKey) -> Arc<AtomicUsize> {
        if let Some(c) = self.cursors.read().get(key) {
            return c.clone();
        }
        self.cursors.write().entry(key.clone()).or_default().clone()
    }
}

/// Only round robin is implemented so far; say so rather than silently balancing differently.
pub fn warn_unsupported_policies(snapshot: &Snapshot) {
    for service in snapshot.services() {
        let policy = service.spec.load_balancer.policy;
        if policy != mesh_api::LbPolicy::RoundRobin {
            tracing::warn!(
                service = %service.metadata.key(),
                ?policy,
                "load-balancing policy not implemented yet; using round_robin"
            );
        }
    }
}

/// A backend of `rule` chosen at random in proportion to the weights (None if all are 0,
/// which validation refuses).
pub fn pick_backend(rule: &mesh_api::RouteRule) -> Option<&mesh_api::Backend> {
    let total = rule.total_weight();
    if total == 0 {
        return None;
    }
    let mut roll = rand::random_range(0..total);
    rule.backends.iter().find(|b| {
        if roll < b.weight {
            return true;
        }
        roll -= b.weight;
        false
    })
}

/// The Service (and its protocol) whose HTTP port targets `port` on `workload`, if any.
fn http_service_of(
    snapshot: &Snapshot,
    workload: &Workload,
    port: u16,
) -> Option<(ObjectKey, Protocol)> {
    snapshot
        .services()
        .filter(|s| s.selects(workload))
        .find_map(|s| {
            s.spec
                .ports
                .iter()
                .find(|p| p.target() == port && p.protocol.may_be_http())
                .map(|p| (s.metadata.key(), p.protocol))
        })
}

/// The workload address to use: same family as the address the client dialled, when it has one.
fn endpoint_ip(workload: &Workload, dialled: IpAddr) -> Option<IpAddr> {
    let ips = &workload.spec.ips;
    ips.iter()
        .find(|ip| ip.is_ipv4() == dialled.is_ipv4())
        .or_else(|| ips.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let yaml = r#"
apiVersion: mesh/v1
kind: Service
metadata: {name: web}
spec:
  vips: ["10.96.0.10"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: web}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-1}
spec: {uid: w1, ips: ["10.0.0.1"], node: n1, labels: {app: web}}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-2}
spec: {uid: w2, ips: ["10.0.0.2"], node: n1, labels: {app: web}}
---
apiVersion: mesh/v1
kind: Service
metadata: {name: empty}
spec:
  vips: ["10.96.0.11"]
  ports: [{port: 80}]
  selector: {app: none}
"#;
        let snapshot =
            Snapshot::from_resources(mesh_api::load_str("t.yaml", yaml).unwrap()).unwrap();
        Registry::new(snapshot, "test".into())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_alternates_endpoints_on_the_target_port() {
        let r = registry();
        let first = |route| match route {
            Route::Service { endpoints, .. } => endpoints[0],
            other => panic!("{other:?}"),
        };
        let a = first(r.route(sa("10.96.0.10:80")));
        let b = first(r.route(sa("10.96.0.10:80")));
        let c = first(r.route(sa("10.96.0.10:80")));
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.port(), 8080);
    }

    #[test]
    fn unknown_port_empty_service_workload_and_passthrough() {
        let r = registry();
        assert_eq!(
            r.route(sa("10.96.0.10:81")),
            Route::Refused(Failure::UnknownServicePort)
        );
        assert_eq!(
            r.route(sa("10.96.0.11:80")),
            Route::Refused(Failure::NoEndpoint)
        );
        assert_eq!(
            r.route(sa("10.0.0.2:9000")),
            Route::Workload {
                target: sa("10.0.0.2:9000"),
                http_service: None
            }
        );
        assert_eq!(
            r.route(sa("10.9.9.9:443")),
            Route::Passthrough(sa("10.9.9.9:443"))
        );
        assert_eq!(
            r.route(sa("10.0.0.2:15001")),
            Route::Refused(Failure::ProxyPort)
        );
    }

    #[test]
    fn unhealthy_endpoints_are_avoided_unless_all_are() {
        let r = registry();
        let endpoints = |r: &Registry| match r.route(sa("10.96.0.10:80")) {
            Route::Service { mut endpoints, .. } => {
                endpoints.sort();
                endpoints
            }
            other => panic!("{other:?}"),
        };
        r.set_health([(ObjectKey::new("default", "web-1"), false)].into());
        assert_eq!(endpoints(&r), vec![sa("10.0.0.2:8080")]);
        let both = [
            (ObjectKey::new("default", "web-1"), false),
            (ObjectKey::new("default", "web-2"), false),
        ];
        r.set_health(both.into());
        assert_eq!(endpoints(&r).len(), 2);
    }
}
