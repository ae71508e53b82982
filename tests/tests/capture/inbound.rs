//! Inbound capture (sk_lookup + the inbound proxy + the getpeername rewrite on the app side).

use std::net::SocketAddr;

use mesh_tests::{require_root, Pod};

use crate::support::*;

/// A client outside the mesh connecting to an enrolled pod's IP:port is steered through the
/// pod's inbound proxy, reaches the app, and the app's accept() shows the real client.
#[test]
fn non_mesh_client_is_steered_through_the_inbound_proxy() {
    require_root();
    let mesh = ClientWeb::new(13);
    let outsider = Pod::new(&mesh.bridge, "outsider", 4).unwrap();

    let before = Status::of(&mesh.node);
    let r = get(&outsider, &url(mesh.web.ip(), APP_PORT));
    assert_eq!(r.name, "web");
    assert_eq!(r.local, SocketAddr::new(mesh.web.ip(), APP_PORT), "{r:?}");
    // The proxy connected to the app from web's own address; without the rewrite the app
    // would see that. It sees the outsider instead.
    assert_eq!(r.peer.ip(), outsider.ip(), "{r:?}");

    let after = Status::of(&mesh.node);
    let inbound = |s: &Status| s.pod("default/web", "inbound", "connections");
    assert_eq!(inbound(&after), inbound(&before) + 1);
    let kernel = |name: &str| after.kernel(name) - before.kernel(name);
    assert_eq!(kernel("lookup_steered"), 1, "{}", after.0["kernel"]);
    assert!(kernel("peername_rewritten") >= 1, "{}", after.0["kernel"]);
    assert_eq!(kernel("lookup_fail_closed"), 0, "{}", after.0["kernel"]);
    // Not an outbound connection of any enrolled pod.
    assert_eq!(kernel("connect_captured"), 0, "{}", after.0["kernel"]);
    wait_pod_counter(&mesh.node, "default/web", "inbound", "bytesSent", 1);
    assert_eq!(after.pod("default/web", "inbound", "failures"), 0);

    // A port nobody listens on: steered, then refused by the app side, and counted as a
    // failed delivery rather than silently dropped.
    let (err, _) = get_fails(&outsider, &url(mesh.web.ip(), 9999), 2000);
    assert!(!err.contains("timed out"), "{err}");
    wait_pod_counter(&mesh.node, "default/web", "inbound", "failures", 1);
}

/// A pod enrolled with only its IPv4 address is still captured on every other address it
/// has (here its IPv6 one): no address of an enrolled pod reaches the app around the mesh.
#[test]
fn undeclared_addresses_of_an_enrolled_pod_are_captured_too() {
    require_root();
    let mesh = ClientWeb::new(14);
    let outsider = Pod::new(&mesh.bridge, "outsider", 4).unwrap();
    let before = Status::of(&mesh.node);
    let steered = before.pod_entry("default/web").unwrap()["ips"].to_string();
    assert!(steered.contains(&mesh.web.ip6().to_string()), "{steered}");

    let r = get(&outsider, &url(mesh.web.ip6(), APP_PORT));
    assert_eq!(r.name, "web");
    assert_eq!(r.peer.ip(), outsider.ip6(), "{r:?}");
    let after = Status::of(&mesh.node);
    let inbound = |s: &Status| s.pod("default/web", "inbound", "connections");
    assert_eq!(inbound(&after), inbound(&before) + 1);
    assert_eq!(
        after.kernel("lookup_steered") - before.kernel("lookup_steered"),
        1
    );
}
