//! Prometheus metrics, also the source of the per-pod counters `mesh-agent status` shows.
//!
//! Each pod caches its own counter handles at enrollment, so the per-connection cost is a few
//! atomic adds, never a label lookup.

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::datapath::{KernelStats, MapFill};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// Why the proxy could not carry a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Failure {
    /// Captured, but the kernel had no original destination for it.
    NoOriginalDestination,
    /// A service VIP on a port the service does not declare.
    UnknownServicePort,
    /// The service has no endpoints.
    NoEndpoint,
    /// Every candidate endpoint refused or timed out.
    UpstreamConnect,
    /// A connection aimed at the proxy's own ports (would loop).
    ProxyPort,
    /// An AuthorizationPolicy (or the default-deny mesh policy) refused the peer.
    AuthzDenied,
    /// Plaintext to a workload whose PeerAuthentication is STRICT.
    PlaintextRefused,
    /// An HBONE CONNECT for a target this node does not serve under the presented identity,
    /// or a malformed one.
    HboneTargetRefused,
    /// mTLS was required but the pod has no certificate (yet).
    NoCertificate,
    /// The HBONE peer failed TLS, identity verification, or answered the CONNECT with an
    /// error.
    HboneHandshake,
    /// The service's `connectionPool.maxConnections` was reached on this node.
    CircuitOpen,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    pod: String,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    pod: String,
    direction: Direction,
    reason: Failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelLabels {
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    connections: Family<ConnLabels, Counter>,
    active: Family<ConnLabels, Gauge>,
    bytes_sent: Family<ConnLabels, Counter>,
    bytes_received: Family<ConnLabels, Counter>,
    audited: Family<ConnLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    kernel: Family<KernelLabels, Gauge>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
}

/// Counter handles of one direction of one pod.
#[derive(Clone, Default)]
pub struct DirectionCounters {
    pub connections: Counter,
    pub active: Gauge,
    /// Bytes from the pod's side towards the peer.
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    /// Connections an AUDIT policy matched (they are carried; this only counts them).
    pub audited: Counter,
    failures: Vec<(Failure, Counter)>,
}

impl DirectionCounters {
    pub fn fail(&self, reason: Failure) {
        if let Some((_, c)) = self.failures.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    pub fn failures_total(&self) -> u64 {
        self.failures.iter().map(|(_, c)| c.get()).sum()
    }
}

#[derive(Clone, Default)]
pub struct PodCounters {
    pub outbound: DirectionCounters,
    pub inbound: DirectionCounters,
}

const FAILURES: [Failure; 11] = [
    Failure::NoOriginalDestination,
    Failure::UnknownServicePort,
    Failure::NoEndpoint,
    Failure::UpstreamConnect,
    Failure::ProxyPort,
    Failure::AuthzDenied,
    Failure::PlaintextRefused,
    Failure::HboneTargetRefused,
    Failure::NoCertificate,
    Failure::HboneHandshake,
    Failure::CircuitOpen,
];

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("mesh")),
            connections: Family::default(),
            active: Family::default(),
            bytes_sent: Family::default(),
            bytes_received: Family::default(),
            audited: Family::default(),
            failures: Family::default(),
            kernel: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
        };
        {
            let mut r = metrics.registry.lock();
            r.register(
                "proxy_connections",
                "Connections the proxy accepted",
                metrics.connections.clone(),
            );
            r.register(
                "proxy_active_connections",
                "Connections open now",
                metrics.active.clone(),
            );
            r.register(
                "proxy_sent_bytes",
                "Bytes from the pod towards its peer",
                metrics.bytes_sent.clone(),
            );
            r.register(
                "proxy_received_bytes",
                "Bytes from the peer to the pod",
                metrics.bytes_received.clone(),
            );
            r.register(
                "proxy_audited_connections",
                "Connections an AUDIT authorization policy matched",
                metrics.audited.clone(),
            );
            r.register(
                "proxy_failures",
                "Connections the proxy could not carry, by reason",
                metrics.failures.clone(),
            );
            r.register(
                "kernel_events",
                "Counters kept by the eBPF programs",
                metrics.kernel.clone(),
            );
            r.register(
                "bpf_map_entries",
                "Entries in a kernel map whose filling refuses work (config, enrollments)",
                metrics.map_entries.clone(),
            );
            r.register(
                "bpf_map_capacity",
                "Entries a kernel map can hold (max_entries)",
                metrics.map_capacity.clone(),
            );
        }
        metrics
    }

    /// Counter handles for a pod (`namespace/name`), created once at enrollment.
    pub fn pod(&self, pod: &str) -> PodCounters {
        let direction = |direction| {
            let labels = ConnLabels {
                pod: pod.to_owned(),
                direction,
            };
            DirectionCounters {
                connections: self.connections.get_or_create(&labels).clone(),
                active: self.active.get_or_create(&labels).clone(),
                bytes_sent: self.bytes_sent.get_or_create(&labels).clone(),
                bytes_received: self.bytes_received.get_or_create(&labels).clone(),
                audited: self.audited.get_or_create(&labels).clone(),
                failures: FAILURES
                    .iter()
                    .map(|&reason| {
                        let labels = FailureLabels {
                            pod: pod.to_owned(),
                            direction,
                            reason,
                        };
                        (reason, self.failures.get_or_create(&labels).clone())
                    })
                    .collect(),
            }
        };
        PodCounters {
            outbound: direction(Direction::Outbound),
            inbound: direction(Direction::Inbound),
        }
    }

    /// Registers a node-wide counter owned elsewhere (it keeps counting into the same atomic).
    pub fn register_counter(&self, name: &str, help: &str, counter: Counter) {
        self.registry.lock().register(name, help, counter);
    }

    /// Forgets an unenrolled pod's series.
    pub fn remove_pod(&self, pod: &str) {
        for direction in [Direction::Outbound, Direction::Inbound] {
            let labels = ConnLabels {
                pod: pod.to_owned(),
                direction,
            };
            self.connections.remove(&labels);
            self.active.remove(&labels);
            self.bytes_sent.remove(&labels);
            self.bytes_received.remove(&labels);
            self.audited.remove(&labels);
            for reason in FAILURES {
                self.failures.remove(&FailureLabels {
                    pod: pod.to_owned(),
                    direction,
                    reason,
                });
            }
        }
    }

    /// Prometheus text exposition, with the kernel counters and map fill read fresh, and
    /// `more` (other registries' families, encoded without an end marker) before the end
    /// marker.
    pub fn encode(&self, kernel: &KernelStats, maps: &[MapFill], more: &str) -> String {
        for (name, value) in kernel {
            let labels = KernelLabels {
                counter: (*name).to_owned(),
            };
            self.kernel.get_or_create(&labels).set(*value as i64);
        }
        for fill in maps {
            let labels = MapLabels {
                map: fill.map.to_owned(),
            };
            self.map_entries
                .get_or_create(&labels)
                .set(i64::from(fill.entries));
            self.map_capacity
                .get_or_create(&labels)
                .set(i64::from(fill.capacity));
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry.lock());
        out.push_str(more);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}
