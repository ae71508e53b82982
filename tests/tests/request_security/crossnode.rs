//! The same policies across two nodes: a request from another node arrives over HBONE and
//! is judged by the destination's agent; one from the destination's node is judged by that
//! node's proxy on its way out.

use mesh_tests::jwt::{claims, merged, now};
use mesh_tests::require_root;
use mesh_tests::two_nodes::{PodDef, TwoNodes};
use serde_json::json;

use super::support::*;

/// The Service of this test (its own VIP, HTTP on port 80).
const CROSS_VIP: &str = "10.96.0.48";

/// `client` on node-1, `neighbour` and `web` on node-2 (web serving HTTP as `web`), Service
/// `web` at [`CROSS_VIP`], the issuer's RequestAuthentication and an ALLOW policy: GET
/// `/public/*` for anyone, GET `/private/*` for tokens with group `admins`.
fn setup(issuer: &Issuer) -> TwoNodes {
    let service = format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  vips: [\"{CROSS_VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}]\n  selector: {{app: web}}\n"
    );
    let rules = format!(
        "  - to: {{methods: [GET], paths: [\"/public/*\"]}}\n  - from: {{requestPrincipals: [\"{ISSUER}/*\"]}}\n    to: {{methods: [GET], paths: [\"/private/*\"]}}\n    when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]\n"
    );
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(PodDef::mesh("neighbour", 1, "neighbour"))
        .pod(PodDef::mesh("web", 1, "web"))
        .config(&service)
        .config(&issuer.request_authentication("web-jwt", ""))
        .config(&web_policy("web-http", "ALLOW", &rules))
        .start()
        .expect("starting two nodes");
    mesh.serve_http("web", APP_PORT, "web");
    mesh
}

/// From node-1 over HBONE and from node-2 itself: methods, paths and a token's claims decide
/// each request alike (200, 403 `RBAC`, 401 `JWT`), and refused requests never reach the
/// app.
#[test]
fn the_same_policies_hold_across_nodes_over_hbone_and_on_the_same_node() {
    require_root();
    let issuer = Issuer::generate();
    let mesh = setup(&issuer);
    let admin = bearer(&issuer.token("alice", &json!({"groups": ["admins"]})));
    let dev = bearer(&issuer.token("bob", &json!({"groups": ["dev"]})));
    let expired = bearer(&issuer.ec.sign(&merged(
        &claims(ISSUER, "alice", AUDIENCE),
        &json!({"exp": now() - 3600, "groups": ["admins"]}),
    )));
    for (way, from) in [("over HBONE", "client"), ("same node", "neighbour")] {
        let pod = &mesh.pod(from).pod;
        let request = |method: &str, path: &str, extra: &[&str]| {
            let url = format!("http://{CROSS_VIP}{path}");
            show(pod, &url, &[&["--method", method][..], extra].concat())
        };
        assert_served(&request("GET", "/public/a", &[]), way);
        assert_rbac_denied(&request("POST", "/public/a", &[]), way);
        assert_rbac_denied(&request("GET", "/private/a", &[]), way);
        assert_rbac_denied(&request("GET", "/private/a", &["-H", &dev]), way);
        assert_served(&request("GET", "/private/a", &["-H", &admin]), way);
        let said = assert_jwt_refused(&request("GET", "/private/a", &["-H", &expired]), way);
        assert!(said.contains("expired"), "{way}: {said}");
    }
    let web = &mesh.pod("web").pod;
    assert_eq!(served_on(web, "/public/a"), 2);
    assert_eq!(served_on(web, "/private/a"), 2);
}
