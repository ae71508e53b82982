//! `kind: Workload`: one pod or VM in the mesh, placed on a node, with the IPs and labels the
//! proxy uses to route to it and the service account its identity is issued for.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    }
}
