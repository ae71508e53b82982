//! RequestAuthentications in a snapshot (JWT rules compiled once per config), and the
//! request-level questions the inbound HTTP proxy asks of a workload.

use std::collections::HashMap;

use super::{find_sorted, Snapshot};
use crate::jwt::{Authenticated, JwtError, JwtRules};
use crate::request_auth::RequestAuthentication;
use crate::route::RequestAttributes;
use crate::workload::Workload;

#[derive(Debug, Clone, Default)]
pub(super) struct AuthnIndex {
    /// Same order as `Snapshot::request_authentications`: each one's rules, compiled.
    compiled: Vec<JwtRules>,
    /// namespace -> indexes into `Snapshot::request_authentications`, ascending.
    by_namespace: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    pub(super) fn index_request_authentications(&mut self) {
        let mut index = AuthnIndex::default();
        for (i, r) in self.request_authentications.iter().enumerate() {
            index.compiled.push(JwtRules::new(&r.spec.jwt_rules));
            index
                .by_namespace
                .entry(r.metadata.namespace.clone())
                .or_default()
                .push(i);
        }
        self.authn = index;
    }

    /// Indexes of the request authentications that apply to `workload`, ascending.
    fn request_auth_indexes(&self, workload: &Workload) -> Vec<usize> {
        let root = self.mesh.root_namespace.as_str();
        self.in_scope(workload, &self.authn.by_namespace, |i| {
            self.request_authentications[i].applies_to(workload, root)
        })
    }

    /// The RequestAuthentications that apply to `workload` (its namespace's and the root
    /// namespace's whose selector matches), in `(namespace, name)` order.
    pub fn request_authentications_for(&self, workload: &Workload) -> Vec<&RequestAuthentication> {
        self.request_auth_indexes(workload)
            .into_iter()
            .map(|i| &self.request_authentications[i])
            .collect()
    }

    /// All JWT rules that apply to `workload`, compiled (empty when none do). Keep it for
    /// the snapshot's lifetime rather than asking per request.
    pub fn jwt_rules_for(&self, workload: &Workload) -> JwtRules {
        let mut rules = JwtRules::default();
        for i in self.request_auth_indexes(workload) {
            rules.extend(&self.authn.compiled[i]);
        }
        rules
    }

    /// [`JwtRules::authenticate`] with [`Snapshot::jwt_rules_for`]: `Ok(None)` when the
    /// request has no token or no rule applies, `Err` when it must be answered 401.
    pub fn authenticate_request(
        &self,
        workload: &Workload,
        request: &dyn RequestAttributes,
        now: u64,
    ) -> Result<Option<Authenticated>, JwtError> {
        self.jwt_rules_for(workload).authenticate(request, now)
    }

    /// Whether requests to `port` (the port the workload listens on) of `workload` must be
    /// judged one by one: a RequestAuthentication applies to it, or an AuthorizationPolicy
    /// with a rule on that port that needs the request (methods, paths, hosts, request
    /// principals, request `when` keys). When false, the connection-level decision
    /// ([`Snapshot::authorize`]) is exact and the plain L4 path suffices.
    pub fn needs_request_security(&self, workload: &Workload, port: u16) -> bool {
        !self.request_auth_indexes(workload).is_empty()
            || self
                .policies_for(workload)
                .iter()
                .any(|p| p.needs_http_on(port))
    }

    pub fn request_authentication(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&RequestAuthentication> {
        find_sorted(&self.request_authentications, namespace, name)
    }

    /// All request authentications in `(namespace, name)` order.
    pub fn request_authentications(
        &self,
    ) -> impl ExactSizeIterator<Item = &RequestAuthentication> + DoubleEndedIterator {
        self.request_authentications.iter()
    }
}
