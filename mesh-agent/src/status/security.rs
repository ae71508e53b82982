//! The request-security part of `mesh-agent status`: per enrolled pod, the policies that
//! judge its requests one by one, the JWT issuers it accepts, and what was decided.

use std::fmt::Write;

use mesh_api::{ObjectKey, Snapshot};
use serde::{Deserialize, Serialize};

use crate::proxy::request_security::counters::AuthzCount;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRequestSecurity {
    pub pod: String,
    pub workload: String,
    /// AuthorizationPolicies with a rule that needs the HTTP request.
    pub http_policies: Vec<PolicyDecisions>,
    /// Issuers of the RequestAuthentications that apply.
    pub jwt_issuers: Vec<String>,
    /// Requests refused for an invalid token.
    pub unauthenticated: u64,
    /// Requests no policy decided (no ALLOW policy matched, or the mesh default).
    pub without_policy: PolicyDecisions,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecisions {
    /// `namespace/name ACTION`; empty for requests no policy decided.
    pub policy: String,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

/// The request security of each of `pods` (pod name, workload) that has any.
pub fn pod_request_security<'p>(
    snapshot: &Snapshot,
    pods: impl Iterator<Item = (String, &'p ObjectKey)>,
    counts: &[AuthzCount],
) -> Vec<PodRequestSecurity> {
    pods.filter_map(|(pod, key)| {
        let workload = snapshot.workload(&key.namespace, &key.name)?;
        let key_text = key.to_string();
        let mine: Vec<&AuthzCount> = counts.iter().filter(|c| c.workload == key_text).collect();
        let decisions = |policy: &str, shown: String| {
            let count = |decision: &str| {
                mine.iter()
                    .filter(|c| c.policy == policy && c.decision == decision)
                    .map(|c| c.requests)
                    .sum()
            };
            PolicyDecisions {
                policy: shown,
                allowed: count("allow"),
                denied: count("deny"),
                audited: count("audit"),
            }
        };
        let http_policies: Vec<PolicyDecisions> = snapshot
            .policies_for(workload)
            .into_iter()
            .filter(|p| p.spec.rules.iter().any(|r| r.needs_http()))
            .map(|p| {
                let name = p.metadata.key().to_string();
                let shown = format!("{name} {}", p.spec.action.as_str());
                decisions(&name, shown)
            })
            .collect();
        let jwt_issuers: Vec<String> = snapshot
            .request_authentications_for(workload)
            .into_iter()
            .flat_map(|r| r.spec.jwt_rules.iter().map(|j| j.issuer.clone()))
            .collect();
        if http_policies.is_empty() && jwt_issuers.is_empty() && mine.is_empty() {
            return None;
        }
        Some(PodRequestSecurity {
            pod,
            workload: key_text,
            http_policies,
            jwt_issuers,
            unauthenticated: mine
                .iter()
                .filter(|c| c.decision == "unauthenticated")
                .map(|c| c.requests)
                .sum(),
            without_policy: decisions("-", String::new()),
        })
    })
    .collect()
}

/// The REQUEST SECURITY section of the table view.
pub fn table(pods: &[PodRequestSecurity], out: &mut String) {
    if pods.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nREQUEST SECURITY");
    let mut rows = Vec::new();
    for p in pods {
        let row = |what: String, d: &PolicyDecisions| {
            vec![
                p.pod.clone(),
                what,
                d.allowed.to_string(),
                d.denied.to_string(),
                d.audited.to_string(),
            ]
        };
        for d in &p.http_policies {
            rows.push(row(d.policy.clone(), d));
        }
        rows.push(row("(no policy decided)".into(), &p.without_policy));
        if !p.jwt_issuers.is_empty() {
            rows.push(vec![
                p.pod.clone(),
                format!("JWT: {}", super::list(&p.jwt_issuers)),
                "-".into(),
                format!("{} (401)", p.unauthenticated),
                "-".into(),
            ]);
        }
    }
    super::table(
        out,
        &["POD", "HTTP POLICY / JWT", "ALLOWED", "DENIED", "AUDITED"],
        rows,
    );
}
