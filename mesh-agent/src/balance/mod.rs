//! Load balancing: the order in which to try a service's endpoints, for one connection (L4)
//! or one request (HTTP). Both paths ask `Registry::endpoints`, which gathers the candidates
//! (the service's or subset's endpoints with their health) and asks [`Balancers::pick`].
//!
//! A pick is: [`locality::select`] chooses the endpoints to pick among (healthy ones, the
//! client's zone first with `localityLb`, all of them in panic), then the service's policy
//! chooses the first one; the rest follow for connect retries. The state a policy keeps
//! (cursor, credits, hash table) belongs to the set it was built for and is rebuilt only when
//! that set, its weights or the policy change, never per pick.
//!
//! - `round_robin`, `weighted`, `random`, `least_request`, `ring_hash`, `maglev`: the
//!   policies (`least_request` also keeps the per-endpoint load and the handle callers hold
//!   while a request or connection is outstanding).
//! - `locality`: healthy, panic, zone/region tiers and spill-over.
//! - `hash`: stable hashes and the request key (`hashOn`).
//! - `outlier`: passive outlier detection (ejections), reported by both paths per try.

mod hash;
mod least_request;
mod locality;
mod maglev;
pub mod outlier;
mod random;
mod ring_hash;
mod round_robin;
#[cfg(test)]
mod stats;
mod weighted;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::{LbPolicy, Locality, ObjectKey, Service, Snapshot, Subset, Workload};
use parking_lot::{Mutex, RwLock};
use rand::Rng;

pub use hash::request_hash;
pub use least_request::InFlight;
use least_request::{EndpointLoad, Loads};
pub use outlier::Outcome;
use outlier::{OutlierReporter, Outliers};

/// An endpoint a pick may choose.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'s> {
    pub workload: &'s Workload,
    /// The workload's address in the dialled family, on the target port.
    pub addr: SocketAddr,
    /// False when its health checks fail.
    pub healthy: bool,
}

/// What a pick needs to know about who is asking.
#[derive(Clone, Copy, Debug, Default)]
pub struct Client<'a> {
    /// The hash of the request's `hashOn` key ([`request_hash`]); None: no key (a hash
    /// policy then picks at random).
    pub hash: Option<u64>,
    /// The client workload's `spec.locality`, for `localityLb`.
    pub locality: Option<&'a Locality>,
}

/// The endpoints to try, in order, and how to report load on them (`least_request`) and
/// how tries went (outlier detection).
pub struct Picked {
    pub order: Vec<SocketAddr>,
    /// The service's `connectionPool.connectTimeoutMs`, if it sets one.
    pub connect_timeout: Option<std::time::Duration>,
    loads: Option<Arc<Loads>>,
    outliers: Option<OutlierReporter>,
}

impl Picked {
    /// Endpoints not balanced (a workload dialled directly, a passthrough).
    pub fn fixed(order: Vec<SocketAddr>) -> Picked {
        Picked {
            order,
            connect_timeout: None,
            loads: None,
            outliers: None,
        }
    }

    /// Where to report how tries on these endpoints went, when the service has
    /// `outlierDetection`.
    pub fn outliers(&self) -> Option<&OutlierReporter> {
        self.outliers.as_ref()
    }

    /// Reports how a try on `endpoint` went (nothing without `outlierDetection`); the
    /// service, when this report ejected the endpoint.
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome) -> Option<&ObjectKey> {
        let reporter = self.outliers.as_ref()?;
        reporter
            .report(endpoint, outcome)
            .then_some(reporter.service())
    }

    /// Starts counting a request (connection) to `endpoint` as outstanding, under
    /// `least_request`: hold the handle while it is, and report how it went.
    pub fn start(&self, endpoint: SocketAddr) -> Option<InFlight> {
        self.loads.as_ref().map(|l| l.start(endpoint.ip()))
    }
}

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.order.fmt(f)
    }
}

impl PartialEq for Picked {
    fn eq(&self, other: &Picked) -> bool {
        self.order == other.order
    }
}

impl Eq for Picked {}

/// Balancing state of every service (and subset) this node sends to.
#[derive(Default)]
pub struct Balancers {
    services: RwLock<HashMap<BalancerKey, Arc<Mutex<Scopes>>>>,
    loads: Arc<Loads>,
    pub outliers: Arc<Outliers>,
    /// Pickers built so far (a hash table is built once per endpoint set, not per pick).
    builds: std::sync::atomic::AtomicU64,
}

/// A service, or one of its subsets: each keeps its own rotation.
type BalancerKey = (ObjectKey, Option<String>);

/// Policy state by [`locality::Selection::scope`].
type Scopes = HashMap<u64, ScopeState>;

struct ScopeState {
    policy: LbPolicy,
    /// The endpoints and weights the picker was built for.
    members: Vec<(SocketAddr, u32)>,
    picker: Picker,
}

enum Picker {
    RoundRobin(round_robin::RoundRobin),
    Weighted(weighted::Weighted),
    Random,
    LeastRequest(Vec<Arc<EndpointLoad>>),
    RingHash(ring_hash::Ring),
    Maglev(maglev::Maglev),
}

impl Picker {
    fn build(policy: LbPolicy, members: &[Candidate<'_>], loads: &Loads) -> Picker {
        let weights = || members.iter().map(|c| c.workload.spec.weight());
        // Hash tables are keyed by workload name, which is the same on every node (an
        // address may be reused by another workload later).
        let ids = || -> Vec<String> {
            members
                .iter()
                .map(|c| c.workload.metadata.key().to_string())
                .collect()
        };
        match policy {
            LbPolicy::RoundRobin => Picker::RoundRobin(Default::default()),
            LbPolicy::Weighted => Picker::Weighted(weighted::Weighted::new(weights())),
            LbPolicy::Random => Picker::Random,
            LbPolicy::LeastRequest => {
                Picker::LeastRequest(members.iter().map(|c| loads.of(c.addr.ip())).collect())
            }
            LbPolicy::Maglev if members.len() <= maglev::MAX_ENDPOINTS => {
                Picker::Maglev(maglev::Maglev::new(&ids(), &weights().collect::<Vec<_>>()))
            }
            LbPolicy::RingHash | LbPolicy::Maglev => {
                Picker::RingHash(ring_hash::Ring::new(&ids(), &weights().collect::<Vec<_>>()))
            }
        }
    }

    /// The index of the member to try first, of `n` (n > 0).
    fn first(&mut self, n: usize, hash: Option<u64>, rng: &mut impl Rng) -> usize {
        match (self, hash) {
            (Picker::RoundRobin(rr), _) => rr.pick(n),
            (Picker::Weighted(w), _) => w.pick(),
            (Picker::LeastRequest(loads), _) => least_request::pick(loads, rng),
            (Picker::RingHash(ring), Some(h)) => ring.pick(h),
            (Picker::Maglev(table), Some(h)) => table.pick(h),
            (Picker::Random | Picker::RingHash(_) | Picker::Maglev(_), _) => random::pick(n, rng),
        }
    }
}

impl Balancers {
    /// The order in which to try `candidates` (endpoints of `service`, or of its `subset`)
    /// for `client`.
    pub fn pick(
        &self,
        service: &Service,
        subset: Option<&Subset>,
        candidates: &[Candidate<'_>],
        client: &Client<'_>,
    ) -> Picked {
        let lb = &service.spec.load_balancer;
        let mut rng = rand::rng();
        let selection = locality::select(
            candidates,
            lb.locality_lb,
            client.locality,
            client.hash,
            &mut rng,
        );
        let members = &selection.members;
        if members.is_empty() {
            return Picked::fixed(Vec::new());
        }
        let outliers = service
            .spec
            .outlier_detection
            .as_ref()
            .map(|settings| OutlierReporter {
                outliers: self.outliers.clone(),
                service: service.metadata.key(),
                settings: settings.clone(),
                endpoints: candidates.len(),
            });
        let first = {
            let scopes = self.scopes(service, subset);
            let mut scopes = scopes.lock();
            let state = scopes.entry(selection.scope).or_insert_with(|| ScopeState {
                policy: lb.policy,
                members: Vec::new(),
                picker: Picker::Random,
            });
            let same_set = state.policy == lb.policy
                && state.members.len() == members.len()
                && state
                    .members
                    .iter()
                    .zip(members)
                    .all(|(m, c)| m.0 == c.addr && m.1 == c.workload.spec.weight());
            if !same_set {
                state.policy = lb.policy;
                state.members = members
                    .iter()
                    .map(|c| (c.addr, c.workload.spec.weight()))
                    .collect();
                state.picker = Picker::build(lb.policy, members, &self.loads);
                self.builds
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            state.picker.first(members.len(), client.hash, &mut rng) % members.len()
        };
        let order = members[first..]
            .iter()
            .chain(&members[..first])
            .chain(&selection.rest)
            .map(|c| c.addr)
            .collect();
        Picked {
            order,
            connect_timeout: service
                .spec
                .connection_pool
                .as_ref()
                .and_then(|p| p.connect_timeout_ms)
                .map(std::time::Duration::from_millis),
            loads: (lb.policy == LbPolicy::LeastRequest).then(|| self.loads.clone()),
            outliers,
        }
    }

    fn scopes(&self, service: &Service, subset: Option<&Subset>) -> Arc<Mutex<Scopes>> {
        let key = (service.metadata.key(), subset.map(|s| s.name.clone()));
        if let Some(scopes) = self.services.read().get(&key) {
            return scopes.clone();
        }
        self.services.write().entry(key).or_default().clone()
    }

    /// Drops the state of services and subsets `snapshot` no longer has, and the loads of
    /// addresses no workload has.
    pub fn retain(&self, snapshot: &Snapshot) {
        self.services.write().retain(|(service, subset), _| {
            snapshot
                .service(&service.namespace, &service.name)
                .is_some_and(|s| subset.as_ref().is_none_or(|name| s.subset(name).is_some()))
        });
        self.loads
            .retain(|ip| snapshot.workload_by_ip(ip).is_some());
        self.outliers.retain(
            |key| {
                snapshot
                    .service(&key.namespace, &key.name)
                    .is_some_and(|s| s.spec.outlier_detection.is_some())
            },
            |addr| snapshot.workload_by_ip(addr.ip()).is_some(),
        );
    }

    /// Outstanding requests (connections) and the latency estimate of the endpoint at `ip`,
    /// if `least_request` ever sent to it.
    pub fn load_of(&self, ip: IpAddr) -> Option<(u32, std::time::Duration)> {
        let load = self.loads.get(ip)?;
        Some((
            load.outstanding(),
            load.latency_at(std::time::Instant::now()),
        ))
    }
}

#[cfg(test)]
mod tests;
