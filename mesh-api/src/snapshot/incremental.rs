//! Checking one change against the indexes of a config already known to be valid, instead of
//! building and validating a whole [`Snapshot`] of the config after the change.
//!
//! The check is deliberately one-sided: [`Verdict::Valid`] promises that
//! `Snapshot::from_resources` would accept the config after the change; anything it cannot
//! prove in a few index probes is [`Verdict::NeedsFullCheck`], and the caller then runs the full
//! check, which also writes the error messages. So the set of accepted changes, and every
//! message a rejected change gets, are exactly those of the full check.
//!
//! What a single change can break, given a valid config (see `Snapshot::from_resources`):
//! its own per-resource rules; a workload's uid or IP used by another workload, or equal to a
//! VIP; a VIP used by another service or by a workload; a route's host and backend services
//! and ports, and one route per host; two selector PeerAuthentications selecting one
//! workload. Deleting something only breaks what refers to it, and only routes refer to
//! anything (services). PeerAuthentication and MeshConfig writes are rare and always get the
//! full check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::traffic::{check_route_backends, check_route_host};
use crate::meta::ObjectKey;
use crate::resource::{Kind as _, Resource};
use crate::route::Route;
use crate::service::Service;
use crate::workload::Workload;

/// The outcome of [`ConfigIndex::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The config after the change passes the full check.
    Valid,
    /// Not provable from the indexes: run the full check.
    NeedsFullCheck,
}

/// One change to one resource, identified by kind and `namespace/name`.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Put(&'a Resource),
    Delete(&'static str, &'a ObjectKey),
}

type Keys = Vec<ObjectKey>;

/// Indexes of the cross-resource rules over a set of resources, kept up to date one put or
/// delete at a time, and whether that set is known to pass the full check.
///
/// Lists rather than single owners, so a store holding an invalid config (written around the
/// control plane) is still indexed faithfully; such a set is simply never `validated`.
#[derive(Debug, Default, Clone)]
pub struct ConfigIndex {
    resources: HashMap<(&'static str, ObjectKey), Arc<Resource>>,
    vips: HashMap<IpAddr, Keys>,
    workload_ips: HashMap<IpAddr, Keys>,
    uids: HashMap<String, Keys>,
    /// Service (namespace/name) -> how many times routes name it, as host or backend.
    route_refs: HashMap<ObjectKey, usize>,
    /// Host service (namespace/name) -> the routes for it.
    route_hosts: HashMap<ObjectKey, Keys>,
    /// Namespace -> its PeerAuthentications that have a selector.
    peer_auth_selectors: HashMap<String, Keys>,
    /// Bumped by every put and delete, so a full check can be tied to the set it checked.
    generation: u64,
    /// The current set passed the full check, or was reached from one that did by changes
    /// that each got [`Verdict::Valid`].
    validated: bool,
}

impl ConfigIndex {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_validated(&self) -> bool {
        self.validated
    }

    /// Records that the set at `generation` passed the full check; ignored if the set has
    /// changed since.
    pub fn mark_validated(&mut self, generation: u64) {
        if generation == self.generation {
            self.validated = true;
        }
    }

    /// Makes this index's generations continue after `previous`'s: a re-list builds a new
    /// index, and a full check started on the old one (at a generation the new one could
    /// otherwise also reach, as both count from 0) must not validate the new set.
    pub fn continue_after(&mut self, previous: &ConfigIndex) {
        self.generation += previous.generation + 1;
    }

    /// Adds or replaces a resource. The set stays validated only if the change was provably
    /// valid.
    pub fn put(&mut self, resource: Arc<Resource>) {
        let still_valid = self.check(Change::Put(&resource)) == Verdict::Valid;
        let id = (resource.kind(), resource.key());
        if let Some(old) = self.resources.remove(&id) {
            self.unindex(&old);
        }
        self.index(&resource);
        self.resources.insert(id, resource);
        self.changed(still_valid);
    }

    /// Removes a resource (a no-op apart from the generation if it is not there).
    pub fn delete(&mut self, kind: &'static str, key: &ObjectKey) {
        let still_valid = self.check(Change::Delete(kind, key)) == Verdict::Valid;
        if let Some(old) = self.resources.remove(&(kind, key.clone())) {
            self.unindex(&old);
        }
        self.changed(still_valid);
    }

    fn changed(&mut self, still_valid: bool) {
        self.generation += 1;
        self.validated &= still_valid;
    }

    /// Whether the set after `change` provably passes the full check.
    pub fn check(&self, change: Change<'_>) -> Verdict {
        let valid = self.validated
            && match change {
                Change::Put(resource) => {
                    resource.issues().is_empty()
                        && match resource {
                            Resource::Workload(w) => self.workload_fits(w),
                            Resource::Service(s) => self.service_fits(s),
                            Resource::Route(r) => self.route_fits(r),
                            // No cross-resource rules.
                            Resource::AuthorizationPolicy(_)
                            | Resource::RequestAuthentication(_) => true,
                            Resource::PeerAuthentication(_) | Resource::MeshConfig(_) => false,
                        }
                }
                // Only routes refer to other resources, and only to services.
                Change::Delete(kind, key) => kind != Service::KIND || !self.is_routed(key),
            };
        if valid {
            Verdict::Valid
        } else {
            Verdict::NeedsFullCheck
        }
    }

    fn workload_fits(&self, w: &Workload) -> bool {
        let key = w.metadata.key();
        let uid_free = w.spec.uid.is_empty() || !used_by_other(self.uids.get(&w.spec.uid), &key);
        let ips_free = w.spec.ips.iter().all(|ip| {
            !used_by_other(self.workload_ips.get(ip), &key) && !self.vips.contains_key(ip)
        });
        // Two selector policies selecting one workload conflict.
        let selecting = self
            .peer_auth_selectors
            .get(&w.metadata.namespace)
            .into_iter()
            .flatten()
            .filter(
                |p| match self.resources.get(&("PeerAuthentication", (*p).clone())) {
                    Some(r) => matches!(&**r, Resource::PeerAuthentication(p) if p.selects(w)),
                    None => true,
                },
            )
            .count();
        uid_free && ips_free && selecting <= 1
    }

    fn service_fits(&self, s: &Service) -> bool {
        let key = s.metadata.key();
        let vips_free = s.spec.vips.iter().all(|vip| {
            !used_by_other(self.vips.get(vip), &key) && !self.workload_ips.contains_key(vip)
        });
        // A route's checks read its services' ports; not re-run here.
        vips_free && !self.is_routed(&key)
    }

    fn route_fits(&self, route: &Route) -> bool {
        let ns = &route.metadata.namespace;
        let host_key = ObjectKey {
            namespace: ns.clone(),
            name: route.spec.service.clone(),
        };
        let mut issues = Vec::new();
        let host = self.service(&host_key);
        check_route_host(route, host, &mut issues);
        check_route_backends(
            route,
            host,
            |namespace, name| {
                self.service(&ObjectKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            },
            &mut issues,
        );
        issues.is_empty() && !used_by_other(self.route_hosts.get(&host_key), &route.metadata.key())
    }

    fn service(&self, key: &ObjectKey) -> Option<&Service> {
        match self.resources.get(&(Service::KIND, key.clone()))?.as_ref() {
            Resource::Service(s) => Some(s),
            _ => None,
        }
    }

    fn is_routed(&self, service: &ObjectKey) -> bool {
        self.route_refs.get(service).is_some_and(|&n| n > 0)
    }

    fn index(&mut self, resource: &Resource) {
        let key = resource.key();
        match resource {
            Resource::Workload(w) => {
                if !w.spec.uid.is_empty() {
                    add(self.uids.entry(w.spec.uid.clone()).or_default(), &key);
                }
                for ip in &w.spec.ips {
                    add(self.workload_ips.entry(*ip).or_default(), &key);
                }
            }
            Resource::Service(s) => {
                for vip in &s.spec.vips {
                    add(self.vips.entry(*vip).or_default(), &key);
                }
            }
            Resource::Route(r) => {
                add(self.route_hosts.entry(host_of(r)).or_default(), &key);
                for service in route_services(r) {
                    *self.route_refs.entry(service).or_default() += 1;
                }
            }
            Resource::PeerAuthentication(p) if p.spec.selector.is_some() => add(
                self.peer_auth_selectors
                    .entry(key.namespace.clone())
                    .or_default(),
                &key,
            ),
            _ => {}
        }
    }

    fn unindex(&mut self, resource: &Resource) {
        let key = resource.key();
        match resource {
            Resource::Workload(w) => {
                remove(&mut self.uids, &w.spec.uid, &key);
                for ip in &w.spec.ips {
                    remove(&mut self.workload_ips, ip, &key);
                }
            }
            Resource::Service(s) => {
                for vip in &s.spec.vips {
                    remove(&mut self.vips, vip, &key);
                }
            }
            Resource::Route(r) => {
                remove(&mut self.route_hosts, &host_of(r), &key);
                for service in route_services(r) {
                    if let Some(n) = self.route_refs.get_mut(&service) {
                        *n -= 1;
                        if *n == 0 {
                            self.route_refs.remove(&service);
                        }
                    }
                }
            }
            Resource::PeerAuthentication(_) => {
                remove(&mut self.peer_auth_selectors, &key.namespace, &key)
            }
            _ => {}
        }
    }
}

fn host_of(route: &Route) -> ObjectKey {
    ObjectKey {
        namespace: route.metadata.namespace.clone(),
        name: route.spec.service.clone(),
    }
}

/// Every service a route names (host first, then each backend; repeats kept, so counts
/// balance on removal).
fn route_services(route: &Route) -> impl Iterator<Item = ObjectKey> + '_ {
    std::iter::once(host_of(route)).chain(route.spec.rules.iter().flat_map(|rule| {
        rule.backends.iter().map(|b| ObjectKey {
            namespace: route.metadata.namespace.clone(),
            name: b.service.clone(),
        })
    }))
}

fn used_by_other(owners: Option<&Keys>, key: &ObjectKey) -> bool {
    owners.is_some_and(|owners| owners.iter().any(|k| k != key))
}

fn add(owners: &mut Keys, key: &ObjectKey) {
    // A workload listing one IP twice owns it once (its own rules reject that anyway).
    if !owners.contains(key) {
        owners.push(key.clone());
    }
}

fn remove<K, Q>(map: &mut HashMap<Q, Keys>, at: &K, key: &ObjectKey)
where
    K: std::hash::Hash + Eq + ?Sized,
    Q: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    if let Some(owners) = map.get_mut(at) {
        owners.retain(|k| k != key);
        if owners.is_empty() {
            map.remove(at);
        }
    }
}
