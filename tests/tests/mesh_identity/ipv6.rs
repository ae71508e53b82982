//! The same over IPv6: dual-stack workloads on two nodes talk HBONE over their IPv6
//! addresses.

use std::net::SocketAddr;

use mesh_tests::observe::Response;
use mesh_tests::require_root;
use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::TwoNodes;

use crate::support::*;

/// Dual-stack `a` (node-1) GETs `b` (node-2) at its IPv6 address: the app answers and sees
/// `a`'s IPv6 address; on the bridge there is TLS to `b`'s port 15008 over IPv6, no
/// connection to the app port and no request marker or answer in clear.
#[test]
fn cross_node_ipv6_is_mutual_tls_on_the_wire() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a").dual_stack())
        .pod(PodDef::mesh("b", 1, "web").dual_stack())
        .start()
        .expect("starting two nodes");
    let name = marker("v6-answer");
    mesh.serve_http("b", APP_PORT, &name);
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let path = format!("/{}", marker("v6-request"));
    let b6 = SocketAddr::new(b.pod.ip6(), APP_PORT);

    let (body, capture) = sniff(mesh.bridge.name(), || get(&a.pod, &url(b6, &path))).unwrap();

    let r = Response::parse(&body);
    assert_eq!(r.name, name, "{body}");
    assert_eq!(r.peer.ip(), a.pod.ip6(), "{r:?}");
    assert_eq!(r.local, b6, "{r:?}");
    let summary = capture.summary();
    let hbone6 = capture
        .segments()
        .iter()
        .filter(|s| s.dst == SocketAddr::new(b.pod.ip6(), HBONE_PORT))
        .count();
    assert!(hbone6 > 0, "no HBONE over IPv6 to b: {summary}");
    assert_eq!(capture.syns_to_port(APP_PORT), 0, "{summary}");
    for (what, bytes) in [
        ("the request marker", path.as_bytes()),
        ("the answer", body.as_bytes()),
        ("the server's name", name.as_bytes()),
    ] {
        assert!(
            !capture.contains(bytes),
            "{what} crossed the bridge in clear: {summary}"
        );
    }
}
