//! `/healthz/ready` says what is pending; `/healthz/live` does not depend on it.

use std::time::Duration;

use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{workload_yaml, MeshNode, NODE};
use mesh_tests::{http_get, require_root, wait_until, wait_until_ok, Bridge, Pod};
use serde_json::Value;

use crate::BRIDGES;

/// Certificate retries back off (200 ms doubling) while the control plane is away, and the
/// agent reconnects within 5 s: both catch up within this.
const CATCH_UP: Duration = Duration::from_secs(30);

fn readiness(node: &MeshNode) -> (u16, Value) {
    let (code, body) = http_get(node.admin(), "/healthz/ready").unwrap();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/healthz/ready is not JSON ({e}): {body}"));
    (code, json)
}

fn pending(readiness: &Value) -> Vec<String> {
    readiness["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// An agent restarted while its control plane is down and without its config cache: it takes
/// pods and resumes its pod (acceptsPods), is alive, but not ready, and says why: no config
/// yet, and no certificate for the pod's identity. Once the control plane is back, both
/// arrive and it answers 200.
#[test]
fn readiness_names_the_missing_config_and_certificate_and_liveness_does_not_wait() {
    require_root();
    let mut cp = ControlPlane::start_embedded().unwrap();
    let bridge = Bridge::first_free(&BRIDGES).unwrap();
    let web = Pod::new(&bridge, "web", 3).unwrap();
    cp.apply(&workload_yaml(
        "web",
        "web-uid",
        &[web.ip()],
        &[("app", "web")],
    ))
    .unwrap();
    let mut node = MeshNode::start_with_control_plane(NODE, &[cp.url()], &[]).unwrap();
    wait_until_ok(CATCH_UP, || node.enroll(&web, "web-uid", "web")).unwrap();
    let ready = wait_until(CATCH_UP, || readiness(&node).0 == 200);
    assert!(ready, "never ready: {}", readiness(&node).1);
    assert_eq!(readiness(&node).1["pending"], serde_json::json!([]));

    node.stop_agent().unwrap();
    cp.stop().unwrap();
    std::fs::remove_file(node.state_dir().join("config-cache.json")).unwrap();
    node.start_agent().unwrap();
    let (code, body) = readiness(&node);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(
        body["acceptsPods"], true,
        "the saved pod is resumed: {body}"
    );
    let pending = pending(&body);
    assert!(
        pending
            .iter()
            .any(|p| p == "mesh config: none yet (waiting for the control plane)"),
        "{pending:?}"
    );
    let certificate = pending
        .iter()
        .find(|p| p.starts_with("certificate for spiffe://"))
        .unwrap_or_else(|| panic!("no pending certificate: {pending:?}"));
    // With why the last attempt failed.
    assert!(
        certificate.contains("(pods default/web): last attempt failed: "),
        "{certificate}"
    );
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(
        http_get(node.admin(), "/healthz/live").unwrap(),
        (200, "alive\n".to_string())
    );

    cp.start_process().unwrap();
    let ready = wait_until(CATCH_UP, || readiness(&node).0 == 200);
    assert!(
        ready,
        "not ready after the control plane came back: {}",
        readiness(&node).1
    );
    let (_, body) = readiness(&node);
    assert_eq!(
        (&body["ready"], &body["acceptsPods"]),
        (&true.into(), &true.into())
    );
}
