//! `kind: Route`: traffic rules for one host Service. Rules are tried in order and the first
//! that matches sends the request (or, on a TCP port, the connection) to one of its weighted
//! backends, with the rule's timeout, retries, faults and header rules.
//!
//! This file holds the resource's types; `conditions.rs` the YAML shapes of path, header and
//! query conditions, `check.rs` and `headers.rs` validation, `matching.rs` and `query.rs` matching requests,
//! `summary.rs` the one-line form tables show.

mod check;
mod conditions;
mod headers;
mod matching;
mod query;
mod summary;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::percent::Percent;
use crate::resource::Kind;
use crate::validate::Checker;

pub(crate) use check::check_timeout;
pub use conditions::{PathMatch, StringMatch};
pub(crate) use headers::{header_name_problem, is_header_name, is_token};
pub use matching::{CompiledRoute, RequestAttributes};
pub use query::parse_query;

/// Largest backend weight; weights are relative within a rule.
pub const MAX_WEIGHT: u32 = 1000;
/// Most retries a route may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Longest request timeout and per-try timeout: one day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Longest injected delay: one hour.
pub const MAX_FAULT_DELAY_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub metadata: ObjectMeta,
    pub spec: RouteSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The Service (same namespace) whose traffic this route governs: connections to its VIPs
    /// go where the rules say instead of to its own endpoints. At most one Route per Service.
    pub service: String,
    /// Tried in order; the first that matches wins. A request no rule matches goes to the host
    /// service's own endpoints, as if there were no route.
    pub rules: Vec<RouteRule>,
    /// Default for every rule without its own `timeoutMs`. On HTTP ports: the whole request,
    /// all tries included (omitted: MeshConfig `requestTimeoutMs`). On TCP ports: the connect
    /// timeout (omitted: MeshConfig `connectTimeoutMs`). 1 ms to 1 day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Default for every rule without its own `retries` (omitted: MeshConfig
    /// `defaultRetryAttempts` with the default `retryOn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Shown in metrics and access logs. Lowercase letters, digits and '-' (a DNS-1123
    /// label), unique within the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `match:` in YAML. Omitted (or `{}`): the rule matches every request and connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RouteMatch>,
    pub backends: Vec<Backend>,
    /// Overrides the route's `timeoutMs` for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Overrides the route's `retries` for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Delays or fails a share of the requests this rule takes, before they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Header changes on the requests this rule takes and on their responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderRules>,
}

/// HTTP conditions, all of which must hold. Only HTTP ports can evaluate them: on a TCP port a
/// rule with any condition never matches (see [`Route::tcp_rule`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The request method, compared exactly (methods are case-sensitive: `GET`, not `get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request path as sent, without the query and without percent-decoding: `{exact:
    /// /x}`, `{prefix: /api}` (a plain string prefix: it also matches `/apis`) or `{regex:
    /// "^/v[0-9]+/"}` (found anywhere in the path unless anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// `pathPrefix: /api` is shorthand for `path: {prefix: /api}` (older files use it);
    /// setting both is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Request headers by lowercase name; the first value of a header is compared. A plain
    /// string is an exact match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters by name, compared after percent-decoding (and `+` as a space); the
    /// first occurrence of a parameter counts, and one without `=` has the empty value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// A Service in the route's namespace. May be the host service itself (its own
    /// endpoints, e.g. the stable share of a canary split).
    pub service: String,
    /// One of the backend Service's `subsets`: only its endpoints with the subset's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative share of the rule's traffic, 0..=1000. 0 takes the backend out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A port of the backend Service. Omitted: the port the client dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try, 0..=10, each on another endpoint where there is one.
    pub attempts: u32,
    /// Bound on each try (1 ms to 1 day); the request's `timeoutMs` still bounds them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Which failures are retried. Omitted: `[connect-failure, reset, gateway-error]`
    /// ([`RetryOn::DEFAULT`]), which is filled in when the file is read.
    #[serde(
        default = "RetryOn::default_list",
        skip_serializing_if = "RetryOn::is_default_list"
    )]
    pub retry_on: Vec<RetryOn>,
    /// Response codes retried by `retriable-status-codes` (100..=599); required with it and
    /// refused without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
}

/// A failure `retries` may retry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// No connection to the endpoint (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection was reset before a response began.
    Reset,
    /// A 502, 503 or 504 response.
    GatewayError,
    /// Any 5xx response, or a reset before a response began.
    #[serde(rename = "5xx")]
    FiveXx,
    /// A response whose status is in `retriableStatusCodes`.
    RetriableStatusCodes,
    /// gRPC status UNAVAILABLE.
    Unavailable,
    /// gRPC status CANCELLED.
    Cancelled,
    /// gRPC status RESOURCE_EXHAUSTED.
    ResourceExhausted,
}

impl RetryOn {
    /// What `retryOn` means when omitted.
    pub const DEFAULT: [RetryOn; 3] = [
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ];

    fn default_list() -> Vec<RetryOn> {
        RetryOn::DEFAULT.to_vec()
    }

    fn is_default_list(list: &[RetryOn]) -> bool {
        list == RetryOn::DEFAULT
    }

    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::FiveXx => "5xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Unavailable => "unavailable",
            RetryOn::Cancelled => "cancelled",
            RetryOn::ResourceExhausted => "resource-exhausted",
        }
    }
}

impl Retries {
    /// `attempts` retries on the default failures, no per-try timeout.
    pub fn new(attempts: u32) -> Retries {
        Retries {
            attempts,
            per_try_timeout_ms: None,
            retry_on: RetryOn::default_list(),
            retriable_status_codes: Vec::new(),
        }
    }
}

/// Fault injection: at least one of `delay` and `abort`. A request can get both: the delay,
/// then the abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long to hold the request before sending it on: 1 ms to 1 hour.
    pub ms: u64,
    /// Share of requests delayed; omitted: 100.
    #[serde(default = "Percent::hundred")]
    pub percent: Percent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status the proxy answers with instead of sending the request: 200..=599.
    pub status: u16,
    /// Share of requests aborted; omitted: 100.
    #[serde(default = "Percent::hundred")]
    pub percent: Percent,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderRules {
    /// Applied to the request before it is sent to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOps>,
    /// Applied to the response before it goes back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOps>,
}

/// Header changes. Names are lowercase, and each name appears in at most one of `set`, `add`
/// and `remove`, so the order they are applied in does not matter. Pseudo-headers and the
/// headers that frame or route the connection (`connection`, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, `te`, `upgrade`, `content-length`) cannot be
/// changed; `host` can.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace every value of the header with this one (add it when absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a value, keeping the ones already there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Drop every value of these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl Backend {
    /// All of `service` (no subset), weight 1, on the client's port.
    pub fn new(service: impl Into<String>) -> Backend {
        Backend {
            service: service.into(),
            subset: None,
            weight: default_weight(),
            port: None,
        }
    }

    /// The backend service port to use for a client that dialled `dialled_port`.
    pub fn port_for(&self, dialled_port: u16) -> u16 {
        self.port.unwrap_or(dialled_port)
    }
}

impl RouteMatch {
    /// Whether this match has any condition, i.e. needs an HTTP request to evaluate.
    pub fn is_http(&self) -> bool {
        self.method.is_some()
            || self.path_condition().is_some()
            || !self.headers.is_empty()
            || !self.query_params.is_empty()
    }

    /// The path condition in force: `path`, or `pathPrefix` as a prefix match. (Validation
    /// refuses both at once; `path` wins if code builds such a match anyway.)
    pub fn path_condition(&self) -> Option<PathMatch> {
        self.path
            .clone()
            .or_else(|| self.path_prefix.clone().map(PathMatch::Prefix))
    }
}

impl RouteRule {
    /// A rule that takes everything to `backends`, with nothing else set.
    pub fn new(backends: Vec<Backend>) -> RouteRule {
        RouteRule {
            name: None,
            r#match: None,
            backends,
            timeout_ms: None,
            retries: None,
            fault: None,
            headers: None,
        }
    }

    /// Whether this rule has any HTTP condition (method, path, headers, query); a rule
    /// without one takes every request and every TCP connection.
    pub fn is_http(&self) -> bool {
        self.r#match.as_ref().is_some_and(RouteMatch::is_http)
    }

    /// Sum of the backend weights; never 0 for a valid rule.
    pub fn total_weight(&self) -> u32 {
        self.backends.iter().map(|b| b.weight).sum()
    }
}

impl RouteSpec {
    /// The timeout for requests `rule` takes: its own, else the route's (else none here:
    /// the caller falls back to the MeshConfig).
    pub fn timeout_ms_for(&self, rule: &RouteRule) -> Option<u64> {
        rule.timeout_ms.or(self.timeout_ms)
    }

    /// The retry policy for requests `rule` takes: its own, else the route's.
    pub fn retries_for<'a>(&'a self, rule: &'a RouteRule) -> Option<&'a Retries> {
        rule.retries.as_ref().or(self.retries.as_ref())
    }
}

impl Route {
    /// True if any rule has an HTTP condition, i.e. the proxy must parse HTTP to route.
    pub fn needs_http(&self) -> bool {
        self.spec.rules.iter().any(RouteRule::is_http)
    }

    /// The rule for an opaque TCP connection: the first without HTTP conditions, or `None`.
    pub fn tcp_rule(&self) -> Option<&RouteRule> {
        self.spec.rules.iter().find(|r| !r.is_http())
    }
}

impl Kind for Route {
    const KIND: &'static str = "Route";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check::check_route(c, self);
    }
}
