//! `kind: AuthorizationPolicy`: who may connect to which workloads, and which HTTP requests
//! they may send. Evaluated by the inbound proxy of the destination workload; see
//! [`crate::Snapshot::authorize`] (connections) and [`crate::Snapshot::authorize_request`]
//! (HTTP requests) for how policies combine.
//!
//! The model is here; `matching.rs` evaluates a rule, `conditions.rs` reads and evaluates
//! `when` keys, `path.rs` normalises request paths, `check.rs` validates.

mod check;
mod conditions;
mod matching;
mod path;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::meta::{Labels, ObjectMeta};
use crate::validate::selector_matches;
use crate::workload::Workload;

pub use conditions::ConditionKey;
pub(crate) use conditions::{any_claim_text, claim};
pub use matching::HttpRequest;
pub(crate) use matching::Subject;
pub use path::normalize_path;

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

impl AuthzAction {
    /// As written in a policy: `ALLOW`, `DENY` or `AUDIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
        }
    }
}

/// One rule: the connection (or request) must satisfy `from`, `to` and every `when`
/// condition (an omitted one always holds).
///
/// Some conditions need the HTTP request (see [`AuthzRule::needs_http`]). Judged for a
/// connection without one (a TCP port), they hold in a DENY policy, so it denies more, and
/// fail in ALLOW and AUDIT policies, so they allow less: never less safe than intended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Operation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// Conditions on the peer. Each non-empty list must hold (they are ANDed); within a list any
/// entry may match (ORed). A `not*` list holds when no entry matches.
///
/// Principals and namespaces need the peer's mTLS identity: a plaintext peer never matches a
/// `principals` or `namespaces` entry, and always satisfies `notPrincipals`/`notNamespaces`
/// (so `DENY` with `notPrincipals: ["*"]` refuses plaintext). Request principals likewise
/// need a valid JWT (see `RequestAuthentication`).
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
    /// End users as `<issuer>/<subject>` of their verified JWT, with the same `*` forms.
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

/// Conditions on what the peer connects to, and (HTTP only) what it asks for. Lists combine
/// as in [`Source`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Destination (workload) ports; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The request's authority (`Host` or `:authority`), case-insensitive, with the `*`
    /// forms; an entry without a port also matches the authority with any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Methods, case-sensitive (`GET`), with the `*` forms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request paths without the query: exact (`/api/v1`), `prefix*` (`/api/*`), `*suffix`
    /// (`*.png`) or `*`. Matched against the normalised path (see [`normalize_path`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `when: [{key, values, notValues}]`: holds when the attribute named by `key` matches one
/// of `values` (if given) and none of `notValues`. An attribute the request lacks (a header
/// not sent, no JWT) matches nothing. See [`ConditionKey`] for the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: ConditionKey,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
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

impl AuthzRule {
    /// Whether judging this rule needs the HTTP request: it names methods, paths, hosts,
    /// request principals, or a `when` key on the request.
    pub fn needs_http(&self) -> bool {
        let from = self.from.as_ref().is_some_and(|f| {
            !f.request_principals.is_empty() || !f.not_request_principals.is_empty()
        });
        let to = self.to.as_ref().is_some_and(|t| {
            [
                &t.hosts,
                &t.not_hosts,
                &t.methods,
                &t.not_methods,
                &t.paths,
                &t.not_paths,
            ]
            .iter()
            .any(|list| !list.is_empty())
        });
        from || to || self.when.iter().any(|c| c.key.needs_http())
    }

    /// Whether the rule can match a connection to workload port `port` (its `to.ports`
    /// allow it).
    pub fn covers_port(&self, port: u16) -> bool {
        self.to
            .as_ref()
            .is_none_or(|t| t.ports.is_empty() || t.ports.contains(&port))
    }
}

impl AuthorizationPolicy {
    /// Whether the policy governs connections to `workload`, given the mesh's root namespace.
    pub fn applies_to(&self, workload: &Workload, root_namespace: &str) -> bool {
        in_scope(
            &self.metadata,
            self.spec.selector.as_ref(),
            workload,
            root_namespace,
        )
    }

    /// Whether some rule needs the HTTP request for workload port `port`: then requests on
    /// that port must be judged one by one.
    pub fn needs_http_on(&self, port: u16) -> bool {
        self.spec
            .rules
            .iter()
            .any(|r| r.needs_http() && r.covers_port(port))
    }
}

/// The scope rule of workload policies (AuthorizationPolicy, RequestAuthentication): the
/// policy's namespace, or every namespace for the root one, narrowed by the selector.
pub(crate) fn in_scope(
    policy: &ObjectMeta,
    selector: Option<&Labels>,
    workload: &Workload,
    root_namespace: &str,
) -> bool {
    let ns = &policy.namespace;
    (*ns == workload.metadata.namespace || *ns == root_namespace)
        && selector.is_none_or(|s| selector_matches(s, &workload.spec.labels))
}
