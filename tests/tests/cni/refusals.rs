//! What ADD refuses, and that a refused ADD leaves nothing behind.

use serde_json::{json, Value};

use crate::runtime::{expect_error, parse_output, run_plugin, PluginError};
use crate::support::{CniNode, CniPod, POD_NAME, POD_UID};

const TRY_AGAIN_LATER: u64 = 11;
const ENROLLMENT_REFUSED: u64 = 100;

/// With the agent down, the chain's ADD fails at mesh-cni with code 11; the runtime's DEL
/// that follows leaves no interface, no address and (once the agent is back) no enrollment.
/// The runtime's retry then enrolls the pod.
#[test]
fn add_while_the_agent_is_down_asks_to_try_again_and_leaves_nothing() {
    let mut cni = CniNode::start();
    let pod = CniPod::new("cni-down");
    cni.node.kill_agent();
    let outcome = cni.runtime.add(&pod.sandbox()).unwrap();
    let msg = expect_error(outcome, "mesh-cni", TRY_AGAIN_LATER).unwrap();
    assert!(msg.contains("not reachable"), "{msg}");
    assert!(!pod.links().contains("eth0"), "{}", pod.links());
    assert!(!cni.address_allocated());

    cni.node.start_agent().unwrap();
    assert!(!cni.enrolled().contains(&POD_UID.to_string()));
    let retried = cni.runtime.add(&pod.sandbox()).unwrap().unwrap();
    assert!(cni.enrolled().contains(&POD_UID.to_string()));
    cni.runtime
        .del(&pod.sandbox(), Some(&retried))
        .unwrap()
        .unwrap();
}

/// A pod whose Workload the agent does not know yet is not started uncaptured: code 11.
#[test]
fn add_before_the_workload_is_declared_asks_to_try_again() {
    let cni = CniNode::start_declaring(false);
    let pod = CniPod::new("cni-undeclared");
    let outcome = cni.runtime.add(&pod.sandbox()).unwrap();
    let msg = expect_error(outcome, "mesh-cni", TRY_AGAIN_LATER).unwrap();
    assert!(
        msg.contains(&format!("no Workload with uid {POD_UID}")),
        "{msg}"
    );
    assert_eq!(cni.enrolled(), ["web-uid"]);
    assert!(!cni.address_allocated());
}

/// A pod whose namespace/name is declared under another uid (recreated before its Workload
/// was updated) is refused for good (100) with the agent's words, not retried as if its
/// Workload were still to come; nothing is left. The agent's DELETE for a uid it never
/// enrolled answers 404 `not_enrolled`, and DEL, run twice, succeeds both times.
#[test]
fn add_for_a_workload_declared_with_another_uid_is_refused_for_good() {
    let cni = CniNode::start();
    let pod = CniPod::named("cni-other-uid", POD_NAME, "recreated-uid");
    let outcome = cni.runtime.add(&pod.sandbox()).unwrap();
    let error = outcome.as_ref().err().map(|e| e.error.clone());
    let msg = expect_error(outcome, "mesh-cni", ENROLLMENT_REFUSED).unwrap();
    assert!(
        msg.contains("refused to enroll pod default/client"),
        "{msg}"
    );
    let details = error.unwrap()["stdout"]["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        details.contains(&format!(
            "Workload default/client is declared with uid \"{POD_UID}\", not \"recreated-uid\""
        )),
        "{details}"
    );
    assert_eq!(cni.enrolled(), ["web-uid"]);
    assert!(!cni.address_allocated());
    assert!(!pod.links().contains("eth0"), "{}", pod.links());

    let socket = cni.node.state_dir().join("agent.sock");
    let delete = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "DELETE",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(&socket)
        .arg("http://agent/v1/pods/recreated-uid")
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&delete.stdout);
    let (body, code) = answer.rsplit_once('\n').unwrap();
    assert_eq!(code, "404", "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["reason"],
        "not_enrolled"
    );
    for _ in 0..2 {
        cni.runtime.del(&pod.sandbox(), None).unwrap().unwrap();
    }
}

/// mesh-cni run by hand the way a broken runtime or config would: each bad input gets its
/// specification code and a message naming what is wrong, and nothing is enrolled.
#[test]
fn bad_input_gets_cni_errors_and_enrolls_nothing() {
    let cni = CniNode::start();
    let pod = CniPod::new("cni-bad");
    let binary = cni.runtime.bin_dir.join("mesh-cni");
    let good_args = pod.sandbox().cni_args.to_string();
    let netns = pod.netns().display().to_string();
    let state_dir = cni.node.state_dir().display().to_string();
    let config = |version: &str, prev: Value| {
        json!({"cniVersion": version, "name": "pods", "type": "mesh-cni",
               "stateDir": state_dir, "prevResult": prev})
        .to_string()
    };
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": format!("{}/24", cni.pod_ip)}]});
    let add = |args: &str, netns: &str, stdin: &str| -> Result<Value, PluginError> {
        let env = [
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", "c1".to_string()),
            ("CNI_NETNS", netns.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", args.to_string()),
            ("CNI_PATH", cni.runtime.cni_path()),
        ];
        parse_output("mesh-cni", &run_plugin(&binary, &env, stdin).unwrap())
    };
    let good = config("1.0.0", prev.clone());
    let cases: Vec<(&str, Result<Value, PluginError>, u64, String)> = vec![
        (
            "no CNI_ARGS",
            add("", &netns, &good),
            4,
            "CNI_ARGS is not set".into(),
        ),
        (
            "no uid",
            add(&good_args.replace("K8S_POD_UID", "X"), &netns, &good),
            4,
            "no K8S_POD_UID".into(),
        ),
        (
            "malformed",
            add("K8S_POD_NAME", &netns, &good),
            4,
            "not KEY=VALUE".into(),
        ),
        (
            "no netns",
            add(&good_args, "/run/netns/no-such-pod", &good),
            4,
            "CNI_NETNS /run/netns/no-such-pod: no such network namespace".into(),
        ),
        (
            "no ips",
            add(
                &good_args,
                &netns,
                &config("1.0.0", json!({"cniVersion": "1.0.0", "ips": []})),
            ),
            7,
            "prevResult has no ips".into(),
        ),
        (
            "not chained",
            add(&good_args, &netns, &config("1.0.0", Value::Null)),
            7,
            "no prevResult".into(),
        ),
        (
            "old version",
            add(&good_args, &netns, &config("0.3.1", prev.clone())),
            1,
            "cniVersion \"0.3.1\" is not supported".into(),
        ),
        (
            "not JSON",
            add(&good_args, &netns, "{\"cniVersion\""),
            6,
            "not JSON".into(),
        ),
        (
            "other IP",
            add(
                &good_args,
                &netns,
                &config("1.0.0", json!({"ips": [{"address": "10.9.9.9/24"}]})),
            ),
            100,
            "refused to enroll pod default/client".into(),
        ),
    ];
    for (case, outcome, code, expected) in cases {
        let msg =
            expect_error(outcome, "mesh-cni", code).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(
            msg.contains(&expected),
            "{case}: {msg:?} does not say {expected:?}"
        );
    }
    assert_eq!(cni.enrolled(), ["web-uid"]);
}
