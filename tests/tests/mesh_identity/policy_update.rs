//! A policy change applies to connections already open: one it now denies is closed.
//! (PeerAuthentication STRICT closing an open plaintext connection is in `peer_auth`.)

use std::time::{Duration, Instant};

use mesh_tests::require_root;
use mesh_tests::two_nodes::TwoNodes;

use crate::support::*;

/// `a1` and `a2` (node-1) hold connections to `b`'s echo server (node-2). A DENY for `a1`
/// closes `a1`'s connection within a few seconds and refuses a new one (no echo, counted as
/// `AuthzDenied`); `a2`'s connection stays open and new ones from `a2` still work.
#[test]
fn a_policy_update_closes_open_connections_it_now_denies() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a1", 0, "client-a"))
        .pod(PodDef::mesh("a2", 0, "client-b"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .start()
        .expect("starting two nodes");
    mesh.serve_echo("b", ECHO_PORT);
    let (a1, a2, b) = (mesh.pod("a1"), mesh.pod("a2"), mesh.pod("b"));
    let target = b.addr(ECHO_PORT);
    let (mut w1, ok1) = watch(&a1.pod, target);
    let (mut w2, ok2) = watch(&a2.pod, target);
    assert!(ok1 && ok2, "{} {}", w1.stderr(), w2.stderr());
    let from = |ip: std::net::IpAddr| {
        move |c: &serde_json::Value| {
            c["pod"] == "default/b"
                && c["direction"] == "inbound"
                && c["peer"]
                    .as_str()
                    .is_some_and(|p| p.contains(&ip.to_string()))
        }
    };
    wait_connection(mesh.agent(1), "from a1", from(a1.ip()));
    wait_connection(mesh.agent(1), "from a2", from(a2.ip()));

    let before = failure_count(mesh.agent(1), "AuthzDenied", "default/b");
    let start = Instant::now();
    apply(
        &mesh,
        &authz_policy(
            "default",
            "deny-a1",
            &format!(
                "  selector: {{app: web}}\n  action: DENY\n  rules:\n  - from: {{principals: [\"{}\"]}}\n",
                a1.spiffe_id()
            ),
        ),
    );
    let closed = mesh_tests::wait_until(Duration::from_secs(5), || !w1.is_running());
    assert!(
        closed,
        "a1's connection is still open {:?} after the DENY",
        start.elapsed()
    );
    eprintln!(
        "a1's connection closed {:?} after the apply: {}",
        start.elapsed(),
        w1.stdout()
    );
    assert!(w1.stdout().contains("closed"), "{}", w1.stdout());
    wait_no_connection(mesh.agent(1), "from a1", from(a1.ip()));

    assert!(
        echo_once(&a1.pod, target).is_err(),
        "a new connection from a1 got an echo"
    );
    wait_failure_above(mesh.agent(1), "AuthzDenied", "default/b", before);

    assert!(
        w2.is_running(),
        "a2's connection was closed too: {}",
        w2.stdout()
    );
    wait_connection(mesh.agent(1), "from a2", from(a2.ip()));
    echo_once(&a2.pod, target).expect("a2 is still allowed");
    w2.kill();
}

/// Switching the mesh to `defaultPolicy: DENY` (a MeshConfig change, no policy resource)
/// closes every open connection to `b`, from another node (`a`, HBONE) and from its own node
/// (`c`, handed over inside node-2's agent), within a few seconds.
#[test]
fn default_deny_closes_open_connections_from_both_nodes() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .pod(PodDef::mesh("c", 1, "client-c"))
        .start()
        .expect("starting two nodes");
    mesh.serve_echo("b", ECHO_PORT);
    let (a, b, c) = (mesh.pod("a"), mesh.pod("b"), mesh.pod("c"));
    let target = b.addr(ECHO_PORT);
    let (mut wa, ok_a) = watch(&a.pod, target);
    let (mut wc, ok_c) = watch(&c.pod, target);
    assert!(ok_a && ok_c, "{} {}", wa.stderr(), wc.stderr());
    let to_b = |c: &serde_json::Value| c["pod"] == "default/b" && c["direction"] == "inbound";
    let remote = wait_connection(mesh.agent(1), "a -> b", |c| {
        to_b(c) && c["transport"] == "hbone"
    });
    assert_eq!(remote["peerIdentity"], a.spiffe_id(), "{remote}");
    let local = wait_connection(mesh.agent(1), "c -> b", |c| {
        to_b(c) && c["transport"] == "local"
    });
    assert_eq!(local["peerIdentity"], c.spiffe_id(), "{local}");

    let start = Instant::now();
    apply(&mesh, &mesh_config("  defaultPolicy: DENY\n"));
    for (who, w) in [("a", &mut wa), ("c", &mut wc)] {
        let closed = mesh_tests::wait_until(Duration::from_secs(5), || !w.is_running());
        assert!(
            closed,
            "{who}'s connection is still open {:?} after defaultPolicy: DENY",
            start.elapsed()
        );
    }
    wait_no_connection(mesh.agent(1), "to b", to_b);
    assert!(echo_once(&a.pod, target).is_err(), "a got an echo");
    assert!(echo_once(&c.pod, target).is_err(), "c got an echo");
}
