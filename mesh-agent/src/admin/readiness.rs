//! What `/healthz/ready` checks, in the words an operator reads in the 503 body.
//!
//! Ready means: the socket hooks are attached to the node-wide cgroup, the mesh config is loaded
//! (the local file; with a control plane, its cache or a first push), every pod saved by an
//! earlier run is serving again, and (with a control plane) every enrolled pod's identity has
//! a certificate. Each of these is worked out from the agent's own state at the time of the
//! probe, so what is pending is also what to look at.
//!
//! `acceptsPods` is the narrower "new pods can be enrolled now" (hooks attached, saved pods
//! resumed): what the CNI plugin waits for. It must not wait for certificates, or one pod whose
//! certificate cannot be issued would keep every other pod on the node from starting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::registry::ConfigSource;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    /// The programs are attached and the saved pods resumed: enrollments are taken.
    pub accepts_pods: bool,
    /// What keeps the agent from being ready, one sentence each.
    pub pending: Vec<String>,
}

impl Readiness {
    pub fn new(accepts_pods: bool, pending: Vec<String>) -> Readiness {
        Readiness {
            ready: pending.is_empty(),
            accepts_pods,
            pending,
        }
    }

    /// Worked out from the running agent.
    pub async fn of(agent: &Agent) -> Readiness {
        let mut pending = programs_pending(agent);
        let attached = pending.is_empty();
        pending.extend(config_pending(&agent.registry.source()));
        let resumed = agent.ready.load(Ordering::Acquire);
        pending.extend(resume_pending(agent, resumed));
        let certificates_expected = agent.identities.has_signer();
        if certificates_expected {
            pending.extend(certificates_pending(agent).await);
        }
        Readiness::new(attached && resumed, pending)
    }
}

/// The node-wide socket hooks: attached at start, and still attached (their link pins can be
/// removed from under the agent, e.g. by an uninstall's node cleanup).
fn programs_pending(agent: &Agent) -> Vec<String> {
    if agent.node_attachments.is_empty() {
        return vec!["the socket hooks are not attached to --cgroup-root yet".to_string()];
    }
    agent
        .node_attachments
        .iter()
        .filter(|a| crate::sys::bpf::open_pinned(&a.pin).is_err())
        .map(|a| {
            format!(
                "program {} is no longer attached to {} (its link pin {} is gone; restart the agent)",
                a.program,
                a.target.display(),
                a.pin.display()
            )
        })
        .collect()
}

fn config_pending(source: &ConfigSource) -> Option<String> {
    (!source.loaded()).then(|| format!("mesh config: {}", source.origin))
}

fn resume_pending(agent: &Agent, resumed: bool) -> Vec<String> {
    let unresumed = agent.unresumed.lock();
    let mut pending: Vec<String> = unresumed
        .iter()
        .map(|(uid, saved)| {
            let pod = saved.request.pod_name();
            if resumed {
                format!("pod {pod} (uid {uid}), saved by an earlier run, is not serving: its resume failed (see the agent log; unenroll it if it is gone)")
            } else {
                format!("resume of pod {pod} (uid {uid})")
            }
        })
        .collect();
    if !resumed && pending.is_empty() {
        pending.push("resume of the pods saved by an earlier run".to_string());
    }
    pending
}

/// One line per identity of an enrolled pod that has no valid certificate.
async fn certificates_pending(agent: &Agent) -> Vec<String> {
    let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in agent.pods.lock().await.values() {
        let identity = &pod.context.identity;
        if agent.identities.credential(identity).is_none() {
            waiting
                .entry(identity.to_string())
                .or_default()
                .push(pod.request.pod_name());
        }
    }
    if waiting.is_empty() {
        return Vec::new();
    }
    let errors: BTreeMap<String, String> = agent
        .identities
        .status()
        .certificates
        .into_iter()
        .filter_map(|c| Some((c.spiffe_id, c.last_error?)))
        .collect();
    waiting
        .into_iter()
        .map(|(id, pods)| certificate_pending(&id, &pods, errors.get(&id)))
        .collect()
}

fn certificate_pending(id: &str, pods: &[String], last_error: Option<&String>) -> String {
    let mut line = format!("certificate for {id} (pods {})", pods.join(", "));
    if let Some(error) = last_error {
        line.push_str(&format!(": last attempt failed: {error}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_nothing_pending() {
        assert!(Readiness::new(true, vec![]).ready);
        let waiting = Readiness::new(true, vec!["certificate for x (pods a)".into()]);
        assert!(!waiting.ready && waiting.accepts_pods);
        let json = serde_json::to_value(&waiting).unwrap();
        assert_eq!(json["acceptsPods"], true);
        assert_eq!(json["pending"][0], "certificate for x (pods a)");
    }

    #[test]
    fn config_is_pending_only_before_a_first_one() {
        let pending = |origin: &str| {
            config_pending(&ConfigSource {
                origin: origin.into(),
                version: 1,
            })
        };
        assert_eq!(
            pending("none yet (waiting for the control plane)").unwrap(),
            "mesh config: none yet (waiting for the control plane)"
        );
        assert!(pending("cache (control plane not reached yet)").is_none());
        assert!(pending("local file /etc/mesh.yaml").is_none());
        // No --local-config and no control plane: an empty mesh by choice.
        assert!(pending("none").is_none());
    }

    #[test]
    fn a_pending_certificate_names_its_pods_and_why() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let pods = ["shop/web-1".to_string(), "shop/web-2".to_string()];
        assert_eq!(
            certificate_pending(id, &pods, None),
            "certificate for spiffe://cluster.local/ns/shop/sa/web (pods shop/web-1, shop/web-2)"
        );
        let error = "control plane unreachable".to_string();
        assert!(certificate_pending(id, &pods[..1], Some(&error))
            .ends_with("(pods shop/web-1): last attempt failed: control plane unreachable"));
    }
}
