//! Trust: an agent whose certificates come from another CA is not a peer.

use mesh_tests::control::ControlPlane;
use mesh_tests::require_root;
use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::TwoNodes;
use serde_json::Value;

use crate::hbone::{issue, Client, Outcome};
use crate::support::*;

fn fingerprints(status: &Value) -> Vec<String> {
    status["identity"]["trustBundle"]
        .as_array()
        .map(|roots| {
            roots
                .iter()
                .map(|r| r["fingerprint"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// node-1 joins one control plane, node-2 another (its own data dir, so its own CA); both
/// have the same Workloads. Each agent holds a certificate for its pod, but their trust
/// bundles have nothing in common, and neither `a` (node-1) -> `b` (node-2) nor `b` -> `a`
/// gets an answer: the attempts go to the HBONE port and fail in the TLS handshake
/// (`HboneHandshake` on the client's side).
///
/// The control: each node's HBONE server does serve a client whose certificate comes from
/// its own CA (our own HBONE client, from a pod outside the mesh, 200 and an echo), and
/// refuses the same client with a certificate of the other CA.
#[test]
fn agents_with_certificates_of_different_cas_cannot_talk() {
    require_root();
    let other = ControlPlane::start_embedded().expect("starting the second control plane");
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .pod(PodDef::plain("h"))
        .node2_control_plane(other)
        .start()
        .expect("starting two nodes on two control planes");
    for pod in ["a", "b"] {
        mesh.serve_http(pod, APP_PORT, pod);
        mesh.serve_echo(pod, ECHO_PORT);
    }
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));

    let (s1, s2) = (status(mesh.agent(0)), status(mesh.agent(1)));
    let (f1, f2) = (fingerprints(&s1), fingerprints(&s2));
    assert!(
        !f1.is_empty() && !f2.is_empty(),
        "{} / {}",
        s1["identity"],
        s2["identity"]
    );
    assert!(
        f1.iter().all(|f| !f2.contains(f)),
        "the two control planes share a root: {f1:?} / {f2:?}"
    );

    let handshakes = (
        failure_count(mesh.agent(0), "HboneHandshake", "default/a"),
        failure_count(mesh.agent(1), "HboneHandshake", "default/b"),
    );
    let (errors, capture) = sniff(mesh.bridge.name(), || {
        [
            get_refused(&a.pod, &url(b.addr(APP_PORT), "/")),
            get_refused(&b.pod, &url(a.addr(APP_PORT), "/")),
        ]
    })
    .unwrap();
    eprintln!("a -> b: {}\nb -> a: {}", errors[0], errors[1]);
    assert!(
        capture.syns_to_port(HBONE_PORT) >= 2,
        "both attempts should have tried HBONE: {}",
        capture.summary()
    );
    assert_eq!(capture.syns_to_port(APP_PORT), 0, "{}", capture.summary());
    wait_failure_above(mesh.agent(0), "HboneHandshake", "default/a", handshakes.0);
    wait_failure_above(mesh.agent(1), "HboneHandshake", "default/b", handshakes.1);

    // The control, with our own client from `h`.
    let cps = [&mesh.cp, &mesh.other_cps[0]];
    let creds = [issue(cps[0], "probe"), issue(cps[1], "probe")];
    let h = &mesh.pod("h").pod;
    for (node, pod) in [(0, a), (1, b)] {
        let target = pod.addr(ECHO_PORT).to_string();
        let server = pod.addr(HBONE_PORT);
        let own = Client {
            from: h,
            credential: Some(creds[node].0.clone()),
            bundle: creds[node].1.clone(),
        };
        match own.connect(server, &pod.spiffe_id(), &target, b"same-ca") {
            Outcome::Status(200, echoed) => assert_eq!(echoed, b"same-ca"),
            other => panic!(
                "{}'s server with a certificate of its own CA: {other:?}",
                NODE_NAMES[node]
            ),
        }
        let foreign = Client {
            from: h,
            credential: Some(creds[1 - node].0.clone()),
            bundle: creds[node].1.clone(),
        };
        match foreign.connect(server, &pod.spiffe_id(), &target, b"other-ca") {
            Outcome::Status(200, echoed) if !echoed.is_empty() => panic!(
                "{}'s server took a certificate of the other CA",
                NODE_NAMES[node]
            ),
            other => eprintln!(
                "{} with the other CA's certificate: {other:?}",
                NODE_NAMES[node]
            ),
        }
    }
}
