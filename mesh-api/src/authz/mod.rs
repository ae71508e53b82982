//! `kind: AuthorizationPolicy`: who may connect to which workloads. Evaluated by the inbound
//! proxy of the destination workload; see [`crate::Snapshot::authorize`] for how policies
//! combine.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::meta::{Labels, ObjectMeta};
use crate::resource::Kind;
use crate::validate::{check_meta, check_port, check_selector, selector_matches, Checker};
use crate::workload::Workload;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads (by `spec.labels`) the policy applies to. Omitted: every workload in the
    /// policy's namespace, or in the whole mesh for a policy in the root namespace
    /// (`MeshConfig` `spec.rootNamespace`). A selector in the root namespace selects
    /// matching workloads in every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Labels>,
    pub action: AuthzAction,
    /// The policy matches a connection when any rule does. No rules: it matches nothing, so
    /// an ALLOW policy without rules denies everything it applies to.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// `ALLOW`, `DENY` or `AUDIT` (uppercase, as in Istio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    Allow,
    Deny,
    /// Only records that the connection matched; never changes the decision.
    Audit,
}

/// One rule: the connection must satisfy both `from` and `to` (an omitted one always holds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Operation>,
}

/// Conditions on the peer. Each non-empty list must hold (they are ANDed); within a list any
/// entry may match (ORed). A `not*` list holds when no entry matches.
///
/// Principals and namespaces need the peer's mTLS identity: a plaintext peer never matches a
/// `principals` or `namespaces` entry, and always satisfies `notPrincipals`/`notNamespaces`
/// (so `DENY` with `notPrincipals: ["*"]` refuses plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// SPIFFE IDs: exact, `*` (any identity), or one `*` at the start or end, e.g.
    /// `spiffe://cluster.local/ns/default/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Namespaces of the peer identity: exact, or one `*` at the start or end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Peer IP (IPv4 or IPv6 CIDR, or a bare address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<Cidr>,
}

/// Conditions on what the peer connects to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Destination (workload) ports; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Who is connecting, as the inbound proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    /// The verified SPIFFE ID of an mTLS peer; `None` for plaintext.
    pub principal: Option<&'a str>,
    pub ip: IpAddr,
}

impl<'a> Peer<'a> {
    /// The namespace in the peer's SPIFFE ID (`spiffe://<td>/ns/<namespace>/sa/<sa>`), if it
    /// has one.
    pub fn namespace(&self) -> Option<&'a str> {
        let path = self.principal?.strip_prefix("spiffe://")?;
        let (_trust_domain, path) = path.split_once('/')?;
        let mut parts = path.split('/');
        match [(); 5].map(|()| parts.next()) {
            [Some("ns"), Some(ns), Some("sa"), Some(_), None] if !ns.is_empty() => Some(ns),
            _ => None,
        }
    }
}

/// `*` matches any value; `*suffix`, `prefix*` and exact strings match as they read.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

fn any_pattern(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, v)))
}

/// A positive list holds if empty or matched; a negative one if empty or not matched.
fn holds(list_is_empty: bool, matched: impl FnOnce() -> bool, negative: bool) -> bool {
    list_is_empty || matched() != negative
}

impl Source {
    pub fn matches(&self, peer: &Peer<'_>) -> bool {
        let ns = peer.namespace();
        let ip = peer.ip;
        let in_blocks = |blocks: &[Cidr]| blocks.iter().any(|b| b.contains(ip));
        holds(
            self.principals.is_empty(),
            || any_pattern(&self.principals, peer.principal),
            false,
        ) && holds(
            self.namespaces.is_empty(),
            || any_pattern(&self.namespaces, ns),
            false,
        ) && holds(
            self.ip_blocks.is_empty(),
            || in_blocks(&self.ip_blocks),
            false,
        ) && holds(
            self.not_principals.is_empty(),
            || any_pattern(&self.not_principals, peer.principal),
            true,
        ) && holds(
            self.not_namespaces.is_empty(),
            || any_pattern(&self.not_namespaces, ns),
            true,
        ) && holds(
            self.not_ip_blocks.is_empty(),
            || in_blocks(&self.not_ip_blocks),
            true,
        )
    }
}

impl Operation {
    pub fn matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

impl AuthzRule {
    /// Whether a connection from `peer` to workload port `port` satisfies this rule.
    pub fn matches(&self, peer: &Peer<'_>, port: u16) -> bool {
        self.from.as_ref().is_none_or(|f| f.matches(peer))
            && self.to.as_ref().is_none_or(|t| t.matches(port))
    }
}

impl AuthorizationPolicy {
    /// Whether any rule matches. Says nothing about whether the policy applies to the
    /// destination workload: see [`AuthorizationPolicy::applies_to`].
    pub fn matches(&self, peer: &Peer<'_>, port: u16) -> bool {
        self.spec.rules.iter().any(|r| r.matches(peer, port))
    }

    /// Whether the policy governs connections to `workload`, given the mesh's root namespace.
    pub fn applies_to(&self, workload: &Workload, root_namespace: &str) -> bool {
        let ns = &self.metadata.namespace;
        (*ns == workload.metadata.namespace || *ns == root_namespace)
            && self
                .spec
                .selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &workload.spec.labels))
    }
}

/// Why a principal (`spiffe`) or namespace pattern is malformed.
fn pattern_problem(pattern: &str, spiffe: bool) -> Option<String> {
    if pattern.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("{pattern:?} must not contain whitespace"));
    }
    let stars = pattern.matches('*').count();
    let star_ok =
        stars == 0 || (stars == 1 && (pattern.starts_with('*') || pattern.ends_with('*')));
    if !star_ok {
        return Some(format!(
            "{pattern:?} may have one '*', only at the start or the end"
        ));
    }
    if spiffe && !pattern.starts_with('*') && !pattern.starts_with("spiffe://") {
        return Some(format!(
            "{pattern:?} must be a SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<account>), optionally with '*' at the start or end"
        ));
    }
    if !spiffe
        && !pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
    {
        return Some(format!(
            "{pattern:?} must be a namespace name (lowercase letters, digits and '-'), optionally with '*' at the start or end"
        ));
    }
    None
}

fn check_patterns(c: &mut Checker<'_>, field: &str, patterns: &[String], spiffe: bool) {
    for (i, p) in patterns.iter().enumerate() {
        if let Some(problem) = pattern_problem(p, spiffe) {
            c.fail(format!("{field}[{i}]"), problem);
        }
    }
}

impl Kind for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;
        check_selector(c, "spec.selector", spec.selector.as_ref());
        for (i, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if let Some(from) = &rule.from {
                let f = format!("{field}.from");
                check_patterns(c, &format!("{f}.principals"), &from.principals, true);
                check_patterns(c, &format!("{f}.notPrincipals"), &from.not_principals, true);
                check_patterns(c, &format!("{f}.namespaces"), &from.namespaces, false);
                check_patterns(
                    c,
                    &format!("{f}.notNamespaces"),
                    &from.not_namespaces,
                    false,
                );
            }
            if let Some(to) = &rule.to {
                for (j, &port) in to.ports.iter().enumerate() {
                    check_port(c, &format!("{field}.to.ports[{j}]"), port);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(principal: Option<&str>, ip: &str) -> Peer<'static> {
        Peer {
            principal: principal.map(|p| Box::leak(p.to_owned().into_boxed_str()) as &str),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "spiffe://x/ns/a/sa/b"));
        assert!(pattern_matches("spiffe://x/ns/a/*", "spiffe://x/ns/a/sa/b"));
        assert!(!pattern_matches(
            "spiffe://x/ns/a/*",
            "spiffe://x/ns/ab/sa/b"
        ));
        assert!(pattern_matches("*/sa/b", "spiffe://x/ns/a/sa/b"));
        assert!(pattern_matches("prod-*", "prod-eu"));
        assert!(!pattern_matches("prod", "prod-eu"));
        assert_eq!(pattern_problem("*", true), None);
        assert_eq!(pattern_problem("spiffe://td/ns/a/*", true), None);
        assert_eq!(pattern_problem("*/sa/frontend", true), None);
        assert!(pattern_problem("spiffe://td/*/sa/*", true).is_some());
        assert!(pattern_problem("spiffe://td/*/sa/x", true).is_some());
        assert!(pattern_problem("**", true).is_some());
        assert!(pattern_problem("td/ns/a/sa/b", true).is_some());
        assert_eq!(pattern_problem("prod-*", false), None);
        assert!(pattern_problem("Prod", false).is_some());
    }

    #[test]
    fn peer_namespace_comes_from_the_spiffe_id() {
        let ns = |p: &str| peer(Some(p), "10.0.0.1").namespace();
        assert_eq!(
            ns("spiffe://cluster.local/ns/default/sa/web"),
            Some("default")
        );
        assert_eq!(ns("spiffe://cluster.local/ns//sa/web"), None);
        assert_eq!(ns("spiffe://cluster.local/ns/a/sa/web/extra"), None);
        assert_eq!(ns("spiffe://cluster.local/x/a/sa/web"), None);
        assert_eq!(ns("https://cluster.local/ns/a/sa/web"), None);
        assert_eq!(peer(None, "10.0.0.1").namespace(), None);
    }

    #[test]
    fn source_lists_and_across_kinds_or_within() {
        let src = Source {
            principals: vec![
                "spiffe://td/ns/default/sa/frontend".into(),
                "spiffe://td/ns/admin/*".into(),
            ],
            ip_blocks: vec!["10.0.0.0/8".parse().unwrap()],
            not_ip_blocks: vec!["10.9.0.0/16".parse().unwrap()],
            ..Source::default()
        };
        assert!(src.matches(&peer(
            Some("spiffe://td/ns/default/sa/frontend"),
            "10.1.0.1"
        )));
        assert!(src.matches(&peer(Some("spiffe://td/ns/admin/sa/ops"), "10.1.0.1")));
        assert!(!src.matches(&peer(Some("spiffe://td/ns/default/sa/other"), "10.1.0.1")));
        assert!(!src.matches(&peer(
            Some("spiffe://td/ns/default/sa/frontend"),
            "11.0.0.1"
        )));
        assert!(!src.matches(&peer(
            Some("spiffe://td/ns/default/sa/frontend"),
            "10.9.0.1"
        )));
        assert!(!src.matches(&peer(None, "10.1.0.1")));
        assert!(Source::default().matches(&peer(None, "10.1.0.1")));
    }

    #[test]
    fn plaintext_peers_satisfy_negative_identity_lists() {
        let not_any = Source {
            not_principals: vec!["*".into()],
            ..Source::default()
        };
        assert!(not_any.matches(&peer(None, "10.0.0.1")));
        assert!(!not_any.matches(&peer(Some("spiffe://td/ns/a/sa/b"), "10.0.0.1")));
        let ns = Source {
            namespaces: vec!["prod-*".into()],
            not_namespaces: vec!["prod-eu".into()],
            ..Source::default()
        };
        assert!(ns.matches(&peer(Some("spiffe://td/ns/prod-us/sa/b"), "10.0.0.1")));
        assert!(!ns.matches(&peer(Some("spiffe://td/ns/prod-eu/sa/b"), "10.0.0.1")));
        assert!(!ns.matches(&peer(None, "10.0.0.1")));
    }

    #[test]
    fn rules_need_from_and_to() {
        let rule = AuthzRule {
            from: Some(Source {
                namespaces: vec!["default".into()],
                ..Source::default()
            }),
            to: Some(Operation { ports: vec![8080] }),
        };
        let p = peer(Some("spiffe://td/ns/default/sa/x"), "10.0.0.1");
        assert!(rule.matches(&p, 8080));
        assert!(!rule.matches(&p, 9090));
        assert!(AuthzRule::default().matches(&p, 1));
    }
}
