//! CA outage: while the control plane is down, workload certificates keep serving until they
//! expire, renewal retries with backoff (the failure shows in status), and the next attempt
//! after the control plane is back succeeds.

use std::time::{Duration, Instant};

use mesh_tests::require_root;
use mesh_tests::two_nodes::TwoNodes;
use serde_json::Value;

use crate::support::*;

/// Long enough to stop the control plane before half life (10 s) and restart it well before
/// expiry (20 s), short enough for a test.
const TTL_SECONDS: u64 = 20;

#[test]
fn certificates_keep_serving_through_a_control_plane_outage() {
    require_root();
    let mut mesh = client_and_web(TTL_SECONDS);
    mesh.serve_http("b", APP_PORT, "b");
    let a_id = mesh.pod("a").spiffe_id();
    let server = mesh.pod("b").addr(APP_PORT);
    let url = |path: &str| format!("http://{server}/{path}");
    get(&mesh.pod("a").pod, &url("before"));
    let issued = certificate(mesh.agent(0), &a_id).expect("a's certificate");

    mesh.cp.stop().expect("stopping the control plane");
    // Past half life the renewal fails and says so; the certificate it has still serves.
    let failing = wait_for_certificate(&mesh, &a_id, Duration::from_secs(TTL_SECONDS), |c| {
        c["lastError"].is_string()
    });
    assert_eq!(failing["serial"], issued["serial"], "{failing}");
    get(&mesh.pod("a").pod, &url("during-outage"));

    mesh.cp
        .start_process()
        .expect("restarting the control plane");
    let renewed = wait_for_certificate(&mesh, &a_id, Duration::from_secs(TTL_SECONDS), |c| {
        c["serial"] != issued["serial"] && c["lastError"].is_null()
    });
    assert!(
        renewed["notAfter"].as_u64() > issued["notAfter"].as_u64(),
        "renewed {renewed}, issued {issued}"
    );
    get(&mesh.pod("a").pod, &url("after"));
}

/// Waits for node-1's certificate of `spiffe_id` to satisfy `done`.
fn wait_for_certificate(
    mesh: &TwoNodes,
    spiffe_id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let current = certificate(mesh.agent(0), spiffe_id);
        match current {
            Some(c) if done(&c) => return c,
            other if Instant::now() > deadline => {
                panic!("certificate of {spiffe_id} never got there; last: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
