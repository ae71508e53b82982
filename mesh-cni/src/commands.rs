//! The plugin's commands. Each returns what goes to stdout on success; the caller prints a
//! [`CniError`] as the specification's error object otherwise.
//!
//! The agent is the one that checks the pod against its declared Workload (namespace/name, uid
//! and IPs); the plugin only reads what the runtime gives and maps the agent's answers onto
//! error codes a runtime acts on: 11 (try again later) whenever waiting can fix it, so a pod
//! never starts uncaptured and is never left half-enrolled.

use std::path::Path;

use crate::agent::{Agent, EnrollRequest, EnrolledPod, Reply, Unreachable};
use crate::config::NetConf;
use crate::env::{self, Command, PodIdentity};
use crate::spec::{self, CniError, Code};

/// The runtime's environment, read once (tests pass their own).
pub struct Invocation<'a> {
    pub command: Command,
    pub cni_args: Option<&'a str>,
    pub netns: Option<&'a str>,
    pub stdin: &'a [u8],
}

pub fn run(inv: &Invocation) -> Result<String, CniError> {
    if inv.command == Command::Version {
        // VERSION must answer whatever version the runtime speaks.
        let requested: Option<serde_json::Value> = serde_json::from_slice(inv.stdin).ok();
        let requested = requested.as_ref().and_then(|v| v["cniVersion"].as_str());
        return Ok(spec::version_info(requested));
    }
    let conf = NetConf::parse(inv.stdin)?;
    let agent = Agent::new(&conf.state_dir);
    match inv.command {
        Command::Add => add(inv, &conf, &agent),
        Command::Del => del(inv, &agent),
        Command::Check => check(inv, &conf, &agent),
        Command::Status => status(&agent),
        // Enrollments are keyed by pod uid, not by attachment, and the agent drops those
        // whose namespace is gone when it restarts: there is nothing to collect.
        Command::Gc => Ok(String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

fn add(inv: &Invocation, conf: &NetConf, agent: &Agent) -> Result<String, CniError> {
    let pod = PodIdentity::from_cni_args(inv.cni_args)?;
    let netns = env::netns(inv.netns)?;
    let ips = conf.pod_ips()?;
    let output = conf.pass_through()?;
    ensure_ready(agent)?;
    let request = EnrollRequest {
        uid: &pod.uid,
        name: &pod.name,
        namespace: &pod.namespace,
        netns: &netns,
        ips: &ips,
    };
    let reply = match agent.enroll(&request) {
        Ok(reply) => reply,
        Err(Unreachable(why)) => {
            // The agent may still finish the enrollment after we gave up on it; unenrolling
            // cancels it, so a failed ADD leaves nothing behind.
            let _ = agent.unenroll(&pod.uid);
            return Err(CniError::new(
                Code::TryAgainLater,
                format!("enrolling pod {} with the mesh agent failed", pod.key()),
            )
            .with_details(why));
        }
    };
    if reply.ok() {
        return Ok(output);
    }
    Err(refusal(&pod, &reply, || agent.declares_workload(&pod.uid)))
}

/// The error for an enrollment the agent answered with an error: code 11 when waiting can fix
/// it (the pod's Workload is not declared yet, the agent has no config yet, another enrollment
/// holds its uid or address, the agent failed), else 100 with the agent's message. The
/// agent's `reason` decides; an agent too old to give one is asked whether the Workload is
/// declared.
fn refusal(
    pod: &PodIdentity,
    reply: &Reply,
    declared: impl FnOnce() -> Result<bool, Unreachable>,
) -> CniError {
    let agent_says = reply.message();
    let key = pod.key();
    let (code, msg) = match reply.reason().as_deref() {
        Some("not_declared") => (Code::TryAgainLater, not_declared(pod)),
        Some("not_ready") => (
            Code::TryAgainLater,
            format!("the mesh agent cannot enroll pod {key} yet (it has no mesh config)"),
        ),
        Some("conflict") => (
            Code::TryAgainLater,
            format!("another enrollment on this node holds what pod {key} needs (uid or address); retrying until it is gone"),
        ),
        Some("internal") => (
            Code::TryAgainLater,
            format!("the mesh agent failed to enroll pod {key}"),
        ),
        Some("mismatch") | Some("bad_request") => (
            Code::EnrollmentRefused,
            format!("the mesh agent refused to enroll pod {key}"),
        ),
        _ => refusal_without_reason(pod, reply, declared),
    };
    CniError::new(code, msg).with_details(agent_says)
}

fn not_declared(pod: &PodIdentity) -> String {
    format!(
        "no Workload with uid {} is declared for pod {} yet",
        pod.uid,
        pod.key()
    )
}

/// How an agent's refusal without a `reason` (an older agent, during an upgrade) is read.
fn refusal_without_reason(
    pod: &PodIdentity,
    reply: &Reply,
    declared: impl FnOnce() -> Result<bool, Unreachable>,
) -> (Code, String) {
    if reply.status >= 500 {
        // The agent failed, not the pod: its enrollment undid itself, so a retry is clean.
        let msg = format!("the mesh agent failed to enroll pod {}", pod.key());
        (Code::TryAgainLater, msg)
    } else {
        match declared() {
            Ok(false) => (Code::TryAgainLater, not_declared(pod)),
            Ok(true) => {
                let msg = format!("the mesh agent refused to enroll pod {}", pod.key());
                (Code::EnrollmentRefused, msg)
            }
            Err(Unreachable(why)) => {
                let msg = format!(
                    "the mesh agent refused to enroll pod {} and then did not answer: {why}",
                    pod.key()
                );
                (Code::TryAgainLater, msg)
            }
        }
    }
}

/// DEL succeeds whenever the pod is not enrolled afterwards, including when the agent is not
/// running: an agent resuming later drops pods whose namespace is gone.
fn del(inv: &Invocation, agent: &Agent) -> Result<String, CniError> {
    // A pod without a name was never enrolled by us: ADD refuses those.
    let Ok(pod) = PodIdentity::from_cni_args(inv.cni_args) else {
        return Ok(String::new());
    };
    let enrolled = match agent.status() {
        Ok(status) => status.pods.into_iter().find(|p| p.uid == pod.uid),
        Err(Unreachable(why)) => {
            eprintln!("mesh-cni DEL {}: {why}; nothing to unenroll", pod.key());
            return Ok(String::new());
        }
    };
    let Some(enrolled) = enrolled else {
        return Ok(String::new());
    };
    // A DEL for an earlier sandbox of the same pod must not take out the current one.
    if let Some(netns) = inv.netns.filter(|n| !n.is_empty()) {
        if Path::new(&enrolled.netns) != Path::new(netns) {
            eprintln!(
                "mesh-cni DEL {}: enrolled with netns {}, not {netns}; left enrolled",
                pod.key(),
                enrolled.netns
            );
            return Ok(String::new());
        }
    }
    match agent.unenroll(&pod.uid) {
        // 404: gone meanwhile, or an enrollment under way that the agent cancelled.
        Ok(reply) if reply.ok() || reply.status == 404 => Ok(String::new()),
        Ok(reply) => Err(CniError::new(
            Code::TryAgainLater,
            format!("the mesh agent could not unenroll pod {}", pod.key()),
        )
        .with_details(reply.message())),
        Err(Unreachable(why)) => Err(CniError::new(
            Code::TryAgainLater,
            format!("unenrolling pod {} from the mesh agent failed", pod.key()),
        )
        .with_details(why)),
    }
}

/// CHECK: the pod is enrolled with the namespace and addresses the runtime set up, its proxy
/// listeners are open and the capture programs are attached.
fn check(inv: &Invocation, conf: &NetConf, agent: &Agent) -> Result<String, CniError> {
    let pod = PodIdentity::from_cni_args(inv.cni_args)?;
    let netns = env::netns(inv.netns)?;
    let ips = conf.pod_ips()?;
    let status = agent.status().map_err(|Unreachable(why)| {
        CniError::new(
            Code::TryAgainLater,
            format!(
                "cannot check pod {}: the mesh agent did not answer",
                pod.key()
            ),
        )
        .with_details(why)
    })?;
    let not_captured = |why: String| {
        CniError::new(
            Code::NotCaptured,
            format!("pod {} is not captured by the mesh", pod.key()),
        )
        .with_details(why)
    };
    let Some(enrolled) = status.pods.iter().find(|p| p.uid == pod.uid) else {
        return Err(not_captured(format!(
            "no pod with uid {} is enrolled",
            pod.uid
        )));
    };
    check_enrolled(enrolled, &netns, &ips).map_err(not_captured)?;
    let unattached: Vec<&str> = status
        .programs
        .iter()
        .filter(|p| p.attached_to.is_empty())
        .map(|p| p.name.as_str())
        .collect();
    if status.programs.is_empty() || !unattached.is_empty() {
        return Err(not_captured(format!(
            "capture programs not attached: {}",
            if unattached.is_empty() {
                "none loaded".to_string()
            } else {
                unattached.join(", ")
            }
        )));
    }
    Ok(String::new())
}

fn check_enrolled(
    enrolled: &EnrolledPod,
    netns: &Path,
    ips: &[std::net::IpAddr],
) -> Result<(), String> {
    if Path::new(&enrolled.netns) != netns {
        return Err(format!(
            "enrolled with netns {}, not {}",
            enrolled.netns,
            netns.display()
        ));
    }
    for ip in ips {
        if !enrolled.ips.iter().any(|e| e.parse().ok() == Some(*ip)) {
            return Err(format!(
                "enrolled with IPs {}, without {ip}",
                enrolled.ips.join(", ")
            ));
        }
    }
    if enrolled.listeners.is_empty() {
        return Err("the agent serves no listener for it".to_string());
    }
    if enrolled.captured == Some(false) {
        return Err(
            "its capture is not in force in the kernel (sk_lookup link or MESH_POD_NETNS entry missing)"
                .to_string(),
        );
    }
    Ok(())
}

/// STATUS (CNI 1.1): whether ADD can succeed now.
fn status(agent: &Agent) -> Result<String, CniError> {
    ensure_ready(agent).map_err(|e| CniError {
        code: Code::NotAvailable,
        ..e
    })?;
    Ok(String::new())
}

fn ensure_ready(agent: &Agent) -> Result<(), CniError> {
    readiness(agent.socket(), agent.ready())
}

/// `/healthz/ready` answers 503 until the agent takes pods (programs attached, saved pods
/// resumed), and also while e.g. a certificate is pending, which must not stop new pods.
fn readiness(socket: &Path, answer: Result<Reply, Unreachable>) -> Result<(), CniError> {
    match answer {
        Ok(reply) if reply.accepts_pods() => Ok(()),
        Ok(reply) => Err(CniError::new(
            Code::TryAgainLater,
            format!("the mesh agent at {} is not ready", socket.display()),
        )
        .with_details(reply.message())),
        Err(Unreachable(why)) => Err(CniError::new(
            Code::TryAgainLater,
            "the mesh agent is not reachable",
        )
        .with_details(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation<'a>(
        command: Command,
        stdin: &'a str,
        cni_args: Option<&'a str>,
    ) -> Invocation<'a> {
        Invocation {
            command,
            cni_args,
            netns: Some("/proc/self/ns/net"),
            stdin: stdin.as_bytes(),
        }
    }

    const ARGS: &str = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_UID=u-1";

    fn conf(state_dir: &Path) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"mesh-cni","stateDir":"{}",
                "prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.1.0.2/24"}}]}}}}"#,
            state_dir.display()
        )
    }

    #[test]
    fn add_without_an_agent_asks_to_try_again() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(&invocation(Command::Add, &conf(dir.path()), Some(ARGS))).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(e.details.contains("not running"), "{e}");
    }

    #[test]
    fn add_checks_its_input_before_calling_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(&invocation(Command::Add, &conf(dir.path()), None)).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        let mut inv = invocation(Command::Add, "", Some(ARGS));
        let stdin = conf(dir.path());
        inv.stdin = stdin.as_bytes();
        inv.netns = Some("/nonexistent/netns");
        let e = run(&inv).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn del_without_an_agent_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            run(&invocation(Command::Del, &conf(dir.path()), Some(ARGS))).unwrap(),
            ""
        );
        // Not a Kubernetes pod: nothing can have been enrolled for it.
        assert_eq!(
            run(&invocation(Command::Del, &conf(dir.path()), None)).unwrap(),
            ""
        );
    }

    #[test]
    fn status_without_an_agent_is_not_available() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(&invocation(Command::Status, &conf(dir.path()), None)).unwrap_err();
        assert_eq!(e.code, Code::NotAvailable);
    }

    #[test]
    fn version_answers_even_an_unknown_version() {
        let out = run(&invocation(
            Command::Version,
            r#"{"cniVersion":"9.9.9"}"#,
            None,
        ))
        .unwrap();
        assert!(out.contains("\"supportedVersions\""), "{out}");
        assert!(run(&invocation(Command::Version, "", None)).is_ok());
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_agent_that_is_not_ready_means_try_again() {
        let socket = Path::new("/run/m/agent.sock");
        readiness(socket, Ok(reply(200, "ready\n"))).unwrap();
        let e = readiness(socket, Ok(reply(503, "resuming pods\n"))).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(e.msg.contains("/run/m/agent.sock is not ready"), "{e}");
        assert_eq!(e.details, "resuming pods");
        let resuming =
            r#"{"ready":false,"acceptsPods":false,"pending":["resume of pod a/b (uid u)"]}"#;
        let e = readiness(socket, Ok(reply(503, resuming))).unwrap_err();
        assert_eq!(e.details, "pending: resume of pod a/b (uid u)");
        // Another pod's certificate being pending does not keep this one from starting.
        let certificate = r#"{"ready":false,"acceptsPods":true,"pending":["certificate for x"]}"#;
        readiness(socket, Ok(reply(503, certificate))).unwrap();
    }

    #[test]
    fn the_agents_reason_decides_whether_to_try_again() {
        let pod = PodIdentity::from_cni_args(Some(ARGS)).unwrap();
        let refused = |status, reason: &str| {
            let body = format!(r#"{{"error":"enroll u-1: it says why","reason":"{reason}"}}"#);
            refusal(&pod, &reply(status, &body), || {
                panic!("not asked: the agent said why")
            })
        };
        for (status, reason) in [
            (422, "not_declared"),
            (503, "not_ready"),
            (409, "conflict"),
            (500, "internal"),
        ] {
            let e = refused(status, reason);
            assert_eq!(e.code, Code::TryAgainLater, "{reason}: {e}");
            assert_eq!(e.details, "enroll u-1: it says why");
        }
        assert!(refused(422, "not_declared")
            .msg
            .contains("no Workload with uid u-1"));
        for (status, reason) in [(422, "mismatch"), (400, "bad_request")] {
            let e = refused(status, reason);
            assert_eq!(e.code, Code::EnrollmentRefused, "{reason}: {e}");
            assert_eq!(e.details, "enroll u-1: it says why");
        }
    }

    #[test]
    fn refusals_are_retried_only_when_waiting_can_fix_them() {
        let pod = PodIdentity::from_cni_args(Some(ARGS)).unwrap();
        let refused = reply(
            422,
            r#"{"error":"enroll u-1: --ip 10.1.0.2 is not an address"}"#,
        );
        let e = refusal(&pod, &refused, || Ok(false));
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(e.msg.contains("no Workload with uid u-1"), "{e}");
        let e = refusal(&pod, &refused, || Ok(true));
        assert_eq!(e.code, Code::EnrollmentRefused);
        assert_eq!(e.details, "enroll u-1: --ip 10.1.0.2 is not an address");
        let e = refusal(&pod, &refused, || Err(Unreachable("gone".into())));
        assert_eq!(e.code, Code::TryAgainLater);
        let failed = reply(500, r#"{"error":"enrollment failed: panic"}"#);
        let e = refusal(&pod, &failed, || panic!("not asked: the agent failed"));
        assert_eq!(e.code, Code::TryAgainLater);
    }

    #[test]
    fn an_enrolled_pod_must_match_what_the_runtime_set_up() {
        let pod = EnrolledPod {
            uid: "u".into(),
            netns: "/run/netns/a".into(),
            ips: vec!["10.1.0.2".into()],
            listeners: vec!["10.1.0.2:15001".into()],
            captured: Some(true),
        };
        let ip = |s: &str| vec![s.parse().unwrap()];
        check_enrolled(&pod, Path::new("/run/netns/a"), &ip("10.1.0.2")).unwrap();
        let e = check_enrolled(&pod, Path::new("/run/netns/b"), &ip("10.1.0.2")).unwrap_err();
        assert!(e.contains("not /run/netns/b"), "{e}");
        let e = check_enrolled(&pod, Path::new("/run/netns/a"), &ip("10.1.0.3")).unwrap_err();
        assert!(e.contains("without 10.1.0.3"), "{e}");
        let uncaptured = EnrolledPod {
            captured: Some(false),
            ..pod.clone()
        };
        let e =
            check_enrolled(&uncaptured, Path::new("/run/netns/a"), &ip("10.1.0.2")).unwrap_err();
        assert!(e.contains("capture is not in force"), "{e}");
        let idle = EnrolledPod {
            listeners: vec![],
            ..pod
        };
        let e = check_enrolled(&idle, Path::new("/run/netns/a"), &ip("10.1.0.2")).unwrap_err();
        assert!(e.contains("no listener"), "{e}");
    }
}
