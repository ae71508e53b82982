//! What `mesh-agent status` and `/config_dump` show about HTTP: each port's protocol and the
//! Routes in force with this node's requests per rule.

use mesh_tests::observe::get;

use super::support::*;

#[test]
fn status_and_config_dump_count_requests_per_rule() {
    let route = "---\napiVersion: mesh/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n  - name: api\n    match: {path: {prefix: /api}}\n    backends: [{service: web, subset: v2}]\n";
    let mesh = Versions::new(&["v1", "v2"], &(web_service("http", &["v1", "v2"]) + route));
    for _ in 0..3 {
        assert_eq!(
            get(&mesh.client, &format!("http://{VIP}/api/x")).name,
            "web-v2"
        );
    }
    for _ in 0..2 {
        get(&mesh.client, &format!("http://{VIP}/other"));
    }
    let status = mesh.node.status_json().unwrap();
    let routes = &status["routes"];
    assert_eq!(routes[0]["route"], "default/web", "{routes}");
    assert_eq!(routes[0]["rules"][0]["requests"], 3, "{routes}");
    assert_eq!(
        routes[0]["rules"][0]["rule"], "api: /api* -> web/v2",
        "{routes}"
    );
    assert_eq!(routes[0]["unmatchedRequests"], 2, "{routes}");
    let web = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "default/web")
        .unwrap();
    assert_eq!(web["ports"][0], "80->8080/http", "{web}");
    let table = mesh.node.cli_ok(&["status"]).unwrap();
    assert!(table.contains("ROUTES"), "{table}");
    assert!(table.contains("api: /api* -> web/v2"), "{table}");

    let (code, body) = mesh_tests::http::http_get(mesh.node.admin(), "/config_dump").unwrap();
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        dump["routeRequests"][0]["rules"][0]["requests"], 3,
        "{dump}"
    );
}
