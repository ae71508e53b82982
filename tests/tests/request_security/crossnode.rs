//! The same policies across two nodes: a request from another node arrives over HBONE and
//! is judged by the destination's agent; one from the destination's node is judged by that
//! node's proxy on its way out.

use mesh_tests::jwt::{claims, merged, now};
use mesh_tests::require_root;
use mesh_tests::two_nodes::{PodDef, TwoNodes};
use mesh_tests::Pod;
use serde_json::json;

use super::support::*;

/// The Service of these tests (its own VIP, HTTP on port 80).
const CROSS_VIP: &str = "10.96.0.48";

/// `client` on node-1, `neighbour` and `web` on node-2 (web serving HTTP as `web`), Service
/// `web` at [`CROSS_VIP`], and `policies`.
fn two_nodes(policies: &str) -> TwoNodes {
    let service = format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  vips: [\"{CROSS_VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}]\n  selector: {{app: web}}\n"
    );
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(PodDef::mesh("neighbour", 1, "neighbour"))
        .pod(PodDef::mesh("web", 1, "web"))
        .config(&(service + policies))
        .start()
        .expect("starting two nodes");
    mesh.serve_http("web", APP_PORT, "web");
    mesh
}

/// Every way to web in [`two_nodes`]: `(way, client pod, base URL)`.
fn ways(mesh: &TwoNodes) -> [(&'static str, &Pod, String); 4] {
    let to_pod = format!("http://{}:{APP_PORT}", mesh.pod("web").ip());
    let via_service = format!("http://{CROSS_VIP}");
    let (client, neighbour) = (&mesh.pod("client").pod, &mesh.pod("neighbour").pod);
    [
        ("over HBONE via the Service", client, via_service.clone()),
        ("over HBONE to the pod", client, to_pod.clone()),
        ("same node via the Service", neighbour, via_service),
        ("same node to the pod", neighbour, to_pod),
    ]
}

/// An expired token of the issuer, as an `Authorization` header.
fn expired(issuer: &Issuer) -> String {
    bearer(&issuer.ec.sign(&merged(
        &claims(ISSUER, "alice", AUDIENCE),
        &json!({"exp": now() - 3600, "groups": ["admins"]}),
    )))
}

/// From node-1 over HBONE and from node-2 itself, through the Service and straight to the
/// pod: methods, paths and a token's claims decide each request alike (200, 403 `RBAC`, 401
/// `JWT`), and refused requests never reach the app. The policy: GET `/public/*` for
/// anyone, GET `/private/*` for tokens with group `admins`.
#[test]
fn the_same_policies_hold_across_nodes_over_hbone_and_on_the_same_node() {
    require_root();
    let issuer = Issuer::generate();
    let rules = format!(
        "  - to: {{methods: [GET], paths: [\"/public/*\"]}}\n  - from: {{requestPrincipals: [\"{ISSUER}/*\"]}}\n    to: {{methods: [GET], paths: [\"/private/*\"]}}\n    when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]\n"
    );
    let mesh = two_nodes(
        &(issuer.request_authentication("web-jwt", "") + &web_policy("web-http", "ALLOW", &rules)),
    );
    let admin = bearer(&issuer.token("alice", &json!({"groups": ["admins"]})));
    let dev = bearer(&issuer.token("bob", &json!({"groups": ["dev"]})));
    let expired = expired(&issuer);
    let ways = ways(&mesh);
    for (way, pod, base) in &ways {
        let request = |method: &str, path: &str, extra: &[&str]| {
            let url = format!("{base}{path}");
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
    assert_eq!(served_on(web, "/public/a"), ways.len() as u64);
    assert_eq!(served_on(web, "/private/a"), ways.len() as u64);
}

/// Requests from node-1 while web has no request-level security (node-1 pools its HBONE
/// connections to node-2, relayed there as bytes): once a RequestAuthentication applies to
/// web, a request with an expired token is refused with 401 whether it goes on a client
/// connection already open or a new one, never served over a connection that was pooled
/// before.
#[test]
fn authentication_added_later_applies_to_pooled_hbone_connections() {
    require_root();
    let issuer = Issuer::generate();
    let mesh = two_nodes("");
    let expired = expired(&issuer);
    let token: &[&str] = &["-H", &expired];
    let ways = ways(&mesh);
    let open: Vec<_> = ways
        .iter()
        .map(|(way, pod, base)| (*way, *pod, format!("{base}/late"), token))
        .collect();
    let mut clients = KeepAliveClients::start(2, &open);
    for (way, status, _) in clients.statuses(1) {
        assert_eq!(status, 200, "{way}: no RequestAuthentication yet");
    }
    mesh.apply(&issuer.request_authentication("web-jwt", ""))
        .unwrap();
    clients.release();
    for (way, status, flags) in clients.statuses(2) {
        assert_eq!(
            (status, flags),
            (401, json!("JWT")),
            "{way}, open connection"
        );
    }
    for (way, pod, base) in &ways {
        let r = show(pod, &format!("{base}/late"), token);
        assert_jwt_refused(&r, &format!("{way}, new connection"));
    }
    let web = &mesh.pod("web").pod;
    assert_eq!(served_on(web, "/late"), ways.len() as u64);
}
