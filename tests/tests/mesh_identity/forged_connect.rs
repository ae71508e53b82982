//! The HBONE server side, spoken to directly with the tests' own client (`hbone`) from a
//! pod outside the mesh to `b`'s HBONE port. The server serves only its own pods, for
//! authorized peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mesh_tests::require_root;
use mesh_tests::two_nodes::TwoNodes;

use crate::hbone::{issue, Client, Outcome};
use crate::support::*;

/// With a valid certificate for `sa/forger`, from pod `h` outside the mesh, to `b`'s HBONE
/// port (the server must present `b`'s identity):
/// - CONNECT to an address that is no pod (421), to a pod on the other node (421), to
///   another pod of the same node with another identity than the one `b`'s server
///   presented (421), to something that is not `ip:port` (400), each counted as
///   `HboneTargetRefused`; CONNECT to the proxy's own ports and a GET are not tunnelled;
/// - CONNECT to `b` while an ALLOW policy names only `a`: 403; once it names `forger` too:
///   200, and bytes flow through to `b`'s echo server;
/// - without a client certificate nothing gets through.
#[test]
fn hbone_server_serves_only_its_own_pods_to_authorized_peers() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .pod(PodDef::mesh("b2", 1, "web2"))
        .pod(PodDef::plain("h"))
        .start()
        .expect("starting two nodes");
    for pod in ["a", "b", "b2"] {
        mesh.serve_echo(pod, ECHO_PORT);
    }
    let (credential, bundle) = issue(&mesh.cp, "forger");
    let forger = credential.id().as_str().to_owned();
    let (a, b, b2) = (mesh.pod("a"), mesh.pod("b"), mesh.pod("b2"));
    let client = Client {
        from: &mesh.pod("h").pod,
        credential: Some(credential.clone()),
        bundle: bundle.clone(),
    };
    let hbone = b.addr(HBONE_PORT);
    let b_id = b.spiffe_id();
    let nobody = match b.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], 250)), ECHO_PORT)
        }
        IpAddr::V6(_) => unreachable!("pods have IPv4 addresses"),
    };
    let expect_status =
        |target: &str, want: u16, why: &str| match client.connect(hbone, &b_id, target, b"") {
            Outcome::Status(got, _) => assert_eq!(got, want, "CONNECT {target} ({why})"),
            Outcome::Failed(e) => panic!("CONNECT {target} ({why}): expected {want}, got {e}"),
        };
    let refused_before = failure_count(mesh.agent(1), "HboneTargetRefused", "default/b");
    expect_status(&nobody.to_string(), 421, "no pod there");
    expect_status(
        &a.addr(ECHO_PORT).to_string(),
        421,
        "a pod of the other node",
    );
    expect_status(
        &b2.addr(ECHO_PORT).to_string(),
        421,
        "a pod with another identity",
    );
    expect_status("not-an-address", 400, "malformed");
    let refused = failure_count(mesh.agent(1), "HboneTargetRefused", "default/b");
    assert_eq!(refused - refused_before, 4, "HboneTargetRefused on b");
    // The proxy's own ports are no tunnel destinations (that would loop through the agent).
    for port in [HBONE_PORT, 15006, 15001] {
        let target = b.addr(port).to_string();
        match client.connect(hbone, &b_id, &target, b"loop") {
            Outcome::Status(200, _) => panic!("CONNECT {target} (a proxy port) was tunnelled"),
            other => eprintln!("CONNECT {target}: {other:?}"),
        }
    }
    // Only CONNECT opens a tunnel.
    let b_echo = b.addr(ECHO_PORT).to_string();
    match client.request(hbone, &b_id, http::Method::GET, &b_echo, b"") {
        Outcome::Status(200, _) => panic!("GET through the HBONE port answered 200"),
        other => eprintln!("GET http://{b_echo}/ on the HBONE port: {other:?}"),
    }

    apply(
        &mesh,
        &authz_policy(
            "default",
            "allow-a",
            &format!(
                "  selector: {{app: web}}\n  action: ALLOW\n  rules:\n  - from: {{principals: [\"{}\"]}}\n",
                a.spiffe_id()
            ),
        ),
    );
    let denied_before = failure_count(mesh.agent(1), "AuthzDenied", "default/b");
    expect_status(&b_echo, 403, "only a is allowed");
    wait_failure_above(mesh.agent(1), "AuthzDenied", "default/b", denied_before);

    apply(
        &mesh,
        &authz_policy(
            "default",
            "allow-a",
            &format!(
                "  selector: {{app: web}}\n  action: ALLOW\n  rules:\n  - from: {{principals: [\"{}\", \"{forger}\"]}}\n",
                a.spiffe_id()
            ),
        ),
    );
    let payload = marker("through-the-tunnel");
    match client.connect(hbone, &b_id, &b_echo, payload.as_bytes()) {
        Outcome::Status(200, echoed) => {
            assert_eq!(String::from_utf8_lossy(&echoed), payload, "the echo")
        }
        other => panic!("CONNECT {b_echo} (allowed): {other:?}"),
    }

    let anonymous = Client {
        from: client.from,
        credential: None,
        bundle,
    };
    match anonymous.connect(hbone, &b_id, &b_echo, b"x") {
        Outcome::Status(200, echoed) if !echoed.is_empty() => {
            panic!("a client without certificate got through: {echoed:?}")
        }
        other => eprintln!("without a client certificate: {other:?}"),
    }
}
