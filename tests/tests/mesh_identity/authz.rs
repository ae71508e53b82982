//! AuthorizationPolicy, enforced by the destination's agent on HBONE connections from
//! another node (and on connections from a pod of its own node): ALLOW by principal,
//! namespace, IP block and port; DENY over ALLOW; a default-deny mesh; AUDIT. A denied
//! connection gets no data and counts as `AuthzDenied`.

use mesh_tests::require_root;
use mesh_tests::two_nodes::{self, TwoNodes};

use crate::support::*;

/// On node-1: `a1` (sa client-a) and `a2` (sa client-b) in `default`, `o` (sa client-o) in
/// namespace `other`. On node-2: `b` (app `web`) serving HTTP on 8080 and echo on 9000, and
/// `c` (sa client-c), a client on the same node, whose connections the agent hands over
/// inside itself (the policy applies there too).
fn setup(config: &str) -> TwoNodes {
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a1", 0, "client-a"))
        .pod(PodDef::mesh("a2", 0, "client-b"))
        .pod(PodDef::mesh("o", 0, "client-o").namespace("other"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .pod(PodDef::mesh("c", 1, "client-c"))
        .config(config)
        .start()
        .expect("starting two nodes");
    mesh.serve_http("b", APP_PORT, "b");
    mesh.serve_echo("b", ECHO_PORT);
    mesh
}

/// Every client pod: three on node-1, one on node-2.
const CLIENTS: [&str; 4] = ["a1", "a2", "o", "c"];

/// An ALLOW policy `allow-web` on `app: web` with `rules`.
fn allow_web(rules: &str) -> String {
    authz_policy(
        "default",
        "allow-web",
        &format!("  selector: {{app: web}}\n  action: ALLOW\n  rules:\n{rules}"),
    )
}

/// Asserts who may GET `b`:8080: `allowed` answer, every other client is refused with no
/// data, each refusal counted as `AuthzDenied` for `default/b` on node-2.
fn expect_http(mesh: &TwoNodes, allowed: &[&str], step: &str) {
    let b_url = url(mesh.pod("b").addr(APP_PORT), "/");
    for client in CLIENTS {
        let pod = &mesh.pod(client).pod;
        if allowed.contains(&client) {
            let body = try_get(pod, &b_url)
                .unwrap_or_else(|e| panic!("{step}: {client} should be allowed: {e:#}"));
            assert!(body.contains("name=b"), "{step}: {body}");
        } else {
            let before = failure_count(mesh.agent(1), "AuthzDenied", "default/b");
            let e = get_refused(pod, &b_url);
            eprintln!("{step}: {client} refused: {e}");
            wait_failure_above(mesh.agent(1), "AuthzDenied", "default/b", before);
        }
    }
}

/// ALLOW rules select clients by principal, by namespace, by IP block and by destination
/// port; replacing the policy moves access at once.
#[test]
fn allow_by_principal_namespace_ip_block_and_port() {
    require_root();
    let mesh = setup("");
    let a1_id = mesh.pod("a1").spiffe_id();
    expect_http(&mesh, &CLIENTS, "no policy");

    apply(
        &mesh,
        &allow_web(&format!("  - from: {{principals: [\"{a1_id}\"]}}\n")),
    );
    expect_http(&mesh, &["a1"], "principals [a1]");

    apply(&mesh, &allow_web("  - from: {namespaces: [other]}\n"));
    expect_http(&mesh, &["o"], "namespaces [other]");

    // Wildcard principal of the default namespace.
    apply(
        &mesh,
        &allow_web(&format!(
            "  - from: {{principals: [\"spiffe://{}/ns/default/*\"]}}\n",
            two_nodes::TRUST_DOMAIN
        )),
    );
    expect_http(&mesh, &["a1", "a2", "c"], "principals [ns/default/*]");

    let a2_ip = mesh.pod("a2").ip();
    apply(
        &mesh,
        &allow_web(&format!("  - from: {{ipBlocks: [\"{a2_ip}/32\"]}}\n")),
    );
    expect_http(&mesh, &["a2"], "ipBlocks [a2/32]");

    // Only the echo port, from anyone.
    apply(
        &mesh,
        &allow_web(&format!("  - to: {{ports: [{ECHO_PORT}]}}\n")),
    );
    expect_http(&mesh, &[], "ports [9000]");
    let b_echo = mesh.pod("b").addr(ECHO_PORT);
    for client in CLIENTS {
        echo_once(&mesh.pod(client).pod, b_echo)
            .unwrap_or_else(|e| panic!("ports [9000]: echo from {client}: {e:#}"));
    }
}

/// A DENY policy wins over a matching ALLOW. With MeshConfig `defaultPolicy: DENY` a
/// workload no ALLOW applies to is closed to everyone, and opens to what an ALLOW names.
/// An AUDIT policy changes no decision but counts the connections it matches.
#[test]
fn deny_beats_allow_default_deny_and_audit() {
    require_root();
    let mesh = setup("");
    let a2_id = mesh.pod("a2").spiffe_id();
    let a1_id = mesh.pod("a1").spiffe_id();

    apply(
        &mesh,
        &[
            allow_web("  - {}\n"),
            authz_policy(
                "default",
                "deny-a2",
                &format!(
                    "  selector: {{app: web}}\n  action: DENY\n  rules:\n  - from: {{principals: [\"{a2_id}\"]}}\n"
                ),
            ),
        ]
        .concat(),
    );
    expect_http(&mesh, &["a1", "o", "c"], "ALLOW all + DENY a2");

    delete(&mesh, "AuthorizationPolicy", "default/deny-a2");
    delete(&mesh, "AuthorizationPolicy", "default/allow-web");
    apply(&mesh, &mesh_config("  defaultPolicy: DENY\n"));
    expect_http(&mesh, &[], "defaultPolicy DENY");

    apply(
        &mesh,
        &allow_web(&format!("  - from: {{principals: [\"{a1_id}\"]}}\n")),
    );
    expect_http(&mesh, &["a1"], "defaultPolicy DENY + ALLOW a1");

    // AUDIT on every connection to b: the decisions stay (only a1 is allowed), each of the
    // four connections is counted.
    apply(
        &mesh,
        &authz_policy(
            "default",
            "audit-all",
            "  selector: {app: web}\n  action: AUDIT\n  rules:\n  - {}\n",
        ),
    );
    let before = audit_count(&mesh);
    expect_http(&mesh, &["a1"], "AUDIT all");
    let after = audit_count(&mesh);
    assert!(
        after >= before + 4,
        "4 audited connections, audit count went from {before} to {after}; metrics:\n{}",
        two_nodes::metrics(mesh.agent(1)).unwrap_or_default()
    );
}

/// `mesh_proxy_audited_connections_total` of `default/b` on node-2.
fn audit_count(mesh: &TwoNodes) -> u64 {
    let text = two_nodes::metrics(mesh.agent(1)).expect("reading /metrics");
    two_nodes::sum_samples(&text, "mesh_proxy_audited_connections_total", |labels| {
        labels.contains("pod=\"default/b\"")
    })
}
