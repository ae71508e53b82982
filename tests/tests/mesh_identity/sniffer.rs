//! The sniffer itself: without a mesh in the way it must see a request and its answer in
//! clear, so that "the marker was not seen" in the other tests means the mesh hid it.

use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::free_bridge;
use mesh_tests::{require_root, Pod};

use crate::support::*;

/// Two pods on the bridge, no agent: an HTTP request (marker in the path) and its answer
/// (marker as the server's name) cross the bridge in plaintext, and the capture shows both,
/// the connection to the app port, and nothing on the HBONE port.
#[test]
fn sniffer_sees_plaintext_between_two_pods() {
    require_root();
    let bridge = free_bridge().unwrap();
    let client = Pod::new(&bridge, "sniff-c", 2).unwrap();
    let server = Pod::new(&bridge, "sniff-s", 3).unwrap();
    let name = marker("answer");
    let _app = mesh_tests::observe::http_server(&server, &name, APP_PORT);
    let path = format!("/{}", marker("request"));
    let target = url(std::net::SocketAddr::new(server.ip(), APP_PORT), &path);

    let (body, capture) = sniff(bridge.name(), || get(&client, &target)).unwrap();

    assert!(body.contains(&name), "{body}");
    assert!(
        capture.contains(path.as_bytes()),
        "request marker not seen: {}",
        capture.summary()
    );
    assert!(
        capture.contains(body.as_bytes()),
        "answer not seen: {}",
        capture.summary()
    );
    assert_eq!(capture.syns_to_port(APP_PORT), 1, "{}", capture.summary());
    assert_eq!(
        capture.tcp_with_port(HBONE_PORT),
        0,
        "{}",
        capture.summary()
    );
    assert!(!capture.contains(marker("never-sent").as_bytes()));
}
