//! `kind: Workload`: one pod or VM in the mesh, placed on a node, with the IPs and labels the
//! proxy uses to route to it and the service account its identity is issued for.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::balancing::{check_locality, check_weight, Locality, DEFAULT_WEIGHT};
use crate::meta::{Labels, ObjectMeta};
use crate::resource::Kind;
use crate::validate::{check_ip, check_labels, check_meta, is_dns1123_subdomain, Checker};

/// Service account used when a workload names none, as in Kubernetes.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub metadata: ObjectMeta,
    pub spec: WorkloadSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Stable id that `mesh-agent enroll --uid` binds to a netns and cgroup; survives renames.
    pub uid: String,
    pub ips: Vec<IpAddr>,
    /// Where it runs; the CA signs its identity only for this node's agent.
    pub node: String,
    /// Goes into the SPIFFE ID `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// What service selectors match against.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Relative share of traffic under the `weighted`, `ring_hash` and `maglev` policies,
    /// 1..=1000. Kept optional so a loaded file serialises back as written; use
    /// [`WorkloadSpec::weight`] for the effective value (default [`DEFAULT_WEIGHT`], 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Region and zone, for services with `localityLb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
}

impl WorkloadSpec {
    /// The weight in effect.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(DEFAULT_WEIGHT)
    }
}

fn default_service_account() -> String {
    DEFAULT_SERVICE_ACCOUNT.to_owned()
}

/// Longest accepted uid; generous for UUIDs and cloud instance ids alike.
const MAX_UID_LEN: usize = 253;

fn is_uid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

impl Kind for Workload {
    const KIND: &'static str = "Workload";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;

        // The uid ends up in state-file names and CLI arguments, so keep it to a safe charset.
        if spec.uid.is_empty() {
            c.fail("spec.uid", "must not be empty");
        } else if spec.uid.chars().all(|c| c == '.') {
            // "." and ".." would name the agent's own directories where the uid is a path
            // component (bpffs pins, state), pointing a pod's cleanup at them.
            c.fail(
                "spec.uid",
                format!("{:?} must not consist of dots only", spec.uid),
            );
        } else if spec.uid.len() > MAX_UID_LEN || !spec.uid.chars().all(is_uid_char) {
            c.fail(
                "spec.uid",
                format!(
                    "{:?} must be at most {MAX_UID_LEN} letters, digits, '-', '_', '.' or ':'",
                    spec.uid
                ),
            );
        }

        if spec.ips.is_empty() {
            c.fail("spec.ips", "at least one IP is required");
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (i, ip) in spec.ips.iter().enumerate() {
            let field = format!("spec.ips[{i}]");
            check_ip(c, &field, ip);
            if let Some(j) = seen.get(ip) {
                c.fail(&field, format!("duplicate IP {ip} (also spec.ips[{j}])"));
            } else {
                seen.insert(*ip, i);
            }
        }

        if spec.node.is_empty() {
            c.fail("spec.node", "must not be empty");
        } else if spec
            .node
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.fail(
                "spec.node",
                format!("{:?} must not contain whitespace", spec.node),
            );
        }

        if !is_dns1123_subdomain(&spec.service_account) {
            c.fail(
                "spec.serviceAccount",
                format!(
                    "{:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')",
                    spec.service_account
                ),
            );
        }

        check_labels(c, "spec.labels", &spec.labels);
        check_weight(c, spec.weight);
        if let Some(locality) = &spec.locality {
            check_locality(c, locality);
        }
    }
}
