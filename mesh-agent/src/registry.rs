//! The agent's view of the mesh (services, workloads) and the per-connection routing decision.
//!
//! The snapshot is swapped atomically when config changes; connections in flight keep the
//! snapshot they started with.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_api::{ObjectKey, Service, Snapshot, Workload};
use parking_lot::RwLock;

use crate::metrics::Failure;

/// Where a captured outbound connection goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A service VIP: try these endpoints in order (load-balancing order first).
    Service {
        service: ObjectKey,
        endpoints: Vec<SocketAddr>,
    },
    /// A mesh workload addressed directly.
    Workload(SocketAddr),
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
        if snapshot.workload_by_ip(original.ip()).is_some() {
            return Route::Workload(original);
        }
        Route::Passthrough(original)
    }

    fn route_service(&self, snapshot: &Snapshot, service: &Service, original: SocketAddr) -> Route {
        let Some(port) = service.port(original.port()) else {
            return Route::Refused(Failure::UnknownServicePort);
        };
        let target = port.target();
        let all = snapshot.endpoints(service);
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
            .filter_map(|w| endpoint_ip(w, original.ip()))
            .map(|ip| SocketAddr::new(ip, target))
            .collect();
        if endpoints.is_empty() {
            return Route::Refused(Failure::NoEndpoint);
        }
        let key = service.metadata.key();
        let start = self.cursor(&key).fetch_add(1, Ordering::Relaxed) % endpoints.len();
        endpoints.rotate_left(start);
        Route::Service {
            service: key,
            endpoints,
        }
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
            Route::Workload(sa("10.0.0.2:9000"))
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
