//! What `mesh-agent status` and `/config_dump` show about HTTP: each port's protocol, the
//! Routes in force with this node's requests per rule, and request security per pod.

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

/// `mesh-agent status` lists, per pod whose requests are judged one by one, its HTTP
/// policies and JWT issuers with what was allowed and denied (`requestSecurity`), and the
/// decisions are Prometheus counters too.
#[test]
fn status_shows_request_security_per_pod_with_decisions() {
    let policy = "---\napiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only}\nspec:\n  selector: {app: web}\n  action: ALLOW\n  rules: [{to: {methods: [GET]}}]\n";
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + policy));
    let url = format!("http://{VIP}/status/200");
    for _ in 0..2 {
        assert_eq!(show(&mesh.client, &url, &[]).status, 200);
    }
    assert_eq!(show(&mesh.client, &url, &["--method", "POST"]).status, 403);
    let status = mesh.node.status_json().unwrap();
    let pods = status["requestSecurity"].as_array().unwrap();
    assert_eq!(
        pods.len(),
        1,
        "only web-v1 has request-level policy: {pods:?}"
    );
    assert_eq!(pods[0]["workload"], "default/web-v1", "{pods:?}");
    let policy = &pods[0]["httpPolicies"][0];
    assert_eq!(policy["policy"], "default/get-only ALLOW", "{policy}");
    assert_eq!(policy["allowed"], 2, "{policy}");
    // A request no ALLOW policy matched is denied without a deciding policy.
    assert_eq!(pods[0]["withoutPolicy"]["denied"], 1, "{pods:?}");
    let table = mesh.node.cli_ok(&["status"]).unwrap();
    assert!(table.contains("REQUEST SECURITY"), "{table}");
    assert!(table.contains("default/get-only ALLOW"), "{table}");
    let metrics = mesh_tests::two_nodes::metrics(&mesh.node).unwrap();
    assert!(
        metrics.contains("mesh_request_authz_total{destination_workload_namespace=\"default\",destination_workload=\"web-v1\",policy=\"default/get-only\",decision=\"allow\"} 2"),
        "{metrics}"
    );
}
