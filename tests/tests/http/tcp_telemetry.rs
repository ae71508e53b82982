//! Istio's TCP metrics and the access log for connections relayed as bytes (a `tcp` port).

use std::time::Duration;

use mesh_tests::observe::get;
use mesh_tests::two_nodes::{metrics, sum_samples};
use mesh_tests::{wait_until, TempDir};

use super::support::*;

#[test]
fn tcp_connections_are_counted_and_logged() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("access.log");
    let config = format!(
        "{}---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  observability: {{accessLog: {{enabled: true, path: {}}}}}\n",
        web_service("tcp", &["v1"]),
        log.display()
    );
    let mesh = Versions::new(&["v1"], &config);
    for _ in 0..3 {
        assert_eq!(get(&mesh.client, &format!("http://{VIP}/")).name, "web-v1");
    }
    let labelled = |l: &str| {
        l.contains("destination_service_name=\"web\"")
            && l.contains("source_workload=\"client\"")
            && l.contains("destination_workload=\"web\"")
            && l.contains("connection_security_policy=\"local\"")
    };
    // Closed connections are counted when both directions of the relay are done, a moment
    // after the client has its answer.
    let closed = wait_until(Duration::from_secs(5), || {
        let text = metrics(&mesh.node).unwrap();
        sum_samples(&text, "istio_tcp_connections_closed_total", labelled) == 3
    });
    let text = metrics(&mesh.node).unwrap();
    assert!(closed, "{text}");
    assert_eq!(
        sum_samples(&text, "istio_tcp_connections_opened_total", labelled),
        3,
        "{text}"
    );
    // Each GET is a request head one way and the answer the other: never zero.
    assert!(
        sum_samples(&text, "istio_tcp_sent_bytes_total", labelled) > 3 * 20,
        "{text}"
    );
    assert!(
        sum_samples(&text, "istio_tcp_received_bytes_total", labelled) > 3 * 40,
        "{text}"
    );
    // A tcp port makes no request metrics.
    assert_eq!(
        sum_samples(&text, "istio_requests_total", |_| true),
        0,
        "{text}"
    );

    // Each line is written right after its connection is counted.
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until(Duration::from_secs(5), || read().len() >= 3);
    let lines = read();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["protocol"], "tcp", "{line}");
        assert_eq!(
            line["upstream_host"],
            format!("{}:{APP_PORT}", mesh.webs[0].ip()),
            "{line}"
        );
        assert_eq!(
            line["destination_service"], "web.default.svc.cluster.local",
            "{line}"
        );
        assert!(line["bytes_received"].as_u64().unwrap() > 40, "{line}");
    }
}
