//! Capture over a pod's and the agent's life: unenroll, agent crash and restart, and the
//! fail-closed window while the agent is away.

use std::time::Duration;

use mesh_tests::{require_root, wait_until, Pod};

use crate::support::*;

/// After unenroll the pod is a plain pod again: the VIP is unreachable, its traffic to the
/// server's IP goes direct, its listeners are closed, its pins are gone, status forgets it.
#[test]
fn unenroll_removes_capture() {
    require_root();
    let mesh = ClientWeb::new(15);
    mesh.assert_vip_works();
    let pins = mesh.node.bpffs().join("pods").join("client-uid");
    assert!(pins.join("mesh_sk_lookup").exists(), "{}", pins.display());
    // The socket hooks are the node's, attached once, and stay.
    let node_pin = mesh.node.bpffs().join("node").join("mesh_connect4");
    assert!(node_pin.exists(), "{}", node_pin.display());

    mesh.node.unenroll("client-uid").unwrap();
    let before = Status::of(&mesh.node);
    assert_eq!(before.pod_names(), ["default/web"]);
    assert!(!pins.exists(), "{} is still there", pins.display());
    assert!(node_pin.exists());
    // The outbound listener inside the pod is closed with the pod's proxy tasks.
    let closed = wait_until(T, || {
        try_get(&mesh.client, "http://127.0.0.1:15001/", 1000)
            .is_err_and(|e| format!("{e:#}").contains("refused"))
    });
    assert!(
        closed,
        "127.0.0.1:15001 still answers in the unenrolled pod"
    );

    let (err, _) = get_fails(&mesh.client, &mesh.vip_url(), 300);
    assert!(
        err.contains("timed out") || err.contains("unreachable"),
        "{err}"
    );
    let r = get(&mesh.client, &url(mesh.web.ip(), APP_PORT));
    assert_eq!(r.name, "web");
    assert_eq!(r.peer.ip(), mesh.client.ip(), "{r:?}");

    let after = Status::of(&mesh.node);
    // No hook ran for the client: neither captured nor counted as direct.
    for name in ["connect_captured", "connect_direct", "orig_dst_recorded"] {
        assert_eq!(after.kernel(name), before.kernel(name), "{name}");
    }
    // web is still enrolled, so the plain connection still came in through its proxy.
    assert_eq!(
        after.pod("default/web", "inbound", "connections"),
        before.pod("default/web", "inbound", "connections") + 1
    );

    // Enrolling again brings capture back (nothing stale blocks it).
    mesh.node
        .enroll(&mesh.client, "client-uid", "client")
        .unwrap();
    mesh.assert_vip_works();
    assert_eq!(
        Status::of(&mesh.node).pod("default/client", "outbound", "connections"),
        1
    );
}

/// A crashed agent's successor resumes every pod from its state directory without a new
/// enroll, adopts the pinned links, and serves: the new agent's counters move. A pod deleted
/// while the agent was away is cleaned up instead (its pins removed).
#[test]
fn restarted_agent_resumes_capture() {
    require_root();
    let mut mesh = ClientWeb::with_declared(16, &[("gone", 4)]);
    mesh.node
        .enroll(&mesh.declared[0], "gone-uid", "gone")
        .unwrap();
    mesh.assert_vip_works();
    let captured_before = Status::of(&mesh.node).kernel("connect_captured");

    mesh.node.kill_agent();
    // The runtime deletes pod `gone` (netns, cgroup) while no agent is watching.
    drop(mesh.declared.pop());
    mesh.node.start_agent().unwrap();

    let status = Status::of(&mesh.node);
    assert_eq!(status.pod_names(), ["default/client", "default/web"]);
    let pins = mesh.node.bpffs().join("pods");
    assert!(
        !pins.join("gone-uid").exists(),
        "pins of the deleted pod left"
    );
    assert!(pins.join("web-uid").join("mesh_sk_lookup").exists());
    // Every attachment was re-adopted from its pin, not attached a second time: the socket
    // hooks once for the node, sk_lookup once per pod.
    for program in status.0["programs"].as_array().unwrap() {
        let targets = program["attachedTo"].as_array().unwrap();
        let per_pod = program["name"] == "mesh_sk_lookup";
        assert_eq!(targets.len(), if per_pod { 2 } else { 1 }, "{program}");
        assert!(
            targets
                .iter()
                .all(|t| t.as_str().unwrap().ends_with("(adopted)")),
            "{program}"
        );
    }
    // Fresh process, fresh proxy counters.
    assert_eq!(status.pod("default/client", "outbound", "connections"), 0);

    mesh.assert_vip_works();
    let after = Status::of(&mesh.node);
    assert_eq!(after.pod("default/client", "outbound", "connections"), 1);
    assert_eq!(after.pod("default/web", "inbound", "connections"), 1);
    // The kernel counters live in the pinned maps and carried on.
    assert_eq!(after.kernel("connect_captured"), captured_before + 1);
}

/// While the agent is down, capture fails closed: the enrolled client's connects are refused
/// at once (its proxy listener is gone) and never reach the server around the mesh, and a
/// non-mesh client's connection to the enrolled server is refused too (sk_lookup's SK_DROP
/// leaves the SYN without a socket, so the kernel answers with a RST): nothing reaches the
/// app, nobody hangs. A new agent restores service.
#[test]
fn agent_down_fails_closed_then_recovers() {
    require_root();
    let mut mesh = ClientWeb::new(17);
    let outsider = Pod::new(&mesh.bridge, "outsider", 4).unwrap();
    mesh.assert_vip_works();
    let before = Status::of(&mesh.node);

    mesh.node.kill_agent();
    let accepted_in_web = passive_opens(&mesh.web);
    for target in [
        mesh.vip_url(),
        // A workload IP is captured too: no direct path to web either.
        url(mesh.web.ip(), APP_PORT),
    ] {
        let (err, took) = get_fails(&mesh.client, &target, 3000);
        assert!(err.contains("refused"), "{target}: {err}");
        assert!(took < Duration::from_secs(1), "{target}: took {took:?}");
    }
    // The outsider's connection is not delivered to the app around the mesh.
    let (err, took) = get_fails(&outsider, &url(mesh.web.ip(), APP_PORT), 3000);
    assert!(err.contains("refused"), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Nothing reached any listener in web: not the app, not around the mesh.
    assert_eq!(passive_opens(&mesh.web), accepted_in_web);
    // Sanity: the app itself is up; over the pod's loopback (never captured) it answers.
    let r = get(&mesh.web, &url("127.0.0.1".parse().unwrap(), APP_PORT));
    assert_eq!(r.name, "web");

    mesh.node.start_agent().unwrap();
    let after = Status::of(&mesh.node);
    // Kernel counters survive in the pinned maps: the outsider's refused SYN and the two
    // captured connects the dead proxy refused are there.
    assert_eq!(
        after.kernel("lookup_fail_closed"),
        before.kernel("lookup_fail_closed") + 1,
        "{}",
        after.0["kernel"]
    );
    assert_eq!(
        after.kernel("connect_captured"),
        before.kernel("connect_captured") + 2
    );
    mesh.assert_vip_works();
    let r = get(&outsider, &url(mesh.web.ip(), APP_PORT));
    assert_eq!(r.peer.ip(), outsider.ip(), "{r:?}");
    let last = Status::of(&mesh.node);
    assert_eq!(last.pod("default/web", "inbound", "connections"), 2);
    assert_eq!(last.pod("default/client", "outbound", "connections"), 1);
}
