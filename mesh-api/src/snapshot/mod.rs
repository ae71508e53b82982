//! A validated, indexed, immutable view of all resources: what the proxy consults per
//! connection. Build a new one on every config change and swap it in.
//!
//! This file holds construction and the service/workload indexes; `traffic.rs` adds routes,
//! `security.rs` authorization and peer authentication, `authn.rs` request authentication,
//! `mesh.rs` the mesh config.

mod authn;
mod incremental;
#[cfg(test)]
mod incremental_tests;
mod mesh;
mod security;
mod traffic;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::authz::AuthorizationPolicy;
use crate::error::{ConfigError, Issue};
use crate::mesh_config::{MeshConfig, MeshConfigSpec};
use crate::meta::ObjectKey;
use crate::peer_auth::PeerAuthentication;
use crate::request_auth::RequestAuthentication;
use crate::resource::{Kind, Resource};
use crate::route::Route;
use crate::service::Service;
use crate::workload::Workload;

pub use incremental::{Change, ConfigIndex, Verdict};
pub use security::{AuthzDecision, AuthzReason};

/// Resources are kept in `(namespace, name)` order so listings and dumps are stable; the
/// indexes point into those vectors so per-connection lookups are one hash probe.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    services: Vec<Service>,
    workloads: Vec<Workload>,
    /// namespace -> name -> index, looked up by `&str` without allocating.
    service_names: HashMap<String, HashMap<String, usize>>,
    workload_names: HashMap<String, HashMap<String, usize>>,
    by_vip: HashMap<IpAddr, usize>,
    by_ip: HashMap<IpAddr, usize>,
    by_uid: HashMap<String, usize>,
    /// Per service (same index as `services`): its endpoints, in workload order.
    endpoints: Vec<Vec<usize>>,

    routes: Vec<Route>,
    /// namespace -> host service name -> index into `routes`.
    route_hosts: HashMap<String, HashMap<String, usize>>,

    authorization_policies: Vec<AuthorizationPolicy>,
    /// namespace -> indexes into `authorization_policies`, ascending.
    authz_by_namespace: HashMap<String, Vec<usize>>,

    peer_authentications: Vec<PeerAuthentication>,
    /// namespace -> its namespace-wide (no selector) policy.
    peer_auth_namespace_wide: HashMap<String, usize>,
    /// namespace -> its selector policies, ascending.
    peer_auth_selectors: HashMap<String, Vec<usize>>,

    request_authentications: Vec<RequestAuthentication>,
    authn: authn::AuthnIndex,

    mesh_config: Option<MeshConfig>,
    /// `mesh_config`'s spec, or the defaults.
    mesh: MeshConfigSpec,
}

impl Snapshot {
    /// Validates every resource and the set as a whole, reporting all problems at once:
    /// duplicate (kind, namespace, name), VIPs shared by two services or equal to a workload
    /// IP, workload uids or IPs used twice, more than one MeshConfig, routes naming missing
    /// services or ports or sharing a host service, and conflicting PeerAuthentications.
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Snapshot, ConfigError> {
        let mut issues = Vec::new();
        let mut services = BTreeMap::new();
        let mut workloads = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let mut authz = BTreeMap::new();
        let mut peer_auths = BTreeMap::new();
        let mut request_auths = BTreeMap::new();
        let mut mesh_configs = BTreeMap::new();
        for resource in resources {
            issues.extend(resource.issues());
            let key = resource.key();
            let kind = resource.kind();
            let duplicate = match resource {
                Resource::Service(r) => insert_new(&mut services, key.clone(), r),
                Resource::Workload(r) => insert_new(&mut workloads, key.clone(), r),
                Resource::Route(r) => insert_new(&mut routes, key.clone(), r),
                Resource::AuthorizationPolicy(r) => insert_new(&mut authz, key.clone(), r),
                Resource::PeerAuthentication(r) => insert_new(&mut peer_auths, key.clone(), r),
                Resource::RequestAuthentication(r) => {
                    insert_new(&mut request_auths, key.clone(), r)
                }
                Resource::MeshConfig(r) => insert_new(&mut mesh_configs, key.clone(), r),
            };
            if duplicate {
                issues.push(Issue {
                    kind: Some(kind.to_owned()),
                    object: Some(key.clone()),
                    field: Some("metadata.name".to_owned()),
                    ..Issue::new(format!("{kind} {key} is defined more than once"))
                });
            }
        }

        let mut snap = Snapshot {
            services: services.into_values().collect(),
            workloads: workloads.into_values().collect(),
            routes: routes.into_values().collect(),
            authorization_policies: authz.into_values().collect(),
            peer_authentications: peer_auths.into_values().collect(),
            request_authentications: request_auths.into_values().collect(),
            ..Snapshot::default()
        };
        snap.index_workloads(&mut issues);
        snap.index_services(&mut issues);
        snap.index_endpoints();
        snap.set_mesh_config(mesh_configs.into_values().collect(), &mut issues);
        snap.index_routes(&mut issues);
        snap.index_authorization_policies();
        snap.index_peer_authentications(&mut issues);
        snap.index_request_authentications();

        if issues.is_empty() {
            Ok(snap)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    fn index_workloads(&mut self, issues: &mut Vec<Issue>) {
        for (i, w) in self.workloads.iter().enumerate() {
            let m = &w.metadata;
            self.workload_names
                .entry(m.namespace.clone())
                .or_default()
                .insert(m.name.clone(), i);
            if !w.spec.uid.is_empty() {
                if let Some(&j) = self.by_uid.get(&w.spec.uid) {
                    issues.push(issue(
                        w,
                        "spec.uid",
                        format!(
                            "{:?} is already used by Workload {}",
                            w.spec.uid,
                            self.workloads[j].metadata.key()
                        ),
                    ));
                } else {
                    self.by_uid.insert(w.spec.uid.clone(), i);
                }
            }
            for (n, ip) in w.spec.ips.iter().enumerate() {
                match self.by_ip.get(ip) {
                    // Duplicates within one workload are reported by its own validation.
                    Some(&j) if j == i => {}
                    Some(&j) => issues.push(issue(
                        w,
                        &format!("spec.ips[{n}]"),
                        format!(
                            "{ip} is already used by Workload {}",
                            self.workloads[j].metadata.key()
                        ),
                    )),
                    None => {
                        self.by_ip.insert(*ip, i);
                    }
                }
            }
        }
    }

    fn index_services(&mut self, issues: &mut Vec<Issue>) {
        for (i, s) in self.services.iter().enumerate() {
            let m = &s.metadata;
            self.service_names
                .entry(m.namespace.clone())
                .or_default()
                .insert(m.name.clone(), i);
            for (n, vip) in s.spec.vips.iter().enumerate() {
                let field = format!("spec.vips[{n}]");
                if let Some(&w) = self.by_ip.get(vip) {
                    issues.push(issue(
                        s,
                        &field,
                        format!(
                            "{vip} is also an IP of Workload {}",
                            self.workloads[w].metadata.key()
                        ),
                    ));
                }
                match self.by_vip.get(vip) {
                    Some(&j) if j == i => {}
                    Some(&j) => issues.push(issue(
                        s,
                        &field,
                        format!(
                            "{vip} is already the VIP of Service {}",
                            self.services[j].metadata.key()
                        ),
                    )),
                    None => {
                        self.by_vip.insert(*vip, i);
                    }
                }
            }
        }
    }

    /// Selector matching done once here, via a (namespace, label) index, so neither the
    /// per-connection path nor construction scans every workload per service.
    fn index_endpoints(&mut self) {
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (k, v) in &w.spec.labels {
                by_label
                    .entry((&w.metadata.namespace, k, v))
                    .or_default()
                    .push(i);
            }
        }
        let empty = Vec::new();
        let endpoints = self
            .services
            .iter()
            .map(|s| {
                if s.spec.selector.is_empty() {
                    return Vec::new();
                }
                let ns = s.metadata.namespace.as_str();
                // Narrowest posting list first; the rest of the selector filters it.
                let candidates = s
                    .spec
                    .selector
                    .iter()
                    .map(|(k, v)| {
                        by_label
                            .get(&(ns, k.as_str(), v.as_str()))
                            .unwrap_or(&empty)
                    })
                    .min_by_key(|list| list.len())
                    .unwrap_or(&empty);
                candidates
                    .iter()
                    .copied()
                    .filter(|&w| s.selects(&self.workloads[w]))
                    .collect()
            })
            .collect();
        self.endpoints = endpoints;
    }

    /// The service a captured connection to `vip` is for. IPv4-mapped IPv6 addresses (from
    /// dual-stack sockets) match their IPv4 form.
    pub fn service_by_vip(&self, vip: IpAddr) -> Option<&Service> {
        self.by_vip
            .get(&vip.to_canonical())
            .map(|&i| &self.services[i])
    }

    /// The workload that owns `ip` (e.g. an inbound connection's local address, or a direct
    /// pod-IP destination). IPv4-mapped IPv6 addresses match their IPv4 form.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_ip
            .get(&ip.to_canonical())
            .map(|&i| &self.workloads[i])
    }

    /// The workload `mesh-agent enroll --uid` refers to.
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Workload> {
        self.by_uid.get(uid).map(|&i| &self.workloads[i])
    }

    /// Workloads in the service's namespace whose labels match its selector, in
    /// `(namespace, name)` order. Precomputed for services of this snapshot (matched by
    /// namespace/name); computed on the spot for any other.
    pub fn endpoints(&self, service: &Service) -> Vec<&Workload> {
        let m = &service.metadata;
        match lookup(&self.service_names, &m.namespace, &m.name) {
            Some(i) => self.endpoints[i]
                .iter()
                .map(|&w| &self.workloads[w])
                .collect(),
            None => self
                .workloads
                .iter()
                .filter(|w| service.selects(w))
                .collect(),
        }
    }

    /// The endpoints of `service` in its subset `subset` (empty if it has no such subset), in
    /// `(namespace, name)` order.
    pub fn subset_endpoints(&self, service: &Service, subset: &str) -> Vec<&Workload> {
        match service.subset(subset) {
            Some(subset) => {
                let mut endpoints = self.endpoints(service);
                endpoints.retain(|w| subset.selects(w));
                endpoints
            }
            None => Vec::new(),
        }
    }

    /// Every VIP and every workload IP as a host prefix (/32 or /128), sorted and without
    /// duplicates: the destinations the kernel's capture map must send to the proxy.
    pub fn capture_prefixes(&self) -> Vec<(IpAddr, u8)> {
        let mut prefixes: Vec<(IpAddr, u8)> = self
            .by_vip
            .keys()
            .chain(self.by_ip.keys())
            .map(|&ip| (ip, host_prefix_len(ip)))
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        prefixes
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        lookup(&self.service_names, namespace, name).map(|i| &self.services[i])
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        lookup(&self.workload_names, namespace, name).map(|i| &self.workloads[i])
    }

    /// All services in `(namespace, name)` order.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> + DoubleEndedIterator {
        self.services.iter()
    }

    /// All workloads in `(namespace, name)` order.
    pub fn workloads(&self) -> impl ExactSizeIterator<Item = &Workload> + DoubleEndedIterator {
        self.workloads.iter()
    }

    /// Workloads placed on `node`, i.e. the ones that node's agent may enroll and get
    /// certificates for.
    pub fn workloads_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> {
        self.workloads.iter().filter(move |w| w.spec.node == node)
    }

    /// Everything back as resources, kind by kind in [`Resource::KINDS`] order (services,
    /// workloads, routes, authorization policies, peer authentications, request
    /// authentications, mesh config), each
    /// in key order; for config dumps and `meshctl get`. A defaulted mesh config is not
    /// included.
    pub fn resources(&self) -> Vec<Resource> {
        fn all<T: Clone + Into<Resource>>(v: &[T]) -> impl Iterator<Item = Resource> + '_ {
            v.iter().cloned().map(Into::into)
        }
        all(&self.services)
            .chain(all(&self.workloads))
            .chain(all(&self.routes))
            .chain(all(&self.authorization_policies))
            .chain(all(&self.peer_authentications))
            .chain(all(&self.request_authentications))
            .chain(self.mesh_config.iter().cloned().map(Resource::from))
            .collect()
    }
}

/// Binary search in a vector kept in `(namespace, name)` order.
fn find_sorted<'a, T: Kind>(items: &'a [T], namespace: &str, name: &str) -> Option<&'a T> {
    items
        .binary_search_by(|item| {
            let m = item.metadata();
            (m.namespace.as_str(), m.name.as_str()).cmp(&(namespace, name))
        })
        .ok()
        .map(|i| &items[i])
}

/// An issue about `r` at `field`.
fn issue<T: Kind>(r: &T, field: &str, message: String) -> Issue {
    Issue {
        kind: Some(T::KIND.to_owned()),
        object: Some(r.metadata().key()),
        field: Some(field.to_owned()),
        ..Issue::new(message)
    }
}

fn insert_new<T>(map: &mut BTreeMap<ObjectKey, T>, key: ObjectKey, value: T) -> bool {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(value);
            false
        }
        Entry::Occupied(_) => true,
    }
}

fn lookup(names: &HashMap<String, HashMap<String, usize>>, ns: &str, name: &str) -> Option<usize> {
    names.get(ns)?.get(name).copied()
}

fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
