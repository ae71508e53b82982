//! Cross-node traffic through the mesh: it works, and what crosses the wire is TLS to the
//! HBONE port, never the application's bytes; the server side knows who the client is.

use std::net::SocketAddr;

use mesh_tests::observe::{AgentStatus, Response};
use mesh_tests::require_root;
use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::TwoNodes;

use crate::support::*;

/// Client `a` on node-1, server `b` (app `web`, behind Service `web` at the VIP) on node-2,
/// both serving HTTP (named by a marker each, returned: `b`'s, `a`'s) and `b` echo.
fn setup() -> (TwoNodes, String, String) {
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .config(&service_yaml("web", vip(), 80, APP_PORT, "web"))
        .start()
        .expect("starting two nodes");
    let name = marker("web-answer");
    mesh.serve_http("b", APP_PORT, &name);
    mesh.serve_echo("b", ECHO_PORT);
    let a_name = marker("a-answer");
    mesh.serve_http("a", APP_PORT, &a_name);
    (mesh, name, a_name)
}

/// GETs by VIP and by pod IP from node-1 to node-2 answer (the app sees the real client),
/// pass through both agents (outbound counters of `a` on node-1, inbound of `b` on node-2),
/// and so does a GET back from node-2 to node-1. On the bridge there is one TLS connection to
/// port 15008 each way (both requests of `a` share one), no connection to the app port, no
/// request marker, no answer, not even the servers' names.
#[test]
fn cross_node_http_is_mutual_tls_on_the_wire() {
    require_root();
    let (mesh, name, a_name) = setup();
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let by_vip = format!("/{}", marker("by-vip"));
    let by_ip = format!("/{}", marker("by-ip"));
    let back = format!("/{}", marker("back"));
    let before = (
        AgentStatus::of(mesh.agent(0)),
        AgentStatus::of(mesh.agent(1)),
    );

    let (bodies, capture) = sniff(mesh.bridge.name(), || {
        [
            get(&a.pod, &url(SocketAddr::new(vip(), 80), &by_vip)),
            get(&a.pod, &url(b.addr(APP_PORT), &by_ip)),
            get(&b.pod, &url(a.addr(APP_PORT), &back)),
        ]
    })
    .unwrap();

    let r = Response::parse(&bodies[2]);
    assert_eq!(
        (r.name.as_str(), r.peer.ip()),
        (a_name.as_str(), b.ip()),
        "{r:?}"
    );
    for body in &bodies[..2] {
        let r = Response::parse(body);
        assert_eq!(r.name, name, "{body}");
        assert_eq!(r.peer.ip(), a.ip(), "the app sees the real client: {body}");
        assert_eq!(r.local, b.addr(APP_PORT), "{body}");
    }
    let after = (
        AgentStatus::of(mesh.agent(0)),
        AgentStatus::of(mesh.agent(1)),
    );
    let out = after.0.pod("default/a", "outbound", "connections")
        - before.0.pod("default/a", "outbound", "connections");
    let inb = after.1.pod("default/b", "inbound", "connections")
        - before.1.pod("default/b", "inbound", "connections");
    assert_eq!(out, 2, "outbound connections of a on node-1");
    assert_eq!(inb, 2, "inbound connections of b on node-2");
    let back_out = after.1.pod("default/b", "outbound", "connections")
        - before.1.pod("default/b", "outbound", "connections");
    let back_in = after.0.pod("default/a", "inbound", "connections")
        - before.0.pod("default/a", "inbound", "connections");
    assert_eq!((back_out, back_in), (1, 1), "b -> a through both agents");

    let summary = capture.summary();
    assert!(
        capture.tcp_to_port(HBONE_PORT) > 0,
        "no HBONE traffic on the bridge: {summary}"
    );
    assert!(
        capture.payload_to_port(HBONE_PORT) > 0,
        "no payload to the HBONE port: {summary}"
    );
    assert_eq!(
        capture.syns_to_port(HBONE_PORT),
        2,
        "one HBONE connection each way (a's two requests, same source identity and destination node, share a pooled one): {summary}"
    );
    assert_eq!(
        capture.syns_to_port(APP_PORT),
        0,
        "a connection to the app port crossed the bridge: {summary}"
    );
    for (what, bytes) in [
        ("the request marker (VIP)", by_vip.as_bytes()),
        ("the request marker (pod IP)", by_ip.as_bytes()),
        ("the request marker (back)", back.as_bytes()),
        ("the server's name", name.as_bytes()),
        ("the name of a's server", a_name.as_bytes()),
        ("the first answer", bodies[0].as_bytes()),
        ("the second answer", bodies[1].as_bytes()),
        ("the answer back", bodies[2].as_bytes()),
        ("an HTTP request line", b"GET /".as_slice()),
    ] {
        assert!(
            !capture.contains(bytes),
            "{what} crossed the bridge in clear: {summary}"
        );
    }
}

/// While `a` holds a connection to `b`'s echo server, node-2's agent lists it as an inbound
/// HBONE connection of `b` whose peer is `a` with `a`'s SPIFFE ID, and node-1's agent lists
/// it as an outbound HBONE connection of `a` to `b`'s identity. Once closed, it is gone from
/// both lists.
#[test]
fn server_agent_shows_the_client_identity_of_an_open_connection() {
    require_root();
    let (mesh, _, _) = setup();
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let (mut held, connected) = watch(&a.pod, b.addr(ECHO_PORT));
    assert!(connected, "the connection failed: {}", held.stderr());

    let inbound = wait_connection(mesh.agent(1), "inbound to b from a", |c| {
        c["pod"] == "default/b"
            && c["direction"] == "inbound"
            && c["peer"]
                .as_str()
                .is_some_and(|p| p.contains(&a.ip().to_string()))
    });
    assert_eq!(inbound["transport"], "hbone", "{inbound}");
    assert_eq!(inbound["peerIdentity"], a.spiffe_id(), "{inbound}");
    assert!(
        inbound["destination"]
            .as_str()
            .is_some_and(|d| d.contains(&b.addr(ECHO_PORT).to_string())),
        "{inbound}"
    );
    let outbound = wait_connection(mesh.agent(0), "outbound from a", |c| {
        c["pod"] == "default/a" && c["direction"] == "outbound"
    });
    assert_eq!(outbound["transport"], "hbone", "{outbound}");
    assert_eq!(outbound["peerIdentity"], b.spiffe_id(), "{outbound}");

    held.kill();
    wait_no_connection(mesh.agent(1), "inbound to b", |c| {
        c["pod"] == "default/b" && c["direction"] == "inbound"
    });
    wait_no_connection(mesh.agent(0), "outbound from a", |c| {
        c["pod"] == "default/a" && c["direction"] == "outbound"
    });
}
