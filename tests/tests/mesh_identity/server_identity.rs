//! The client side of HBONE verifies the server: the destination must present the SPIFFE ID
//! of the workload the connection is for, not just any certificate of the mesh's CA.

use std::net::SocketAddr;

use mesh_tests::require_root;
use mesh_tests::two_nodes::{TwoNodes, TRUST_DOMAIN};

use crate::hbone::{issue, FakeServer};
use crate::support::*;

/// Workload `victim` (service account `victim`) is declared on node-2 at the address of pod
/// `r`, which is outside the mesh and runs an HBONE server of ours with a certificate the
/// mesh's CA issued for `sa/rogue`. `a` (node-1) connecting to that address gets nothing:
/// node-1's agent refuses the server (`HboneHandshake`), no CONNECT reaches it. With a
/// certificate for `sa/victim` instead (the control), the same connection goes through: the
/// server sees the CONNECT, from `a`'s own SPIFFE ID, and `a` gets its answer.
#[test]
fn the_client_agent_refuses_a_server_with_another_identity() {
    require_root();
    let mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::plain("r"))
        .start()
        .expect("starting two nodes");
    let (a, r) = (mesh.pod("a"), mesh.pod("r"));
    let victim = format!(
        "---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: victim, namespace: default}}\nspec:\n  uid: victim-uid\n  ips: [\"{}\"]\n  node: node-2\n  serviceAccount: victim\n",
        r.ip()
    );
    apply(&mesh, &victim);
    let listen = SocketAddr::new(r.ip(), HBONE_PORT);
    let target = url(r.addr(APP_PORT), "/");

    let (rogue, bundle) = issue(&mesh.cp, "rogue");
    let before = failure_count(mesh.agent(0), "HboneHandshake", "default/a");
    {
        let server = FakeServer::start(&r.pod, listen, &rogue, &bundle, "rogue").unwrap();
        let e = get_refused(&a.pod, &target);
        eprintln!("a -> victim served as rogue: {e}");
        wait_failure_above(mesh.agent(0), "HboneHandshake", "default/a", before);
        let events = server.events();
        assert!(
            !events.iter().any(|e| e.starts_with("CONNECT")),
            "a CONNECT reached a server with the wrong identity: {events:?}"
        );
        assert!(!events.is_empty(), "node-1's agent never tried the server");
    }

    let (victim_credential, _) = issue(&mesh.cp, "victim");
    let server = FakeServer::start(&r.pod, listen, &victim_credential, &bundle, "victim").unwrap();
    let body = get(&a.pod, &target);
    assert_eq!(body, "victim");
    let events = server.events();
    let expected = format!(
        "CONNECT {} from spiffe://{TRUST_DOMAIN}/ns/default/sa/client-a",
        r.addr(APP_PORT)
    );
    assert!(
        events.contains(&expected),
        "{events:?}, expected {expected:?}"
    );
}
