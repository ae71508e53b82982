//! `meshctl rules` for the original design's security rule (an AuthorizationPolicy, a
//! RequestAuthentication and a PeerAuthentication in one file), and the warning `meshctl
//! apply` and `rules add` print for HTTP policy rules on ports the agents never parse as HTTP.

use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{MeshNode, NODE};
use mesh_tests::require_root;
use std::process::Output;

use crate::support::*;

/// Destination service `orders` in namespace `shop`: HTTP on 80 -> 8080, TCP on 9000, and
/// its one workload (on another node, so this node's agent probes nothing).
const SHOP: &str = "\
apiVersion: mesh/v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  vips: [10.96.0.50]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: http}, {name: raw, port: 9000}]
  selector: {app: orders}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: orders-1, namespace: shop}
spec: {uid: orders-1, ips: [10.250.0.50], node: node-2, serviceAccount: orders, labels: {app: orders}}
";

/// The original design's rule: service `frontend` (namespace `web`) may call `orders`
/// (namespace `shop`) with GET and POST only, with a JWT of issuer.example, over mTLS only.
const SECURITY_RULE: &str = r#"
apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {name: orders-from-frontend, namespace: shop}
spec:
  selector: {app: orders}
  action: ALLOW
  rules:
  - from:
      principals: ["spiffe://cluster.local/ns/web/sa/frontend"]
      requestPrincipals: ["https://issuer.example/*"]
    to:
      ports: [8080]
      methods: [GET, POST]
---
apiVersion: mesh/v1
kind: RequestAuthentication
metadata: {name: orders-jwt, namespace: shop}
spec:
  selector: {app: orders}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [orders]
    jwks: '{"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1", "x": "mAp0yNQhBwFC2du4EPYpyaixfv5kfm2L9NXSqg-Jmzs"}]}'
---
apiVersion: mesh/v1
kind: PeerAuthentication
metadata: {name: orders-strict, namespace: shop}
spec:
  selector: {app: orders}
  mode: STRICT
"#;

/// A TCP route of `shop`, so `rules list security` can be seen to leave traffic rules out.
const ROUTE: &str = "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: orders, namespace: shop}\n\
spec:\n  service: orders\n  rules:\n  - backends: [{service: orders}]\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `meshctl <args> -f <file holding yaml>`, whatever the exit code.
fn with_file(cp: &ControlPlane, args: &[&str], yaml: &str) -> Output {
    let file = write_temp(yaml);
    let path = file.path().display().to_string();
    let args: Vec<&str> = args.iter().copied().chain(["-f", &path]).collect();
    cp.meshctl(&args).unwrap()
}

/// The security rule file goes in with `rules add` (each of the three kinds), `rules list
/// security` lists the three and no Route, the agent ACKs the config holding them, and a
/// kind that is no rule is still refused, by meshctl and by the control plane.
#[test]
fn rules_add_takes_the_security_rule_of_three_kinds() {
    require_root();
    let cp = ControlPlane::start_embedded().expect("starting mesh-control");
    cp.apply(SHOP).unwrap();
    let node = MeshNode::start_with_control_plane(NODE, &[cp.url()], &[]).unwrap();
    wait_synced(&cp, &node);

    let added = with_file(&cp, &["rules", "add"], SECURITY_RULE);
    assert!(added.status.success(), "{}", stderr(&added));
    assert_eq!(
        String::from_utf8_lossy(&added.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "AuthorizationPolicy shop/orders-from-frontend created",
            "RequestAuthentication shop/orders-jwt created",
            "PeerAuthentication shop/orders-strict created",
        ]
    );
    // Its HTTP rule is on an HTTP port: nothing to warn about.
    assert_eq!(stderr(&added), "");
    let route = with_file(&cp, &["rules", "add"], ROUTE);
    assert!(route.status.success(), "{}", stderr(&route));

    for namespace in ["", "shop"] {
        let listed = cp
            .meshctl_ok(&["rules", "list", "security", "-n", namespace])
            .unwrap();
        let rows: Vec<(&str, &str)> = listed
            .lines()
            .skip(1)
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                (cells[0], cells[2])
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("AuthorizationPolicy", "orders-from-frontend"),
                ("RequestAuthentication", "orders-jwt"),
                ("PeerAuthentication", "orders-strict"),
            ],
            "{listed}"
        );
    }
    let elsewhere = cp
        .meshctl_ok(&["rules", "list", "security", "-n", "web"])
        .unwrap();
    assert_eq!(elsewhere.lines().nth(1), Some("(none)"), "{elsewhere}");
    // The agent took the config with all three (an ACK of the latest version, no NACK).
    wait_synced(&cp, &node);
    let status = cp_status(&cp);
    assert_eq!(
        agent_entry(&status, NODE).unwrap()["lastNack"],
        "",
        "{status}"
    );

    // Applied again: unchanged, through the same RPC.
    let again = with_file(&cp, &["rules", "add"], SECURITY_RULE);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout)
            .matches(" unchanged")
            .count(),
        3,
        "{again:?}"
    );
    let service = with_file(&cp, &["rules", "add"], SHOP);
    assert!(!service.status.success());
    assert!(
        stderr(&service).contains(
            "rules are Route, AuthorizationPolicy, RequestAuthentication, PeerAuthentication, \
             not Service"
        ),
        "{service:?}"
    );
}

/// An HTTP rule on a port no Service of the workload parses as HTTP is applied with a
/// warning naming the policy, the rule and the port (on stderr, stdout unchanged), by
/// `apply` (also a dry run) and `rules add`; the same rule on the HTTP port, or an L4 rule on
/// the TCP port, gets none.
#[test]
fn http_rules_on_tcp_ports_are_applied_with_a_warning() {
    let cp = ControlPlane::start_embedded().expect("starting mesh-control");
    cp.apply(SHOP).unwrap();
    let policy = |name: &str, action: &str, rules: &str| {
        format!(
            "apiVersion: mesh/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec: {{selector: {{app: orders}}, action: {action}, rules: {rules}}}\n"
        )
    };
    let on_tcp = policy(
        "get-only",
        "ALLOW",
        "[{to: {ports: [8080], methods: [GET]}}, {to: {ports: [9000], methods: [GET]}}, \
         {to: {ports: [9000]}}]",
    );

    let dry = with_file(&cp, &["apply", "--dry-run"], &on_tcp);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).trim(),
        "AuthorizationPolicy shop/get-only created (dry run)"
    );
    let expected = "warning: AuthorizationPolicy shop/get-only spec.rules[1] needs the HTTP \
                    request, but port 9000 is not an HTTP port (http, http2, grpc or auto) of \
                    any Service selecting its workloads: as ALLOW it never matches (it allows \
                    nothing) on port 9000\n";
    assert_eq!(stderr(&dry), expected);

    let applied = with_file(&cp, &["apply"], &on_tcp);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout).trim(),
        "AuthorizationPolicy shop/get-only created"
    );
    assert_eq!(stderr(&applied), expected);
    // Stored all the same.
    cp.meshctl_ok(&["get", "authorizationpolicy", "shop/get-only"])
        .unwrap();

    // A DENY on every port of a workload whose Services give it no HTTP port, added as a
    // rule, in the same file as that Service's change (judged on the config after it).
    let tcp_only = SHOP.replace("protocol: http", "protocol: tcp");
    let deny = policy("no-delete", "DENY", "[{to: {methods: [DELETE]}}]");
    let added = with_file(&cp, &["apply"], &format!("{tcp_only}---\n{deny}"));
    assert!(added.status.success(), "{}", stderr(&added));
    let warning = stderr(&added);
    assert!(
        warning.starts_with(
            "warning: AuthorizationPolicy shop/no-delete spec.rules[0] needs the HTTP request, \
             but its workloads have no HTTP port"
        ) && warning.ends_with(
            "as DENY it matches every connection its other fields match (it denies more) on \
             every port\n"
        ) && warning.lines().count() == 1,
        "{warning}"
    );
    let again = with_file(&cp, &["rules", "add"], &deny);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "AuthorizationPolicy shop/no-delete unchanged"
    );
    assert_eq!(stderr(&again), warning);
}
