//! The agent's view of the mesh (services, workloads) and the per-connection routing decision.
//!
//! The snapshot is swapped atomically when config changes; connections in flight keep the
//! snapshot they started with.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_api::{ObjectKey, Protocol, Service, Snapshot, Subset, Workload};
use parking_lot::RwLock;

use crate::balance::{request_hash, Balancers, Candidate, Client, Picked};
use crate::metrics::Failure;

/// Where a captured outbound connection goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A service VIP: try these endpoints in order (load-balancing order first). On HTTP
    /// ports the HTTP proxy routes each request itself and ignores `endpoints`.
    Service {
        service: ObjectKey,
        protocol: Protocol,
        endpoints: Picked,
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
    health: ArcSwap<HealthByWorkload>,
    /// Load-balancing state per service (and subset).
    balancers: Balancers,
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

impl ConfigSource {
    /// False while an agent following a control plane has neither a cached config nor a
    /// first push (`run` words the origin "none yet (...)" then). Without a control plane the
    /// file is loaded before anything is served, or there is none to load.
    pub fn loaded(&self) -> bool {
        !self.origin.starts_with("none yet")
    }
}

impl Registry {
    pub fn new(snapshot: Snapshot, origin: String) -> Registry {
        Registry {
            snapshot: ArcSwap::from_pointee(snapshot),
            health: ArcSwap::from_pointee(HashMap::new()),
            balancers: Balancers::default(),
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
        self.balancers.retain(&snapshot);
        self.snapshot.store(Arc::new(snapshot));
        {
            let mut source = self.source.write();
            source.origin = origin;
            source.version = version.unwrap_or(source.version + 1);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_health(&self, health: HashMap<ObjectKey, bool>) {
        let mut by_namespace = HealthByWorkload::new();
        for (key, healthy) in health {
            by_namespace
                .entry(key.namespace)
                .or_default()
                .insert(key.name, healthy);
        }
        self.health.store(Arc::new(by_namespace));
    }

    /// `Some(true)` healthy, `Some(false)` unhealthy, `None` not checked.
    pub fn health_of(&self, workload: &ObjectKey) -> Option<bool> {
        lookup_health(&self.health.load(), &workload.namespace, &workload.name)
    }

    /// Balancing state, for status.
    pub fn balancers(&self) -> &Balancers {
        &self.balancers
    }

    /// Decides where a connection from `source` to `original` goes.
    pub fn route(&self, original: SocketAddr, source: &Source<'_>) -> Route {
        if mesh_common::ports::is_proxy_port(original.port()) {
            return Route::Refused(Failure::ProxyPort);
        }
        let snapshot = self.snapshot.load();
        if let Some(service) = snapshot.service_by_vip(original.ip()) {
            return self.route_service(&snapshot, service, original, source);
        }
        if let Some(workload) = snapshot.workload_by_ip(original.ip()) {
            return Route::Workload {
                target: original,
                http_service: http_service_of(&snapshot, workload, original.port()),
            };
        }
        Route::Passthrough(original)
    }

    fn route_service(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        original: SocketAddr,
        source: &Source<'_>,
    ) -> Route {
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
        // HTTP ports pick per request (a pick here would advance the policy's state for
        // nothing); `auto` ports need endpoints in case the client does not speak HTTP.
        let endpoints = if port.protocol.is_http() {
            Picked::fixed(Vec::new())
        } else {
            let client = source.client(snapshot, backend, None);
            self.endpoints(snapshot, backend, subset, target, original.ip(), &client)
        };
        if endpoints.order.is_empty() && !port.protocol.may_be_http() {
            return Route::Refused(Failure::NoEndpoint);
        }
        Route::Service {
            service: service.metadata.key(),
            protocol: port.protocol,
            endpoints,
        }
    }

    /// The endpoints of `service` (of `subset`, if given) on `target_port`, in the order to
    /// try them for `client`: the service's balancing policy over the healthy ones (all, when
    /// fewer than half are), by locality with `localityLb` (see `balance`). Addresses are in
    /// the family of `dialled` where a workload has one. Both the L4 path (per connection)
    /// and the HTTP path (per request) ask here.
    pub fn endpoints(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        subset: Option<&Subset>,
        target_port: u16,
        dialled: IpAddr,
        client: &Client<'_>,
    ) -> Picked {
        let health = self.health.load();
        let service_key = service
            .spec
            .outlier_detection
            .as_ref()
            .map(|_| service.metadata.key());
        let now = std::time::Instant::now();
        let ejected = |addr: SocketAddr| {
            service_key
                .as_ref()
                .is_some_and(|key| self.balancers.outliers.is_ejected(key, addr, now))
        };
        let candidates: Vec<Candidate<'_>> = snapshot
            .endpoints(service)
            .into_iter()
            .filter(|w| subset.is_none_or(|s| s.selects(w)))
            .filter_map(|w| {
                let addr = SocketAddr::new(endpoint_ip(w, dialled)?, target_port);
                Some(Candidate {
                    workload: w,
                    addr,
                    // An ejected outlier is skipped like one failing its health checks.
                    healthy: lookup_health(&health, &w.metadata.namespace, &w.metadata.name)
                        != Some(false)
                        && !ejected(addr),
                })
            })
            .collect();
        self.balancers.pick(service, subset, &candidates, client)
    }
}

/// Who opened a connection (or sent a request): what balancing needs to know of them.
pub struct Source<'a> {
    /// The client pod's address (hashed by `hashOn: {sourceIp: true}`).
    pub ip: IpAddr,
    /// The client's declared workload (its locality counts for `localityLb`).
    pub workload: Option<&'a ObjectKey>,
}

impl Source<'_> {
    /// The balancing view of this client for a request to `service` with `headers` (None on
    /// a TCP port): its hash key by the service's `hashOn`, and its locality.
    pub fn client<'s>(
        &self,
        snapshot: &'s Snapshot,
        service: &Service,
        headers: Option<&http::HeaderMap>,
    ) -> Client<'s> {
        Client {
            hash: request_hash(&service.spec.load_balancer, self.ip, headers),
            locality: self
                .workload
                .and_then(|key| snapshot.workload(&key.namespace, &key.name))
                .and_then(|w| w.spec.locality.as_ref()),
        }
    }
}

/// Health by namespace, then workload name: looked up by `&str` for every endpoint of every
/// pick (a key of owned strings would cost two allocations per endpoint per connection).
type HealthByWorkload = HashMap<String, HashMap<String, bool>>;

fn lookup_health(health: &HealthByWorkload, namespace: &str, name: &str) -> Option<bool> {
    health.get(namespace)?.get(name).copied()
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
pub fn http_service_of(
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
    use std::collections::HashSet;

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
kind: Service
metadata: {name: empty}
spec:
  vips: ["10.96.0.11"]
  ports: [{port: 80}]
  selector: {app: none}
"#;
        registry_of(&(yaml.to_owned() + WEB_WORKLOADS))
    }

    /// Workloads web-1 (10.0.0.1) and web-2 (10.0.0.2), label app=web.
    const WEB_WORKLOADS: &str = r#"---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-1}
spec: {uid: w1, ips: ["10.0.0.1"], node: n1, labels: {app: web}}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-2}
spec: {uid: w2, ips: ["10.0.0.2"], node: n1, labels: {app: web}}
"#;

    fn registry_of(yaml: &str) -> Registry {
        let snapshot = Snapshot::from_resources(mesh_api::load_str("t.yaml", yaml).unwrap());
        Registry::new(snapshot.unwrap(), "test".into())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    impl Registry {
        /// A route for a connection from a client pod outside the config.
        fn route_from_client(&self, original: SocketAddr) -> Route {
            let source = Source {
                ip: "10.0.9.9".parse().unwrap(),
                workload: None,
            };
            self.route(original, &source)
        }
    }

    #[test]
    fn round_robin_alternates_endpoints_on_the_target_port() {
        let r = registry();
        let first = |route| match route {
            Route::Service { endpoints, .. } => endpoints.order[0],
            other => panic!("{other:?}"),
        };
        let a = first(r.route_from_client(sa("10.96.0.10:80")));
        let b = first(r.route_from_client(sa("10.96.0.10:80")));
        let c = first(r.route_from_client(sa("10.96.0.10:80")));
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.port(), 8080);
    }

    #[test]
    fn unknown_port_empty_service_workload_and_passthrough() {
        let r = registry();
        assert_eq!(
            r.route_from_client(sa("10.96.0.10:81")),
            Route::Refused(Failure::UnknownServicePort)
        );
        assert_eq!(
            r.route_from_client(sa("10.96.0.11:80")),
            Route::Refused(Failure::NoEndpoint)
        );
        assert_eq!(
            r.route_from_client(sa("10.0.0.2:9000")),
            Route::Workload {
                target: sa("10.0.0.2:9000"),
                http_service: None
            }
        );
        assert_eq!(
            r.route_from_client(sa("10.9.9.9:443")),
            Route::Passthrough(sa("10.9.9.9:443"))
        );
        assert_eq!(
            r.route_from_client(sa("10.0.0.2:15001")),
            Route::Refused(Failure::ProxyPort)
        );
    }

    /// The L4 path balances by the service's policy with what it knows of the client: a
    /// `maglev` service on `sourceIp` sends every connection of one pod to one endpoint, and
    /// `localityLb` prefers the endpoints in the zone of the client's Workload.
    #[test]
    fn connections_are_balanced_by_source_ip_and_the_clients_locality() {
        let yaml = r#"
apiVersion: mesh/v1
kind: Service
metadata: {name: sticky}
spec:
  vips: ["10.96.0.20"]
  ports: [{port: 80}]
  selector: {app: web}
  loadBalancer: {policy: maglev, hashOn: {sourceIp: true}}
---
apiVersion: mesh/v1
kind: Service
metadata: {name: local}
spec:
  vips: ["10.96.0.21"]
  ports: [{port: 80}]
  selector: {app: web}
  loadBalancer: {policy: round_robin, localityLb: true}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: client}
spec: {uid: c, ips: ["10.0.1.1"], node: n1, locality: {region: r, zone: b}}
"#;
        let mut yaml = yaml.to_owned();
        for i in 1..=4 {
            let zone = if i % 2 == 0 { "b" } else { "a" };
            yaml += &format!("---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: web-{i}}}\nspec: {{uid: w{i}, ips: [\"10.0.0.{i}\"], node: n1, labels: {{app: web}}, locality: {{region: r, zone: {zone}}}}}\n");
        }
        let r = registry_of(&yaml);
        let client = ObjectKey::new("default", "client");
        let first = |vip: &str, ip: &str| {
            let source = Source {
                ip: ip.parse().unwrap(),
                workload: Some(&client),
            };
            match r.route(sa(vip), &source) {
                Route::Service { endpoints, .. } => endpoints.order[0],
                other => panic!("{other:?}"),
            }
        };
        let mut reached = HashSet::new();
        for pod in 1..=40 {
            let ip = format!("10.0.2.{pod}");
            let endpoint = first("10.96.0.20:80", &ip);
            assert!((0..5).all(|_| first("10.96.0.20:80", &ip) == endpoint));
            reached.insert(endpoint);
        }
        assert_eq!(
            reached.len(),
            4,
            "40 client pods spread over every endpoint"
        );
        let local: HashSet<SocketAddr> = (0..10)
            .map(|_| first("10.96.0.21:80", "10.0.1.1"))
            .collect();
        assert_eq!(local, HashSet::from([sa("10.0.0.2:80"), sa("10.0.0.4:80")]));
    }

    /// An HTTP port's connection picks nothing: each of its requests does. (A pick per
    /// connection as well would shift `weighted` and round robin by one per connection.)
    #[test]
    fn http_ports_pick_per_request_not_per_connection() {
        let service = r#"
apiVersion: mesh/v1
kind: Service
metadata: {name: web}
spec:
  vips: ["10.96.0.10"]
  ports: [{port: 80, targetPort: 8080, protocol: http}]
  selector: {app: web}
"#;
        let r = registry_of(&(service.to_owned() + WEB_WORKLOADS));
        for _ in 0..3 {
            match r.route_from_client(sa("10.96.0.10:80")) {
                Route::Service { endpoints, .. } => assert!(endpoints.order.is_empty()),
                other => panic!("{other:?}"),
            }
        }
        let snapshot = r.snapshot();
        let web = snapshot.service("default", "web").unwrap();
        let ip = "10.96.0.10".parse().unwrap();
        let first = r.endpoints(&snapshot, web, None, 8080, ip, &Client::default());
        assert_eq!(first.order, [sa("10.0.0.1:8080"), sa("10.0.0.2:8080")]);
    }

    #[test]
    fn unhealthy_endpoints_are_avoided_unless_fewer_than_half_are_healthy() {
        let r = registry();
        let endpoints = |r: &Registry| match r.route_from_client(sa("10.96.0.10:80")) {
            Route::Service { endpoints, .. } => {
                let mut order = endpoints.order;
                order.sort();
                order
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
