//! PeerAuthentication modes: STRICT refuses plaintext inbound, PERMISSIVE takes both,
//! DISABLE makes clients send plaintext.

use mesh_tests::observe::Response;
use mesh_tests::require_root;
use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::TwoNodes;

use crate::support::*;

/// `a` (mesh client) on node-1, `b` (app `web`) on node-2, and `p`, a pod on the same
/// bridge that is not in the mesh.
fn setup() -> TwoNodes {
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .pod(PodDef::plain("p"))
        .start()
        .expect("starting two nodes");
    mesh.serve_http("b", APP_PORT, "b");
    mesh.serve_echo("b", ECHO_PORT);
    mesh
}

fn mode(mode: &str) -> String {
    peer_authentication(
        "default",
        "web-mtls",
        &format!("  selector: {{app: web}}\n  mode: {mode}\n"),
    )
}

/// PERMISSIVE: the plaintext client and the mesh client are both answered, and the app sees
/// the plaintext client's own address. Switching to STRICT closes the plaintext client's open
/// connection; from then on it gets no answer (counted as `PlaintextRefused` for `b`), while
/// the mesh client still does.
#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    require_root();
    let mesh = setup();
    let (a, b, p) = (mesh.pod("a"), mesh.pod("b"), mesh.pod("p"));
    let b_url = url(b.addr(APP_PORT), "/");

    apply(&mesh, &mode("PERMISSIVE"));
    let r = Response::parse(&get(&p.pod, &b_url));
    assert_eq!(r.peer.ip(), p.ip(), "{r:?}");
    let r = Response::parse(&get(&a.pod, &b_url));
    assert_eq!(r.peer.ip(), a.ip(), "{r:?}");
    let (mut held, connected) = watch(&p.pod, b.addr(ECHO_PORT));
    assert!(connected, "plaintext under PERMISSIVE: {}", held.stderr());
    let open = wait_connection(mesh.agent(1), "plaintext from p", |c| {
        c["pod"] == "default/b" && c["direction"] == "inbound"
    });
    assert_eq!(open["transport"], "plaintext", "{open}");
    assert!(open["peerIdentity"].is_null(), "{open}");

    let before = failure_count(mesh.agent(1), "PlaintextRefused", "default/b");
    apply(&mesh, &mode("STRICT"));
    let closed = mesh_tests::wait_until(std::time::Duration::from_secs(5), || !held.is_running());
    assert!(
        closed,
        "the open plaintext connection survived the switch to STRICT: {}",
        held.stdout()
    );
    let e = get_refused(&p.pod, &b_url);
    eprintln!("plaintext client under STRICT: {e}");
    wait_failure_above(mesh.agent(1), "PlaintextRefused", "default/b", before);
    assert!(get(&a.pod, &b_url).contains("name=b"));
}

/// DISABLE on `b`: node-1's agent sends `a`'s request to `b` in plaintext, so the sniffer
/// (proven in `sniffer`) sees the request marker and the answer, and nothing goes to the
/// HBONE port. The inbound side lists the connection as plaintext.
#[test]
fn disable_makes_the_client_agent_send_plaintext() {
    require_root();
    let mesh = setup();
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    apply(&mesh, &mode("DISABLE"));
    let path = format!("/{}", marker("disabled"));

    let (body, capture) = sniff(mesh.bridge.name(), || {
        get(&a.pod, &url(b.addr(APP_PORT), &path))
    })
    .unwrap();

    let summary = capture.summary();
    assert!(body.contains("name=b"), "{body}");
    assert!(
        capture.contains(path.as_bytes()),
        "DISABLE, yet the request was not plaintext on the bridge: {summary}"
    );
    assert!(capture.contains(body.as_bytes()), "{summary}");
    assert_eq!(capture.tcp_with_port(HBONE_PORT), 0, "{summary}");
    assert!(capture.syns_to_port(APP_PORT) >= 1, "{summary}");
}
