//! Why an enrollment or an unenrollment failed, as a word a program acts on: the admin API
//! sends it as `reason` beside the message, and the CNI plugin decides by it whether the
//! runtime should try again later (the Workload is not declared yet, the agent has no config
//! yet, another pod holds the address, the agent failed) or whether the pod is refused for
//! good (its declared Workload says otherwise).

use std::fmt;

use mesh_api::Snapshot;
use serde::{Deserialize, Serialize};

use super::targets::Unfit;
use super::EnrollRequest;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No Workload declares the pod yet (its config may still be on its way).
    NotDeclared,
    /// The agent has no mesh config at all yet (waiting for the control plane), or is
    /// handing its pods to a successor (an upgrade) or stopping.
    NotReady,
    /// A Workload is declared for the pod but says otherwise (uid, node, service account,
    /// IPs): waiting does not fix it.
    Mismatch,
    /// Another pod, or another enrollment of this one, holds the uid, an IP or a slot.
    Conflict,
    /// The request itself is wrong: malformed, no IP, a namespace that is gone or must not be
    /// enrolled.
    BadRequest,
    /// Unenroll: no pod with this uid is enrolled.
    NotEnrolled,
    /// The agent failed; nothing of the enrollment is left.
    Internal,
}

impl Reason {
    /// The HTTP status the admin API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::NotDeclared | Reason::Mismatch => 422,
            Reason::NotReady => 503,
            Reason::Conflict => 409,
            Reason::BadRequest => 400,
            Reason::NotEnrolled => 404,
            Reason::Internal => 500,
        }
    }
}

/// An enrollment refused for `reason`; `message` says what to do about it.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// Checks `request` against the config before anything is reserved, telling a pod that is not
/// declared yet from one whose Workload says otherwise. The Workload is found by the pod's
/// namespace/name (what a CNI plugin knows the pod by), else by uid. `config_loaded`: false
/// while the agent waits for its first config (then nothing is declared, for now).
pub fn check_declared(
    request: &EnrollRequest,
    snapshot: &Snapshot,
    node: &str,
    config_loaded: bool,
) -> Result<(), Refusal> {
    let uid = &request.uid;
    if request.ips.is_empty() {
        return Err(Refusal::new(
            Reason::BadRequest,
            format!("enroll {uid}: at least one IP is required"),
        ));
    }
    let pod = request.pod_name();
    match snapshot.workload(&request.namespace, &request.name) {
        Some(workload) if workload.spec.uid != *uid => {
            return Err(Refusal::new(
                Reason::Mismatch,
                format!(
                    "enroll {uid}: Workload {pod} is declared with uid {:?}, not {uid:?} (a pod recreated under the same name needs its Workload updated)",
                    workload.spec.uid
                ),
            ))
        }
        Some(_) => {}
        None if snapshot.workload_by_uid(uid).is_some() => {}
        None if !config_loaded => {
            return Err(Refusal::new(
                Reason::NotReady,
                format!("enroll {uid}: the agent has no mesh config yet (waiting for the control plane)"),
            ))
        }
        None => {
            return Err(Refusal::new(
                Reason::NotDeclared,
                format!("enroll {uid}: no Workload {pod} with uid {uid:?} is declared in the mesh config (yet)"),
            ))
        }
    }
    request
        .clone()
        .check_declared(snapshot, node)
        .map_err(|e| Refusal::new(Reason::Mismatch, format!("{e:#}")))
}

/// Messages the pods code words conflicts and a missing pod in, for errors that do not carry
/// a [`Refusal`] (yet): the unit tests below produce them for real, so a rewording shows.
const CONFLICTS: [&str; 6] = [
    "a pod with this uid is already enrolled",
    "a pod with this uid is being enrolled right now",
    "saved by an earlier run and is not serving",
    "already belongs to",
    "is already taken",
    "the pod was unenrolled while it was being enrolled",
];
const FULL: &str = "already has the maximum number of enrolled pods";
const NOT_ENROLLED: &str = "no pod with this uid is enrolled";

/// The reason of an error from enroll or unenroll: a [`Refusal`] anywhere in its chain, a
/// namespace or cgroup unfit for enrollment (a bad request), else what its message says.
pub fn reason_of(error: &anyhow::Error) -> Reason {
    for cause in error.chain() {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return refusal.reason;
        }
        if cause.downcast_ref::<Unfit>().is_some() {
            return Reason::BadRequest;
        }
    }
    let text = format!("{error:#}");
    if CONFLICTS.iter().any(|m| text.contains(m)) || text.contains(FULL) {
        Reason::Conflict
    } else if text.contains(NOT_ENROLLED) {
        Reason::NotEnrolled
    } else {
        Reason::Internal
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use anyhow::Context;

    use super::super::reserve::Reservations;
    use super::super::state::SavedPod;
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

    fn request(name: &str, uid: &str, ip: &str) -> EnrollRequest {
        EnrollRequest {
            namespace: "shop".into(),
            name: name.into(),
            service_account: String::new(),
            ..EnrollRequest::for_test(uid, ip)
        }
    }

    fn reason(r: Result<(), Refusal>) -> Reason {
        r.unwrap_err().reason
    }

    #[test]
    fn tells_not_declared_yet_from_declared_otherwise() {
        let s = snapshot();
        check_declared(&request("web-1", "u1", "10.0.0.1"), &s, "n1", true).unwrap();
        let undeclared = request("web-2", "u2", "10.0.0.2");
        assert_eq!(
            reason(check_declared(&undeclared, &s, "n1", true)),
            Reason::NotDeclared
        );
        let empty = Snapshot::default();
        assert_eq!(
            reason(check_declared(&undeclared, &empty, "n1", false)),
            Reason::NotReady
        );
        // Same namespace/name, another uid: a pod recreated before its Workload was updated.
        let other_uid = check_declared(&request("web-1", "u9", "10.0.0.1"), &s, "n1", true);
        let refusal = other_uid.unwrap_err();
        assert_eq!(refusal.reason, Reason::Mismatch);
        assert!(
            refusal
                .message
                .contains("declared with uid \"u1\", not \"u9\""),
            "{refusal}"
        );
        for (name, ip, node) in [("web-1", "10.0.0.9", "n1"), ("web-1", "10.0.0.1", "n2")] {
            let r = check_declared(&request(name, "u1", ip), &s, node, true);
            assert_eq!(reason(r), Reason::Mismatch, "{name} {ip} {node}");
        }
        let mut no_ip = request("web-1", "u1", "10.0.0.1");
        no_ip.ips.clear();
        assert_eq!(
            reason(check_declared(&no_ip, &s, "n1", true)),
            Reason::BadRequest
        );
    }

    #[test]
    fn the_pods_codes_conflicts_and_unfit_paths_get_their_reason() {
        let reservations = Reservations::default();
        let none = BTreeMap::new();
        let held = request("a", "a", "10.0.0.1");
        let _a = reservations
            .reserve(&none, &none_saved(), &held, None)
            .unwrap();
        let conflict = |r: &EnrollRequest, slot, saved: &BTreeMap<String, SavedPod>| {
            let error = reservations.reserve(&none, saved, r, slot).err().unwrap();
            reason_of(&error)
        };
        assert_eq!(conflict(&held, None, &none_saved()), Reason::Conflict);
        let same_ip = request("b", "b", "10.0.0.1");
        assert_eq!(conflict(&same_ip, None, &none_saved()), Reason::Conflict);
        let other = request("c", "c", "10.0.0.3");
        assert_eq!(conflict(&other, Some(0), &none_saved()), Reason::Conflict);
        let saved = BTreeMap::from([(
            "c".to_string(),
            SavedPod {
                request: other.clone(),
                slot: 5,
                steered_ips: Vec::new(),
            },
        )]);
        assert_eq!(conflict(&other, None, &saved), Reason::Conflict);

        let gone = anyhow::Error::new(Unfit::Gone("netns /run/netns/x does not exist".into()))
            .context("enroll u1");
        assert_eq!(reason_of(&gone), Reason::BadRequest);
        let typed = anyhow::Error::new(Refusal::new(Reason::NotDeclared, "x")).context("y");
        assert_eq!(reason_of(&typed), Reason::NotDeclared);
        let failed: anyhow::Error = Err::<(), _>(std::io::Error::other("EPERM"))
            .context("inserting into the SOCKMAP")
            .unwrap_err();
        assert_eq!(reason_of(&failed), Reason::Internal);
        let missing = anyhow::anyhow!("unenroll u1: {NOT_ENROLLED}");
        assert_eq!(reason_of(&missing), Reason::NotEnrolled);
    }

    fn none_saved() -> BTreeMap<String, SavedPod> {
        BTreeMap::new()
    }
}
