//! Balancing across two nodes: the client on node-1, endpoints on node-2, each request or
//! connection carried over HBONE (mutual TLS between the agents). Weights hold per request
//! as on one node; an endpoint on node-2 that refuses connections (refused by its pod,
//! behind node-2's agent) is hidden from the client by node-1's connect retry; and `maglev`
//! sends a key to the same endpoint from either node (its table is built from workload
//! names, the same on every node).

use mesh_tests::two_nodes::{mesh_config, metrics, sum_samples, PodDef, TwoNodes};

use super::support::*;

/// Service `retry`: light, heavy and dead, round robin; port 80 HTTP, port 81 TCP (both to
/// [`APP_PORT`]).
const RETRY_VIP: &str = "10.96.0.41";
/// Service `sticky`: near (node-1), light and heavy (node-2), `maglev` on header `x-user`.
const STICKY_VIP: &str = "10.96.0.42";

/// `client` and `near` on node-1, `client-2` on node-2; `light`, `heavy` (serving, label
/// app=web: Service `web`, weighted) and `dead` (nothing listening) on node-2, all three
/// labelled `tier: back` (Service `retry`); near, light and heavy labelled `hash: "on"`
/// (Service `sticky`). Health checks too lax to call `dead` unhealthy within a test.
/// Workload weights: light 100, heavy 300.
fn setup() -> TwoNodes {
    let back = |name: &str, app: &str| {
        PodDef::mesh(name, 1, "web")
            .label("app", app)
            .label("tier", "back")
    };
    let hashed = |def: PodDef| def.label("hash", "\"on\"");
    let services = service("http", "{policy: weighted}", "")
        + &format!(
            "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: retry}}\nspec:\n  vips: [\"{RETRY_VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}, {{port: 81, targetPort: {APP_PORT}, protocol: tcp}}]\n  selector: {{tier: back}}\n  loadBalancer: {{policy: round_robin}}\n"
        )
        + &format!(
            "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: sticky}}\nspec:\n  vips: [\"{STICKY_VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}]\n  selector: {{hash: \"on\"}}\n  loadBalancer: {{policy: maglev, hashOn: {{header: x-user}}}}\n"
        )
        + &mesh_config(
            "  healthCheck: {intervalMs: 60000, timeoutMs: 1000, unhealthyThreshold: 1000}\n",
        );
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(PodDef::mesh("client-2", 1, "client"))
        .pod(hashed(PodDef::mesh("near", 0, "web")))
        .pod(hashed(back("light", "web")))
        .pod(hashed(back("heavy", "web")))
        .pod(back("dead", "dead"))
        .config(&services)
        .start()
        .expect("starting two nodes");
    for name in ["near", "light", "heavy"] {
        mesh.serve_http(name, APP_PORT, name);
    }
    let weighted = format!(
        "{}  weight: 100\n{}  weight: 300\n",
        mesh.pod("light").workload_yaml(),
        mesh.pod("heavy").workload_yaml()
    );
    mesh.apply(&weighted).expect("applying the weights");
    mesh
}

/// node-1's requests it sent over mutual TLS (`istio_requests_total`, reporter source).
fn requests_over_mtls(mesh: &TwoNodes) -> u64 {
    let text = metrics(mesh.agent(0)).expect("/metrics");
    sum_samples(&text, "istio_requests_total", |l| {
        l.contains("reporter=\"source\"") && l.contains("connection_security_policy=\"mutual_tls\"")
    })
}

/// Weighted 1:3 with both endpoints on the other node: 400 HTTP requests split exactly
/// 100/300 and every window of 4 requests 1/3 (smooth weighted round robin on node-1), all
/// of them over mutual TLS.
#[test]
fn weighted_splits_requests_to_another_node_one_to_three() {
    let mesh = setup();
    let client = &mesh.pod("client").pod;
    let before = requests_over_mtls(&mesh);
    let all = load(client, 400, &[]);
    assert_eq!(
        (count(&all, "light"), count(&all, "heavy")),
        (100, 300),
        "{all}"
    );
    for window in 0..5 {
        let four = load(client, 4, &[]);
        assert_eq!(
            (count(&four, "light"), count(&four, "heavy")),
            (1, 3),
            "window {window}: {four}"
        );
    }
    assert_eq!(
        requests_over_mtls(&mesh) - before,
        420,
        "HBONE carried them"
    );
}

/// `dead` on node-2 refuses every connection (its pod's kernel answers node-2's agent with
/// a reset) and stays in rotation. Over HBONE, 300 HTTP requests and 90 TCP connections
/// from node-1 all succeed, answered by light and heavy, while dead refused at least a third
/// of each (every try on it was retried on another endpoint; without the retry a third of
/// the requests and connections would fail). On the TCP port node-1 sends the app's request
/// ahead with the CONNECT (early data): a try refused by dead passes the same bytes on to
/// the next endpoint, or its answer would never come.
#[test]
fn connect_retry_hides_a_refusing_endpoint_on_another_node() {
    let mesh = setup();
    let client = &mesh.pod("client").pod;
    let dead = &mesh.pod("dead").pod;
    let health = mesh.agent(0).status_json().unwrap();
    assert!(
        !health.to_string().contains("\"unhealthy\""),
        "dead must stay in rotation: {health}"
    );
    for (port, n, extra) in [
        (80, 300u64, &[][..]),
        (81, 90, &["-H", "connection: close"][..]),
    ] {
        let before = resets_sent(dead);
        let early_before = early_data_streams(&mesh);
        let url = format!("http://{RETRY_VIP}:{port}/");
        let summary = load_url(client, &url, n as usize, extra);
        let tries_on_dead = resets_sent(dead) - before;
        let early = early_data_streams(&mesh) - early_before;
        eprintln!("port {port}: {n} requests, {tries_on_dead} refused tries on dead, {early} HBONE streams with early data: {summary}");
        assert_eq!(summary["errors"], 0, "{summary}");
        assert_eq!(summary["statuses"]["200"], n, "{summary}");
        assert_eq!(
            count(&summary, "light") + count(&summary, "heavy"),
            n,
            "{summary}"
        );
        assert!(
            tries_on_dead >= n / 3,
            "port {port}: dead was tried {tries_on_dead} times for {n}: not in rotation?"
        );
        if port == 81 {
            assert!(early > 0, "node-1 sent no early data on the TCP port");
        }
    }
}

/// node-1's HBONE streams whose CONNECT carried the app's first bytes.
fn early_data_streams(mesh: &TwoNodes) -> u64 {
    let text = metrics(mesh.agent(0)).expect("/metrics");
    sum_samples(&text, "mesh_hbone_early_data_streams_total", |_| true)
}

/// `maglev` on `x-user` with endpoints on both nodes: 30 users ask from node-1 twice and
/// from node-2 once, one connection per request. Each user reaches one endpoint, the same
/// from both nodes (node-1 reaches light and heavy over HBONE and near on its own node,
/// node-2 the other way round, yet both tables agree), and the users spread over all three
/// (heavy, weight 300 of 500, holds about 3/5 of the table).
#[test]
fn maglev_sends_a_key_to_the_same_endpoint_from_either_node() {
    let mesh = setup();
    let url = format!("http://{STICKY_VIP}/");
    let users: Vec<String> = (0..30).map(|u| format!("x-user: user-{u}")).collect();
    let node1 = served_by_each(&mesh.pod("client").pod, &url, &users);
    let node1_again = served_by_each(&mesh.pod("client").pod, &url, &users);
    let node2 = served_by_each(&mesh.pod("client-2").pod, &url, &users);
    eprintln!("from node-1: {node1:?}");
    assert_eq!(node1, node1_again, "a user moved between two requests");
    assert_eq!(node1, node2, "node-2 sent users elsewhere than node-1");
    for endpoint in ["near", "light", "heavy"] {
        assert!(node1.iter().any(|e| e == endpoint), "{node1:?}");
    }
}
