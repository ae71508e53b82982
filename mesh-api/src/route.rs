//! `kind: Route`: a traffic rule for one host Service. Rules are tried in order and the first
//! that matches sends the request to one of its weighted backend Services.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::resource::Kind;
use crate::validate::{check_http_path, check_meta, check_port, check_positive, check_ref};
use crate::validate::{map_field, Checker};

/// Largest backend weight; weights are relative within a rule.
pub const MAX_WEIGHT: u32 = 1000;
/// Most retries a route may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

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
    /// Whole-request (HTTP) or connect (TCP) timeout. Omitted: the mesh-wide connect timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// `match:` in YAML. Omitted (or `{}`): the rule matches every request and connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RouteMatch>,
    pub backends: Vec<Backend>,
}

/// HTTP conditions, all of which must hold. Only HTTP ports can evaluate them: on a TCP port a
/// rule with any condition never matches (see [`Route::tcp_rule`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Plain string prefix of the request path (no query), e.g. `/api` also matches
    /// `/apis`. Must start with '/'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact header values. Names are lowercase; look them up case-insensitively.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// A Service in the route's namespace. May be the host service itself (its own
    /// endpoints, e.g. the stable share of a canary split).
    pub service: String,
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
    /// Retries after the first try, 0..=10; only for failures before any response byte.
    pub attempts: u32,
}

impl Backend {
    /// The backend service port to use for a client that dialled `dialled_port`.
    pub fn port_for(&self, dialled_port: u16) -> u16 {
        self.port.unwrap_or(dialled_port)
    }
}

impl RouteMatch {
    /// Whether this match needs HTTP to evaluate (has a path prefix or headers).
    pub fn is_http(&self) -> bool {
        self.path_prefix.is_some() || !self.headers.is_empty()
    }

    /// Whether a request with this path (without the query) matches. `header` returns a
    /// request header's value by lowercase name (case-insensitive lookup, as `http::HeaderMap`
    /// does); a header the request lacks fails the match.
    pub fn matches<'h>(&self, path: &str, header: impl Fn(&str) -> Option<&'h str>) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
            && self
                .headers
                .iter()
                .all(|(name, value)| header(name) == Some(value.as_str()))
    }
}

impl RouteRule {
    /// Whether this rule needs HTTP to evaluate.
    pub fn is_http(&self) -> bool {
        self.r#match.as_ref().is_some_and(RouteMatch::is_http)
    }

    /// Whether an HTTP request matches this rule; see [`RouteMatch::matches`].
    pub fn matches<'h>(&self, path: &str, header: impl Fn(&str) -> Option<&'h str>) -> bool {
        self.r#match
            .as_ref()
            .is_none_or(|m| m.matches(path, header))
    }

    /// Sum of the backend weights; never 0 for a valid rule.
    pub fn total_weight(&self) -> u32 {
        self.backends.iter().map(|b| b.weight).sum()
    }
}

impl Route {
    /// True if any rule has an HTTP condition, i.e. the proxy must parse HTTP to route.
    pub fn needs_http(&self) -> bool {
        self.spec.rules.iter().any(RouteRule::is_http)
    }

    /// The first rule an HTTP request matches, or `None` (use the host service as is).
    pub fn http_rule<'h>(
        &self,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str> + Copy,
    ) -> Option<&RouteRule> {
        self.spec.rules.iter().find(|r| r.matches(path, header))
    }

    /// The rule for an opaque TCP connection: the first without HTTP conditions, or `None`.
    pub fn tcp_rule(&self) -> Option<&RouteRule> {
        self.spec.rules.iter().find(|r| !r.is_http())
    }
}

/// RFC 9110 token characters, minus uppercase (names are stored lowercase).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Header values as sent on the wire: visible ASCII, spaces and tabs, no surrounding blanks
/// (which HTTP strips, so they could never match).
fn is_header_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
        && s.trim_matches([' ', '\t']).len() == s.len()
}

impl Kind for Route {
    const KIND: &'static str = "Route";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;
        check_ref(c, "spec.service", &spec.service);

        if spec.rules.is_empty() {
            c.fail("spec.rules", "at least one rule is required");
        }
        let mut catch_all: Option<usize> = None;
        for (i, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if let Some(j) = catch_all {
                c.fail(
                    &field,
                    format!("unreachable: spec.rules[{j}] has no match and takes every request"),
                );
            } else if rule.r#match.as_ref().is_none_or(|m| !m.is_http()) {
                catch_all = Some(i);
            }
            if let Some(m) = &rule.r#match {
                check_match(c, &format!("{field}.match"), m);
            }
            check_backends(c, &field, &rule.backends);
        }

        if let Some(t) = spec.timeout_ms {
            check_positive(c, "spec.timeoutMs", t);
        }
        if let Some(r) = &spec.retries {
            if r.attempts > MAX_RETRY_ATTEMPTS {
                c.fail(
                    "spec.retries.attempts",
                    format!("must be at most {MAX_RETRY_ATTEMPTS}, got {}", r.attempts),
                );
            }
        }
    }
}

fn check_match(c: &mut Checker<'_>, field: &str, m: &RouteMatch) {
    if let Some(prefix) = &m.path_prefix {
        let field = format!("{field}.pathPrefix");
        check_http_path(c, &field, prefix);
        if prefix.contains(['?', '#']) {
            c.fail(
                &field,
                format!("{prefix:?} must not contain '?' or '#' (it matches the path only)"),
            );
        }
    }
    let headers = format!("{field}.headers");
    for (name, value) in &m.headers {
        if !is_header_name(name) {
            c.fail(
                map_field(&headers, name),
                format!(
                    "{name:?} is not a lowercase header name (letters a-z, digits and \
                     !#$%&'*+-.^_`|~)"
                ),
            );
        } else if !is_header_value(value) {
            c.fail(
                map_field(&headers, name),
                format!(
                    "value {value:?} must be visible ASCII, spaces and tabs, without \
                     leading or trailing blanks"
                ),
            );
        }
    }
}

fn check_backends(c: &mut Checker<'_>, rule: &str, backends: &[Backend]) {
    if backends.is_empty() {
        c.fail(
            format!("{rule}.backends"),
            "at least one backend is required",
        );
        return;
    }
    let mut seen: HashMap<(&str, Option<u16>), usize> = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let field = format!("{rule}.backends[{i}]");
        check_ref(c, &format!("{field}.service"), &b.service);
        if b.weight > MAX_WEIGHT {
            c.fail(
                format!("{field}.weight"),
                format!("must be at most {MAX_WEIGHT}, got {}", b.weight),
            );
        }
        if let Some(port) = b.port {
            check_port(c, &format!("{field}.port"), port);
        }
        if let Some(j) = seen.insert((&b.service, b.port), i) {
            c.fail(
                &field,
                format!(
                    "duplicate backend {:?} (also {rule}.backends[{j}]); merge their weights",
                    b.service
                ),
            );
        }
    }
    if backends.iter().all(|b| b.weight == 0) {
        c.fail(
            format!("{rule}.backends"),
            "every weight is 0; at least one backend must take traffic",
        );
    }
}
