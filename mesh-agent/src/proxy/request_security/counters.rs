//! Request decisions per destination workload and policy: the metric
//! `mesh_request_authz_total` and the counts `mesh-agent status` shows, plus the access log
//! line of a refused request.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::SystemTime;

use mesh_api::ObjectKey;
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::proxy::telemetry::serialize_rfc3339;

/// What happened to a request that was judged.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    Deny,
    /// Refused for an invalid token (401).
    Unauthenticated,
    /// An AUDIT policy matched (counted besides allow or deny).
    Audit,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Audit => "audit",
        }
    }
}

impl EncodeLabelValue for Decision {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub destination_workload_namespace: String,
    pub destination_workload: String,
    /// `namespace/name` of the deciding policy; `-` when none did (no ALLOW policy
    /// matched, the mesh default, or the token).
    pub policy: String,
    pub decision: Decision,
}

/// One row of the counts, for status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzCount {
    pub workload: String,
    pub policy: String,
    pub decision: String,
    pub requests: u64,
}

#[derive(Default)]
pub struct AuthzCounters {
    pub family: Family<AuthzLabels, Counter>,
    counts: Mutex<HashMap<(ObjectKey, String, Decision), u64>>,
}

impl AuthzCounters {
    pub fn count(&self, workload: &ObjectKey, policy: Option<&str>, decision: Decision) {
        let policy = policy.unwrap_or("-").to_owned();
        self.family
            .get_or_create(&AuthzLabels {
                destination_workload_namespace: workload.namespace.clone(),
                destination_workload: workload.name.clone(),
                policy: policy.clone(),
                decision,
            })
            .inc();
        *self
            .counts
            .lock()
            .entry((workload.clone(), policy, decision))
            .or_default() += 1;
    }

    /// Every count so far, sorted by workload, policy and decision.
    pub fn list(&self) -> Vec<AuthzCount> {
        let mut rows: Vec<AuthzCount> = self
            .counts
            .lock()
            .iter()
            .map(|((workload, policy, decision), n)| AuthzCount {
                workload: workload.to_string(),
                policy: policy.clone(),
                decision: decision.as_str().to_owned(),
                requests: *n,
            })
            .collect();
        rows.sort();
        rows
    }
}

/// The access log line of a request the destination refused.
#[derive(Serialize)]
pub struct RefusedRequest<'a> {
    #[serde(serialize_with = "serialize_rfc3339")]
    pub start_time: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub source_principal: &'a str,
    pub source_address: String,
    pub destination_workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz_policy: Option<&'a str>,
    pub request_id: Option<&'a str>,
}
