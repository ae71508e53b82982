//! Balancing across two nodes: the client on node-1, every endpoint on node-2, each request
//! or connection carried over HBONE (mutual TLS between the agents). Weights hold per
//! request as on one node, and an endpoint on node-2 that refuses connections (refused by
//! its pod, behind node-2's agent) is hidden from the client by node-1's connect retry.

use mesh_tests::two_nodes::{mesh_config, metrics, sum_samples, PodDef, TwoNodes};

use super::support::*;

/// Service `retry`: light, heavy and dead, round robin; port 80 HTTP, port 81 TCP (both to
/// [`APP_PORT`]).
const RETRY_VIP: &str = "10.96.0.41";

/// `client` on node-1; `light`, `heavy` (serving, label app=web: Service `web`, weighted)
/// and `dead` (nothing listening) on node-2, all three labelled `tier: back` (Service
/// `retry`). Health checks too lax to call `dead` unhealthy within a test. Workload weights:
/// light 100, heavy 300.
fn setup() -> TwoNodes {
    let back = |name: &str, app: &str| {
        PodDef::mesh(name, 1, "web")
            .label("app", app)
            .label("tier", "back")
    };
    let services = service("http", "{policy: weighted}", "")
        + &format!(
            "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: retry}}\nspec:\n  vips: [\"{RETRY_VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}, {{port: 81, targetPort: {APP_PORT}, protocol: tcp}}]\n  selector: {{tier: back}}\n  loadBalancer: {{policy: round_robin}}\n"
        )
        + &mesh_config(
            "  healthCheck: {intervalMs: 60000, timeoutMs: 1000, unhealthyThreshold: 1000}\n",
        );
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(back("light", "web"))
        .pod(back("heavy", "web"))
        .pod(back("dead", "dead"))
        .config(&services)
        .start()
        .expect("starting two nodes");
    for name in ["light", "heavy"] {
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
/// the requests and connections would fail).
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
        let url = format!("http://{RETRY_VIP}:{port}/");
        let summary = load_url(client, &url, n as usize, extra);
        let tries_on_dead = resets_sent(dead) - before;
        eprintln!("port {port}: {n} requests, {tries_on_dead} refused tries on dead: {summary}");
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
    }
}
