//! Whether a rule matches a connection or an HTTP request. Request values (paths, hosts,
//! headers, claims) are untrusted: matching compares bytes and never slices text at an
//! unchecked position.

use std::borrow::Cow;
use std::cell::OnceCell;

use super::conditions::{any_claim_text, claim, Attribute};
use super::{normalize_path, AuthorizationPolicy, AuthzAction, AuthzRule, Condition, Operation};
use super::{Peer, Source};
use crate::cidr::Cidr;
use crate::jwt::Authenticated;
use crate::route::RequestAttributes;

/// What request-level policy sees of one HTTP request (see
/// [`crate::Snapshot::authorize_request`]).
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    /// Method, path (as sent, without the query) and headers.
    pub attributes: &'a dyn RequestAttributes,
    /// The authority the request names (`:authority`, else `Host`), with its port if sent.
    pub host: &'a str,
    /// The request's JWT, verified (see [`crate::Snapshot::authenticate_request`]); `None`
    /// when it carried none.
    pub auth: Option<&'a Authenticated>,
}

/// One connection or request being judged: the peer, the workload port, and the request
/// if judged per request. The normalised path is computed once, when a rule first needs it.
pub(crate) struct Subject<'a> {
    peer: &'a Peer<'a>,
    port: u16,
    http: Option<&'a HttpRequest<'a>>,
    path: OnceCell<Cow<'a, str>>,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(peer: &'a Peer<'a>, port: u16, http: Option<&'a HttpRequest<'a>>) -> Self {
        Subject {
            peer,
            port,
            http,
            path: OnceCell::new(),
        }
    }

    /// The request's normalised path; empty without a request.
    fn path(&self) -> &str {
        match self.http {
            Some(http) => self
                .path
                .get_or_init(|| normalize_path(http.attributes.path())),
            None => "",
        }
    }
}

impl AuthorizationPolicy {
    /// Whether any rule matches a connection from `peer` to workload port `port`, judged
    /// without HTTP (a TCP port): conditions on the request hold in a DENY policy and fail
    /// otherwise (see [`AuthzRule`]). Says nothing about whether the policy applies to the
    /// destination workload: see [`AuthorizationPolicy::applies_to`].
    pub fn matches(&self, peer: &Peer<'_>, port: u16) -> bool {
        self.matches_request(peer, port, None)
    }

    /// Whether any rule matches `request` (or, when `None`, the connection as in
    /// [`AuthorizationPolicy::matches`]).
    pub fn matches_request(
        &self,
        peer: &Peer<'_>,
        port: u16,
        request: Option<&HttpRequest<'_>>,
    ) -> bool {
        self.matches_subject(&Subject::new(peer, port, request))
    }

    pub(crate) fn matches_subject(&self, subject: &Subject<'_>) -> bool {
        let action = self.spec.action;
        self.spec.rules.iter().any(|r| r.matches(subject, action))
    }
}

impl AuthzRule {
    fn matches(&self, s: &Subject<'_>, action: AuthzAction) -> bool {
        // What an HTTP condition is worth on a connection without HTTP.
        let without_http = action == AuthzAction::Deny;
        self.from
            .as_ref()
            .is_none_or(|f| f.matches(s, without_http))
            && self.to.as_ref().is_none_or(|t| t.matches(s, without_http))
            && self.when.iter().all(|c| c.holds(s, without_http))
    }
}

fn request_principal<'r>(http: &HttpRequest<'r>) -> Option<&'r str> {
    http.auth.map(|a| a.principal())
}

/// A positive list holds if empty or matched; a negative one if empty or not matched.
fn list_holds(list: &[impl Sized], negative: bool, matched: impl FnOnce() -> bool) -> bool {
    list.is_empty() || matched() != negative
}

/// [`list_holds`] for a list about the HTTP request: without one, it is `without_http`.
fn http_list_holds<'a>(
    s: &Subject<'a>,
    list: &[String],
    negative: bool,
    without_http: bool,
    matched: impl FnOnce(&HttpRequest<'a>) -> bool,
) -> bool {
    if list.is_empty() {
        return true;
    }
    match s.http {
        Some(http) => matched(http) != negative,
        None => without_http,
    }
}

impl Source {
    fn matches(&self, s: &Subject<'_>, without_http: bool) -> bool {
        let peer = s.peer;
        let ns = peer.namespace();
        let in_blocks = |blocks: &[Cidr]| blocks.iter().any(|b| b.contains(peer.ip));
        list_holds(&self.principals, false, || {
            any_pattern(&self.principals, peer.principal)
        }) && list_holds(&self.namespaces, false, || {
            any_pattern(&self.namespaces, ns)
        }) && list_holds(&self.ip_blocks, false, || in_blocks(&self.ip_blocks))
            && list_holds(&self.not_principals, true, || {
                any_pattern(&self.not_principals, peer.principal)
            })
            && list_holds(&self.not_namespaces, true, || {
                any_pattern(&self.not_namespaces, ns)
            })
            && list_holds(&self.not_ip_blocks, true, || in_blocks(&self.not_ip_blocks))
            && http_list_holds(s, &self.request_principals, false, without_http, |h| {
                any_pattern(&self.request_principals, request_principal(h))
            })
            && http_list_holds(s, &self.not_request_principals, true, without_http, |h| {
                any_pattern(&self.not_request_principals, request_principal(h))
            })
    }
}

impl Operation {
    fn matches(&self, s: &Subject<'_>, without_http: bool) -> bool {
        let hosts = |patterns: &[String], http: &HttpRequest<'_>| {
            patterns.iter().any(|p| host_matches(p, http.host))
        };
        let methods = |patterns: &[String], h: &HttpRequest<'_>| {
            any_pattern(patterns, Some(h.attributes.method()))
        };
        let paths =
            |patterns: &[String], _: &HttpRequest<'_>| any_pattern(patterns, Some(s.path()));
        (self.ports.is_empty() || self.ports.contains(&s.port))
            && http_list_holds(s, &self.hosts, false, without_http, |h| {
                hosts(&self.hosts, h)
            })
            && http_list_holds(s, &self.not_hosts, true, without_http, |h| {
                hosts(&self.not_hosts, h)
            })
            && http_list_holds(s, &self.methods, false, without_http, |h| {
                methods(&self.methods, h)
            })
            && http_list_holds(s, &self.not_methods, true, without_http, |h| {
                methods(&self.not_methods, h)
            })
            && http_list_holds(s, &self.paths, false, without_http, |h| {
                paths(&self.paths, h)
            })
            && http_list_holds(s, &self.not_paths, true, without_http, |h| {
                paths(&self.not_paths, h)
            })
    }
}

impl Condition {
    fn holds(&self, s: &Subject<'_>, without_http: bool) -> bool {
        if self.key.needs_http() && s.http.is_none() {
            return without_http;
        }
        let attribute = self.key.attribute();
        let matched = |value: &String| value_matches(attribute, s, value);
        (self.values.is_empty() || self.values.iter().any(matched))
            && !self.not_values.iter().any(matched)
    }
}

/// Whether the attribute's value in `s` matches one configured `value`. An attribute the
/// subject lacks matches nothing.
fn value_matches(attribute: &Attribute, s: &Subject<'_>, value: &str) -> bool {
    let auth = s.http.and_then(|h| h.auth);
    let claim_matches = |found: Option<&serde_json::Value>| {
        found.is_some_and(|v| any_claim_text(v, &mut |text| pattern_matches(value, text, false)))
    };
    match attribute {
        Attribute::RequestHeader(name) => {
            let header = s.http.and_then(|h| h.attributes.header(name));
            header.is_some_and(|h| pattern_matches(value, h, false))
        }
        Attribute::Claim(path) => claim_matches(auth.and_then(|a| claim(a.claims(), path))),
        Attribute::RequestPrincipal => {
            auth.is_some_and(|a| pattern_matches(value, a.principal(), false))
        }
        Attribute::RequestAudiences => claim_matches(auth.and_then(|a| a.claims().get("aud"))),
        Attribute::RequestPresenter => claim_matches(auth.and_then(|a| a.claims().get("azp"))),
        Attribute::SourcePrincipal => s
            .peer
            .principal
            .is_some_and(|p| pattern_matches(value, p, false)),
        Attribute::SourceNamespace => s
            .peer
            .namespace()
            .is_some_and(|ns| pattern_matches(value, ns, false)),
        Attribute::SourceIp => value
            .parse::<Cidr>()
            .is_ok_and(|block| block.contains(s.peer.ip)),
        Attribute::DestinationPort => value.parse::<u16>().is_ok_and(|p| p == s.port),
    }
}

/// `*` matches any value; `*suffix`, `prefix*` and exact strings match as they read.
/// Compares bytes, optionally ignoring ASCII case.
pub(crate) fn pattern_matches(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let eq = |a: &[u8], b: &[u8]| {
        if ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    if pattern == "*" {
        true
    } else if let Some(suffix) = p.strip_prefix(b"*") {
        v.len() >= suffix.len() && eq(&v[v.len() - suffix.len()..], suffix)
    } else if let Some(prefix) = p.strip_suffix(b"*") {
        v.get(..prefix.len()).is_some_and(|start| eq(start, prefix))
    } else {
        eq(p, v)
    }
}

fn any_pattern(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, v, false)))
}

/// Hosts compare without ASCII case; a pattern also matches the authority without its port.
fn host_matches(pattern: &str, authority: &str) -> bool {
    pattern_matches(pattern, authority, true)
        || without_port(authority).is_some_and(|host| pattern_matches(pattern, host, true))
}

/// `web:8080` -> `web`, `[fd00::1]:8080` -> `[fd00::1]`; `None` when there is no port.
fn without_port(authority: &str) -> Option<&str> {
    let (host, port) = authority.rsplit_once(':')?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    (port_ok && (bracketed || !host.contains(':'))).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "spiffe://x/ns/a/sa/b", false));
        assert!(pattern_matches(
            "spiffe://x/ns/a/*",
            "spiffe://x/ns/a/sa/b",
            false
        ));
        assert!(!pattern_matches(
            "spiffe://x/ns/a/*",
            "spiffe://x/ns/ab/sa/b",
            false
        ));
        assert!(pattern_matches("*/sa/b", "spiffe://x/ns/a/sa/b", false));
        assert!(pattern_matches("prod-*", "prod-eu", false));
        assert!(!pattern_matches("prod", "prod-eu", false));
        assert!(!pattern_matches("Prod-*", "prod-eu", false));
        assert!(pattern_matches("Prod-*", "prod-eu", true));
        assert!(pattern_matches("*.EXAMPLE.com", "api.example.COM", true));
        // Multi-byte text never makes a comparison slice inside a character.
        assert!(!pattern_matches("*é", "e", false));
        assert!(!pattern_matches("é*", "e", false));
        assert!(pattern_matches("*é", "café", false));
    }

    #[test]
    fn hosts_match_with_or_without_the_port() {
        assert!(host_matches("web.default", "web.default:8080"));
        assert!(host_matches("WEB.default", "web.default"));
        assert!(host_matches("web.default:8080", "web.default:8080"));
        assert!(!host_matches("web.default:9090", "web.default:8080"));
        assert!(host_matches("*.default", "web.default:80"));
        assert!(host_matches("[fd00::1]", "[fd00::1]:80"));
        assert!(!host_matches("fd00:", "fd00::1"));
        assert_eq!(without_port("a:"), None);
        assert_eq!(without_port("a:b"), None);
        assert_eq!(without_port("fd00::1"), None);
        assert_eq!(without_port(""), None);
    }
}
