//! ADD, CHECK and DEL against a running agent.

use mesh_tests::observe::{AgentStatus, Response};

use crate::runtime::expect_error;
use crate::support::{CniNode, CniPod, POD_UID};

/// Code 101: CHECK found the pod not captured.
const NOT_CAPTURED: u64 = 101;

/// The runtime's ADD alone (bridge, then mesh-cni) enrolls the pod: a process in it reaches a
/// service VIP that nothing but capture routes, through the agent's proxy (its counter for
/// the pod moves). mesh-cni passes the bridge plugin's result through; CHECK passes. A DEL
/// for another sandbox of the pod leaves it; its own DEL unenrolls it and removes eth0.
#[test]
fn add_captures_the_pod_and_del_releases_it() {
    let cni = CniNode::start();
    let pod = CniPod::new("cni-add");
    let result = cni.runtime.add(&pod.sandbox()).unwrap().unwrap();
    assert_eq!(result["ips"][0]["address"], format!("{}/24", cni.pod_ip));
    let eth0 = &result["interfaces"].as_array().unwrap();
    assert!(
        eth0.iter()
            .any(|i| i["sandbox"] == pod.netns().display().to_string()),
        "the bridge plugin's result, passed through: {result}"
    );
    assert!(cni.enrolled().contains(&POD_UID.to_string()));

    let body = pod.get(&cni.vip_url(), 3000).unwrap();
    let response = Response::parse(&body);
    assert_eq!(response.name, "web");
    assert_eq!(response.peer.ip(), cni.pod_ip, "{response:?}");
    let proxied = AgentStatus::of(&cni.node).pod("default/client", "outbound", "connections");
    assert!(
        proxied >= 1,
        "the agent proxied {proxied} connections of the pod"
    );
    cni.runtime.check(&pod.sandbox(), &result).unwrap().unwrap();

    // A late DEL for an earlier sandbox of the same pod leaves the current one enrolled.
    let earlier = CniPod::named("cni-earlier", "client", POD_UID);
    cni.runtime.del(&earlier.sandbox(), None).unwrap().unwrap();
    assert!(cni.enrolled().contains(&POD_UID.to_string()));

    cni.runtime
        .del(&pod.sandbox(), Some(&result))
        .unwrap()
        .unwrap();
    assert!(!cni.enrolled().contains(&POD_UID.to_string()));
    assert!(!cni.address_allocated(), "the bridge plugin's DEL ran too");
    assert!(!pod.links().contains("eth0"), "{}", pod.links());
}

/// A pod unenrolled behind the runtime's back fails CHECK with mesh-cni's code and is no
/// longer captured; DEL then succeeds, again, and also with the agent down.
#[test]
fn check_fails_once_the_pod_is_not_enrolled_and_del_is_idempotent() {
    let mut cni = CniNode::start();
    let pod = CniPod::new("cni-check");
    let result = cni.runtime.add(&pod.sandbox()).unwrap().unwrap();
    cni.node.unenroll(POD_UID).unwrap();

    let outcome = cni.runtime.check(&pod.sandbox(), &result).unwrap();
    let msg = expect_error(outcome, "mesh-cni", NOT_CAPTURED).unwrap();
    assert!(msg.contains("default/client is not captured"), "{msg}");
    let escaped = pod.get(&cni.vip_url(), 500);
    assert!(
        escaped.is_err(),
        "VIP answered without capture: {escaped:?}"
    );

    cni.runtime
        .del(&pod.sandbox(), Some(&result))
        .unwrap()
        .unwrap();
    cni.runtime
        .del(&pod.sandbox(), Some(&result))
        .unwrap()
        .unwrap();
    cni.node.kill_agent();
    cni.runtime.del(&pod.sandbox(), None).unwrap().unwrap();
}
