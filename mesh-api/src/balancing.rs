//! How a Service's traffic is spread over its endpoints and protected from them: the
//! load-balancing policy (`spec.loadBalancer`), passive outlier detection
//! (`spec.outlierDetection`) and per-client-node connection limits (`spec.connectionPool`),
//! plus the Workload fields they read (`spec.weight`, `spec.locality`).

use serde::{Deserialize, Serialize};

use crate::route::{check_timeout, header_name_problem, is_header_name, is_token, MAX_TIMEOUT_MS};
use crate::validate::{is_label_name, Checker};

/// `spec.loadBalancer` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub policy: LbPolicy,
    /// What `ring_hash` and `maglev` hash (only with those policies). Omitted with them: the
    /// client's source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Prefer endpoints in the client's zone, then its region, spilling over when too few of
    /// them are healthy (the client's locality is its Workload's `spec.locality`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locality_lb: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In proportion to the Workloads' `spec.weight`, interleaved (1:3 is even in every
    /// window of four picks, not bursty).
    Weighted,
    /// The endpoint with the fewer outstanding requests (connections on TCP ports) times its
    /// recent latency, of two picked at random.
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// Consistent hashing on a ring: the same key goes to the same endpoint; when endpoints
    /// change, only about 1/N of the keys move.
    RingHash,
    /// Consistent hashing with Maglev's lookup table (65537 entries): like `ring_hash`, with
    /// a more even spread and a constant-time lookup.
    Maglev,
}

impl LbPolicy {
    /// Whether the policy picks by a hash of the request (`hashOn`).
    pub fn is_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }

    /// The name as written in a resource.
    pub fn name(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Weighted => "weighted",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::Random => "random",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }
}

/// `spec.loadBalancer.hashOn`: exactly one of the three. A request (or connection) without
/// the key is balanced at random.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashOn {
    /// A request header (lowercase name; the first value). HTTP ports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie of the request, by name. HTTP ports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's IP address (`true`; the only form that applies to TCP ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// What a hash policy hashes, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey<'a> {
    Header(&'a str),
    Cookie(&'a str),
    SourceIp,
}

impl LoadBalancer {
    /// What to hash, for `ring_hash` and `maglev` (`None` for the other policies).
    pub fn hash_key(&self) -> Option<HashKey<'_>> {
        if !self.policy.is_hash() {
            return None;
        }
        let Some(on) = &self.hash_on else {
            return Some(HashKey::SourceIp);
        };
        Some(match (&on.header, &on.cookie) {
            (Some(h), _) => HashKey::Header(h),
            (None, Some(c)) => HashKey::Cookie(c),
            (None, None) => HashKey::SourceIp,
        })
    }

    /// One line for tables: the policy, its hash key and `locality` when set, e.g.
    /// `maglev(header x-user) locality`.
    pub fn summary(&self) -> String {
        let mut line = self.policy.name().to_owned();
        match self.hash_key() {
            Some(HashKey::Header(h)) => line += &format!("(header {h})"),
            Some(HashKey::Cookie(c)) => line += &format!("(cookie {c})"),
            Some(HashKey::SourceIp) => line += "(source ip)",
            None => {}
        }
        if self.locality_lb {
            line += " locality";
        }
        line
    }
}

/// `spec.outlierDetection` of a Service: endpoints that keep failing are set aside for a
/// while. Accepted and stored; NOT ENFORCED YET (issue 9): the agent warns once per service
/// that sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive connect failures (TCP) or 5xx / gateway errors (HTTP) that eject an
    /// endpoint. Default 5.
    #[serde(default = "default_consecutive_errors")]
    pub consecutive_errors: u32,
    /// How often ejections are reconsidered. Default 10 s.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// An ejection lasts this long times the number of times the endpoint was ejected.
    /// Default 30 s.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// At most this share of the service's endpoints is ejected at once, 1..100. Default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_errors() -> u32 {
    5
}
fn default_interval_ms() -> u64 {
    10_000
}
fn default_base_ejection_ms() -> u64 {
    30_000
}
fn default_max_ejection_percent() -> u32 {
    10
}

/// `spec.connectionPool` of a Service: what one client node may pile onto it. Accepted and
/// stored; NOT ENFORCED YET (issue 9): the agent warns once per service that sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// Connections to the service open at once from one node. Default 1024.
    #[serde(default = "default_pool_limit")]
    pub max_connections: u32,
    /// HTTP requests waiting for a connection. Default 1024.
    #[serde(default = "default_pool_limit")]
    pub max_pending_requests: u32,
    /// HTTP requests in flight. Default 1024.
    #[serde(default = "default_pool_limit")]
    pub max_requests: u32,
    /// Retries in flight. Default 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Omitted: MeshConfig `connectTimeoutMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// A connection idle this long is closed. Omitted: MeshConfig `idleTimeoutMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

fn default_pool_limit() -> u32 {
    1024
}
fn default_max_retries() -> u32 {
    3
}

/// Workload weight when `spec.weight` is omitted. 100 rather than 1, so one endpoint can be
/// made lighter (50 = half the traffic of its peers) without touching the others, and up to
/// ten times heavier.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest Workload weight.
pub const MAX_ENDPOINT_WEIGHT: u32 = 1000;

/// `spec.locality` of a Workload: where it runs, for `localityLb`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    pub region: String,
    /// Within the region; omitted: the workload is only known by its region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

pub(crate) fn check_load_balancer(c: &mut Checker<'_>, lb: &LoadBalancer) {
    let Some(on) = &lb.hash_on else {
        return;
    };
    let field = "spec.loadBalancer.hashOn";
    if !lb.policy.is_hash() {
        c.fail(
            field,
            format!(
                "applies only to policy ring_hash or maglev, not {}",
                lb.policy.name()
            ),
        );
    }
    let set = [
        on.header.is_some(),
        on.cookie.is_some(),
        on.source_ip.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        c.fail(field, "must set exactly one of header, cookie or sourceIp");
    }
    if let Some(name) = &on.header {
        if !is_header_name(name) {
            c.fail(format!("{field}.header"), header_name_problem(name));
        }
    }
    if let Some(name) = &on.cookie {
        if !is_token(name) {
            c.fail(
                format!("{field}.cookie"),
                format!("{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
            );
        }
    }
    if on.source_ip == Some(false) {
        c.fail(
            format!("{field}.sourceIp"),
            "must be true (to hash on something else, set header or cookie instead)",
        );
    }
}

pub(crate) fn check_outlier_detection(c: &mut Checker<'_>, o: &OutlierDetection) {
    let field = "spec.outlierDetection";
    if o.consecutive_errors == 0 {
        c.fail(format!("{field}.consecutiveErrors"), "must be at least 1");
    }
    check_timeout(
        c,
        &format!("{field}.intervalMs"),
        o.interval_ms,
        MAX_TIMEOUT_MS,
    );
    check_timeout(
        c,
        &format!("{field}.baseEjectionMs"),
        o.base_ejection_ms,
        MAX_TIMEOUT_MS,
    );
    if !(1..=100).contains(&o.max_ejection_percent) {
        c.fail(
            format!("{field}.maxEjectionPercent"),
            format!("must be between 1 and 100, got {}", o.max_ejection_percent),
        );
    }
}

pub(crate) fn check_connection_pool(c: &mut Checker<'_>, p: &ConnectionPool) {
    let field = "spec.connectionPool";
    for (name, value) in [
        ("maxConnections", p.max_connections),
        ("maxPendingRequests", p.max_pending_requests),
        ("maxRequests", p.max_requests),
        ("maxRetries", p.max_retries),
    ] {
        if value == 0 {
            c.fail(
                format!("{field}.{name}"),
                "must be at least 1 (a limit of 0 would refuse all traffic)",
            );
        }
    }
    for (name, value) in [
        ("connectTimeoutMs", p.connect_timeout_ms),
        ("idleTimeoutMs", p.idle_timeout_ms),
    ] {
        if let Some(ms) = value {
            check_timeout(c, &format!("{field}.{name}"), ms, MAX_TIMEOUT_MS);
        }
    }
}

pub(crate) fn check_weight(c: &mut Checker<'_>, weight: Option<u32>) {
    if let Some(w) = weight {
        if !(1..=MAX_ENDPOINT_WEIGHT).contains(&w) {
            c.fail(
                "spec.weight",
                format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}, got {w}"),
            );
        }
    }
}

pub(crate) fn check_locality(c: &mut Checker<'_>, locality: &Locality) {
    let rule = "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with \
                a letter or digit";
    if !is_label_name(&locality.region) {
        c.fail(
            "spec.locality.region",
            format!("{:?} {rule}", locality.region),
        );
    }
    if let Some(zone) = &locality.zone {
        if !is_label_name(zone) {
            c.fail("spec.locality.zone", format!("{zone:?} {rule}"));
        }
    }
}
