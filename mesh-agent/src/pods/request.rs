//! The enrollment request (what a CNI plugin sends) and its validation against the declared
//! workload: enrollment binds a workload that the config places on this node to a network
//! namespace; it never invents one.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use mesh_api::Snapshot;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Empty: the declared Workload's (a CNI plugin is not told it).
    #[serde(default)]
    pub service_account: String,
    pub netns: PathBuf,
    /// Accepted for older callers and checked (never the cgroup root, never the agent's
    /// own), but capture follows the network namespace, whatever cgroup a process is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
}

impl EnrollRequest {
    /// `namespace/name`.
    pub fn pod_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks the request against the workload the config declares under the same uid, and
    /// takes the service account from it when the request names none.
    pub fn check_declared(&mut self, snapshot: &Snapshot, node: &str) -> Result<()> {
        if self.ips.is_empty() {
            bail!("enroll {}: at least one --ip is required", self.uid);
        }
        let Some(workload) = snapshot.workload_by_uid(&self.uid) else {
            bail!(
                "enroll {}: no Workload with uid {:?} is declared in the mesh config",
                self.uid,
                self.uid
            );
        };
        let declared = format!("Workload {}", workload.metadata.key());
        if workload.spec.node != node {
            bail!(
                "enroll {}: {declared} is placed on node {:?}, not on this node {node:?}",
                self.uid,
                workload.spec.node
            );
        }
        if workload.metadata.name != self.name || workload.metadata.namespace != self.namespace {
            bail!(
                "enroll {}: --name/--namespace {} do not match the declared {declared}",
                self.uid,
                self.pod_name()
            );
        }
        if self.service_account.is_empty() {
            self.service_account = workload.spec.service_account.clone();
        }
        if workload.spec.service_account != self.service_account {
            bail!(
                "enroll {}: --service-account {:?} does not match {declared} (serviceAccount {:?})",
                self.uid,
                self.service_account,
                workload.spec.service_account
            );
        }
        for ip in &self.ips {
            if !workload.spec.ips.contains(ip) {
                bail!(
                    "enroll {}: --ip {ip} is not an address of {declared} (declared: {})",
                    self.uid,
                    workload
                        .spec
                        .ips
                        .iter()
                        .map(|ip| ip.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl EnrollRequest {
    /// Pod `uid` (named the same, in `default`) with one IP: the request unit tests start from.
    pub(crate) fn for_test(uid: &str, ip: &str) -> Self {
        EnrollRequest {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "default".into(),
            netns: "/run/netns/x".into(),
            cgroup: Some("/sys/fs/cgroup/x".into()),
            ips: vec![ip.parse().unwrap()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = r#"
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-1, namespace: shop}
spec: {uid: u1, ips: ["10.0.0.1"], node: n1, serviceAccount: web}
"#;
        Snapshot::from_resources(mesh_api::load_str("t.yaml", yaml).unwrap()).unwrap()
    }

    fn request() -> EnrollRequest {
        EnrollRequest {
            uid: "u1".into(),
            name: "web-1".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            netns: "/run/netns/x".into(),
            cgroup: Some("/sys/fs/cgroup/x".into()),
            ips: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn accepts_the_declared_workload() {
        request().check_declared(&snapshot(), "n1").unwrap();
        // A CNI plugin is not told the service account: the Workload's is taken.
        let mut unnamed = request();
        unnamed.service_account.clear();
        unnamed.check_declared(&snapshot(), "n1").unwrap();
        assert_eq!(unnamed.service_account, "web");
    }

    #[test]
    fn names_what_does_not_match() {
        let s = snapshot();
        let err =
            |mut r: EnrollRequest, node: &str| r.check_declared(&s, node).unwrap_err().to_string();
        assert!(err(request(), "n2").contains("placed on node \"n1\""));
        let mut r = request();
        r.ips = vec!["10.0.0.9".parse().unwrap()];
        assert!(err(r, "n1").contains("--ip 10.0.0.9 is not an address of Workload shop/web-1"));
        let mut r = request();
        r.uid = "nope".into();
        assert!(err(r, "n1").contains("no Workload with uid \"nope\""));
        let mut r = request();
        r.service_account = "admin".into();
        assert!(err(r, "n1").contains("--service-account \"admin\""));
    }
}
