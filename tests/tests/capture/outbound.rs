//! Outbound capture (cgroup connect4 + sock_ops + the outbound proxy): what is captured, what
//! goes direct, load balancing, and what the app sees as its peer.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{require_root, Bridge, Pod};

use crate::support::*;

/// A pod reaches a service VIP only through the agent: its connect is captured in the
/// kernel, the client's outbound proxy and the endpoint's inbound proxy both count it, and
/// round robin spreads the requests over both endpoints.
#[test]
fn service_vip_goes_through_the_proxy_and_round_robins() {
    require_root();
    let bridge = Bridge::new(10).unwrap();
    let client = Pod::new(&bridge, "client", 2).unwrap();
    let web1 = Pod::new(&bridge, "web-1", 3).unwrap();
    let web2 = Pod::new(&bridge, "web-2", 4).unwrap();
    let _s1 = http_server(&web1, "web-1");
    let _s2 = http_server(&web2, "web-2");
    let config = [
        service_yaml("web", &[vip()], 80, APP_PORT, "web"),
        workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
        workload_yaml("web-1", "web-1-uid", &[web1.ip()], &[("app", "web")]),
        workload_yaml("web-2", "web-2-uid", &[web2.ip()], &[("app", "web")]),
    ]
    .concat();
    let node = MeshNode::start(&config).unwrap();
    node.enroll(&client, "client-uid", "client").unwrap();
    node.enroll(&web1, "web-1-uid", "web-1").unwrap();
    node.enroll(&web2, "web-2-uid", "web-2").unwrap();

    let before = Status::of(&node);
    const N: u64 = 6;
    let mut hits: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..N {
        let r = get(&client, &url(vip(), 80));
        // Answered by an endpoint on its target port, which sees the real client (the
        // proxy connects from inside the client pod, and web's inbound rewrite shows it).
        assert_eq!(r.peer.ip(), client.ip(), "{r:?}");
        let endpoint = if r.name == "web-1" { &web1 } else { &web2 };
        assert_eq!(r.local, SocketAddr::new(endpoint.ip(), APP_PORT), "{r:?}");
        *hits.entry(r.name).or_default() += 1;
    }
    // Round robin over two endpoints: exactly half each.
    assert_eq!(
        hits,
        BTreeMap::from([("web-1".into(), N / 2), ("web-2".into(), N / 2)])
    );

    let after = Status::of(&node);
    let delta = |pod: &str, dir: &str, c: &str| after.pod(pod, dir, c) - before.pod(pod, dir, c);
    assert_eq!(delta("default/client", "outbound", "connections"), N);
    assert_eq!(delta("default/client", "inbound", "connections"), 0);
    assert_eq!(delta("default/web-1", "inbound", "connections"), N / 2);
    assert_eq!(delta("default/web-2", "inbound", "connections"), N / 2);
    let kernel = |name: &str| after.kernel(name) - before.kernel(name);
    assert_eq!(kernel("connect_captured"), N, "{}", after.0["kernel"]);
    assert_eq!(kernel("orig_dst_recorded"), N, "{}", after.0["kernel"]);
    // The proxy's own upstream connections are not in a pod cgroup: never captured again.
    assert_eq!(kernel("connect_direct"), 0, "{}", after.0["kernel"]);
    // Same node: the agent delivers straight into the endpoint's namespace (one proxy hop),
    // so the endpoint's inbound listener and sk_lookup are not involved.
    assert_eq!(kernel("lookup_steered"), 0, "{}", after.0["kernel"]);
    for pod in ["default/client", "default/web-1", "default/web-2"] {
        for dir in ["outbound", "inbound"] {
            assert_eq!(after.pod(pod, dir, "failures"), 0, "{pod} {dir}");
        }
    }
    // Bytes are counted when each relay ends, a moment after the client has its answer.
    wait_pod_counter(&node, "default/client", "outbound", "bytesReceived", 1);
    wait_pod_counter(&node, "default/client", "outbound", "bytesSent", 1);
    wait_pod_counter(&node, "default/web-1", "inbound", "bytesSent", 1);
}

/// Pods that are not enrolled have no hooks: their traffic to a non-mesh server goes direct,
/// the VIP means nothing to them, and no agent or kernel counter moves.
#[test]
fn non_enrolled_pod_is_not_captured() {
    require_root();
    let bridge = Bridge::new(11).unwrap();
    let outsider = Pod::new(&bridge, "outsider", 2).unwrap();
    let plain = Pod::new(&bridge, "plain", 3).unwrap();
    let web = Pod::new(&bridge, "web", 4).unwrap();
    let _plain_server = http_server(&plain, "plain");
    let _web_server = http_server(&web, "web");
    let config = [
        service_yaml("web", &[vip()], 80, APP_PORT, "web"),
        workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]),
    ]
    .concat();
    let node = MeshNode::start(&config).unwrap();
    node.enroll(&web, "web-uid", "web").unwrap();

    let before = Status::of(&node);
    let r = get(&outsider, &url(plain.ip(), APP_PORT));
    assert_eq!(r.name, "plain");
    assert_eq!(r.peer.ip(), outsider.ip(), "{r:?}");
    // Not captured, so the VIP is just an unroutable address.
    let (err, _) = get_fails(&outsider, &url(vip(), 80), 300);
    assert!(
        err.contains("timed out") || err.contains("unreachable"),
        "{err}"
    );

    let after = Status::of(&node);
    assert_eq!(
        after.0["kernel"], before.0["kernel"],
        "kernel counters moved"
    );
    assert_eq!(after.0["pods"], before.0["pods"], "pod counters moved");
}

/// An enrolled pod's connection to an address the mesh does not know goes straight out:
/// connect4 counts it as direct and the proxy never sees it.
#[test]
fn enrolled_pod_to_non_mesh_destination_goes_direct() {
    require_root();
    let mesh = ClientWeb::new(12);
    let plain = Pod::new(&mesh.bridge, "plain", 4).unwrap();
    let _plain_server = http_server(&plain, "plain");

    let before = Status::of(&mesh.node);
    let r = get(&mesh.client, &url(plain.ip(), APP_PORT));
    assert_eq!(r.name, "plain");
    // Direct: the server sees the client's own connection, port and all.
    assert_eq!(r.peer.ip(), mesh.client.ip(), "{r:?}");
    let after = Status::of(&mesh.node);
    let kernel = |name: &str| after.kernel(name) - before.kernel(name);
    assert!(kernel("connect_direct") >= 1, "{}", after.0["kernel"]);
    assert_eq!(kernel("connect_captured"), 0, "{}", after.0["kernel"]);
    let outbound = |s: &Status| s.pod("default/client", "outbound", "connections");
    assert_eq!(outbound(&after), outbound(&before));

    // The same pod's connection to the VIP right after is captured: the hooks are live.
    mesh.assert_vip_works();
    let last = Status::of(&mesh.node);
    assert_eq!(outbound(&last), outbound(&before) + 1);
    assert_eq!(
        last.kernel("connect_captured"),
        before.kernel("connect_captured") + 1
    );
}

/// getpeername() on a captured socket shows what the app dialled, not the proxy listener.
#[test]
fn app_sees_the_address_it_dialled_as_peer() {
    require_root();
    let mesh = ClientWeb::new(14);
    let before = Status::of(&mesh.node);
    let vip80 = SocketAddr::new(vip(), 80);
    assert_eq!(peername(&mesh.client, vip80), vip80.to_string());
    // A workload IP is captured as well, and reported as dialled.
    let web = SocketAddr::new(mesh.web.ip(), APP_PORT);
    assert_eq!(peername(&mesh.client, web), web.to_string());
    let after = Status::of(&mesh.node);
    assert!(
        after.kernel("peername_rewritten") >= before.kernel("peername_rewritten") + 2,
        "{}",
        after.0["kernel"]
    );
    assert_eq!(
        after.kernel("connect_captured"),
        before.kernel("connect_captured") + 2
    );
}

/// Capture follows the network namespace, not the cgroup: a process that enters an enrolled
/// pod's namespace from another cgroup (a debug shell, `ip netns exec`, a CNI-managed pod
/// whose cgroup the agent was never told) is captured like the pod's own, and still sees
/// the address it dialled as its peer.
#[test]
fn a_process_in_the_pods_namespace_but_another_cgroup_is_captured() {
    require_root();
    let mesh = ClientWeb::new(26);
    let stranger = Pod::new(&mesh.bridge, "stranger", 9).unwrap();
    let mut cmd = mesh_tests::process::command_in(
        &mesh.client.netns_path(),
        &stranger.cgroup_path(),
        mesh_tests::cargo_bin("pod-tool"),
    )
    .unwrap();
    cmd.args(["http-get", &mesh.vip_url()]);
    let mut process = mesh_tests::PodProcess::spawn(cmd).unwrap();
    let out = process.wait_output(T).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("name=web"), "{body}");
    assert!(
        body.contains(&format!("peer={}", mesh.client.ip())),
        "{body}"
    );
}
