//! Authorization policies and peer authentication in a snapshot: which apply to a workload,
//! and what they decide, for a connection or for one HTTP request.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::{find_sorted, issue, Snapshot};
use crate::authz::{AuthorizationPolicy, AuthzAction, HttpRequest, Peer, Subject};
use crate::error::Issue;
use crate::mesh_config::DefaultPolicy;
use crate::peer_auth::{MtlsMode, PeerAuthentication};
use crate::workload::Workload;

/// The outcome of [`Snapshot::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzDecision<'a> {
    pub allowed: bool,
    pub reason: AuthzReason<'a>,
    /// Some AUDIT policy matched: the connection should be logged as audited.
    pub audit: Option<&'a AuthorizationPolicy>,
}

/// Why [`AuthzDecision::allowed`] is what it is, for logs, metrics and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzReason<'a> {
    /// This DENY policy matched.
    Denied(&'a AuthorizationPolicy),
    /// This ALLOW policy matched.
    Allowed(&'a AuthorizationPolicy),
    /// ALLOW policies apply to the workload, and none matched.
    NoAllowMatched,
    /// No ALLOW policy applies to the workload: the mesh's `defaultPolicy` decided.
    Default(DefaultPolicy),
}

impl Snapshot {
    pub(super) fn index_authorization_policies(&mut self) {
        for (i, p) in self.authorization_policies.iter().enumerate() {
            self.authz_by_namespace
                .entry(p.metadata.namespace.clone())
                .or_default()
                .push(i);
        }
    }

    /// The policies that govern connections to `workload`: those in its namespace and those
    /// in the root namespace (`mesh_config().rootNamespace`) whose selector, if any, matches
    /// its labels. In `(namespace, name)` order.
    pub fn policies_for(&self, workload: &Workload) -> Vec<&AuthorizationPolicy> {
        let root = self.mesh.root_namespace.as_str();
        self.in_scope(workload, &self.authz_by_namespace, |i| {
            self.authorization_policies[i].applies_to(workload, root)
        })
        .into_iter()
        .map(|i| &self.authorization_policies[i])
        .collect()
    }

    /// Indexes (ascending) from `by_namespace` of the workload's namespace and the root
    /// namespace for which `applies` holds: how workload policies of any kind are scoped.
    pub(super) fn in_scope(
        &self,
        workload: &Workload,
        by_namespace: &HashMap<String, Vec<usize>>,
        applies: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let root = self.mesh.root_namespace.as_str();
        let ns = workload.metadata.namespace.as_str();
        let namespaces: &[&str] = if ns == root { &[ns] } else { &[ns, root] };
        let mut found: Vec<usize> = namespaces
            .iter()
            .filter_map(|n| by_namespace.get(*n))
            .flatten()
            .copied()
            .filter(|&i| applies(i))
            .collect();
        found.sort_unstable();
        found
    }

    /// Whether `peer` may connect to `port` (the port the workload listens on) of `workload`:
    ///
    /// 1. any matching DENY policy denies;
    /// 2. otherwise, if ALLOW policies apply, one of them must match;
    /// 3. otherwise the mesh's `defaultPolicy` decides (ALLOW unless configured).
    ///
    /// AUDIT policies never change the outcome; a match is reported in `audit`.
    ///
    /// Judged without HTTP: a rule that needs the request (see
    /// [`crate::AuthzRule::needs_http`]) matches in a DENY policy and not in the others. On
    /// a port where [`Snapshot::needs_request_security`] holds, judge each request with
    /// [`Snapshot::authorize_request`] instead.
    pub fn authorize(&self, workload: &Workload, peer: &Peer<'_>, port: u16) -> AuthzDecision<'_> {
        self.decide(workload, &Subject::new(peer, port, None))
    }

    /// Whether `request`, from `peer` to `port` of `workload`, may pass: the same order as
    /// [`Snapshot::authorize`], with every rule judged on the request (its method, path,
    /// host, headers and verified JWT).
    pub fn authorize_request(
        &self,
        workload: &Workload,
        peer: &Peer<'_>,
        port: u16,
        request: &HttpRequest<'_>,
    ) -> AuthzDecision<'_> {
        self.decide(workload, &Subject::new(peer, port, Some(request)))
    }

    fn decide(&self, workload: &Workload, subject: &Subject<'_>) -> AuthzDecision<'_> {
        let policies = self.policies_for(workload);
        let matching = |action: AuthzAction| {
            policies
                .iter()
                .copied()
                .filter(move |p| p.spec.action == action)
        };
        let audit = matching(AuthzAction::Audit).find(|p| p.matches_subject(subject));
        let decide = |allowed, reason| AuthzDecision {
            allowed,
            reason,
            audit,
        };
        if let Some(p) = matching(AuthzAction::Deny).find(|p| p.matches_subject(subject)) {
            return decide(false, AuthzReason::Denied(p));
        }
        let mut allows = matching(AuthzAction::Allow).peekable();
        if allows.peek().is_none() {
            let default = self.mesh.default_policy;
            return decide(
                default == DefaultPolicy::Allow,
                AuthzReason::Default(default),
            );
        }
        match allows.find(|p| p.matches_subject(subject)) {
            Some(p) => decide(true, AuthzReason::Allowed(p)),
            None => decide(false, AuthzReason::NoAllowMatched),
        }
    }

    pub fn authorization_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&AuthorizationPolicy> {
        find_sorted(&self.authorization_policies, namespace, name)
    }

    /// All authorization policies in `(namespace, name)` order.
    pub fn authorization_policies(
        &self,
    ) -> impl ExactSizeIterator<Item = &AuthorizationPolicy> + DoubleEndedIterator {
        self.authorization_policies.iter()
    }

    /// Indexes peer authentications, refusing two namespace-wide policies in one namespace
    /// and two selector policies that select the same workload.
    pub(super) fn index_peer_authentications(&mut self, issues: &mut Vec<Issue>) {
        for (i, p) in self.peer_authentications.iter().enumerate() {
            let ns = p.metadata.namespace.clone();
            if p.spec.selector.is_some() {
                self.peer_auth_selectors.entry(ns).or_default().push(i);
                continue;
            }
            match self.peer_auth_namespace_wide.entry(ns) {
                Entry::Occupied(e) => issues.push(issue(
                    p,
                    "spec.selector",
                    format!(
                        "PeerAuthentication {} already covers namespace {}; only one policy \
                         per namespace may omit the selector",
                        self.peer_authentications[*e.get()].metadata.key(),
                        e.key()
                    ),
                )),
                Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }

        let mut reported: HashSet<(usize, usize)> = HashSet::new();
        for w in &self.workloads {
            let Some(candidates) = self.peer_auth_selectors.get(&w.metadata.namespace) else {
                continue;
            };
            let mut selecting = candidates
                .iter()
                .copied()
                .filter(|&i| self.peer_authentications[i].selects(w));
            let Some(first) = selecting.next() else {
                continue;
            };
            for other in selecting {
                if reported.insert((first, other)) {
                    let p = &self.peer_authentications[other];
                    issues.push(issue(
                        p,
                        "spec.selector",
                        format!(
                            "selects Workload {}, as does PeerAuthentication {}; a workload \
                             may have only one workload-level policy",
                            w.metadata.key(),
                            self.peer_authentications[first].metadata.key()
                        ),
                    ));
                }
            }
        }
    }

    /// The mTLS mode for inbound traffic to `port` (the port the workload listens on) of
    /// `workload`. The most specific policy wins:
    ///
    /// 1. the `portLevelMtls` entry for `port` of the policy whose selector picks the workload;
    /// 2. that policy's `mode`;
    /// 3. the namespace-wide policy (no selector) of the workload's namespace;
    /// 4. the namespace-wide policy of the root namespace;
    /// 5. the mesh's `defaultMtlsMode` (PERMISSIVE unless configured).
    pub fn mtls_mode_for(&self, workload: &Workload, port: u16) -> MtlsMode {
        let ns = &workload.metadata.namespace;
        let by_selector = self.peer_auth_selectors.get(ns).and_then(|list| {
            list.iter()
                .map(|&i| &self.peer_authentications[i])
                .find(|p| p.selects(workload))
        });
        if let Some(p) = by_selector {
            return p.mode_for_port(port);
        }
        [ns.as_str(), self.mesh.root_namespace.as_str()]
            .iter()
            .find_map(|n| self.peer_auth_namespace_wide.get(*n))
            .map(|&i| self.peer_authentications[i].spec.mode)
            .unwrap_or(self.mesh.default_mtls_mode)
    }

    pub fn peer_authentication(&self, namespace: &str, name: &str) -> Option<&PeerAuthentication> {
        find_sorted(&self.peer_authentications, namespace, name)
    }

    /// All peer authentications in `(namespace, name)` order.
    pub fn peer_authentications(
        &self,
    ) -> impl ExactSizeIterator<Item = &PeerAuthentication> + DoubleEndedIterator {
        self.peer_authentications.iter()
    }
}
