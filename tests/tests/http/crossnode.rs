//! HTTP routed per request across two nodes: upstream HTTP connections ride HBONE (mutual TLS
//! on the wire, never plaintext HTTP between nodes), requests of one HTTP/2 connection spread
//! over endpoints on both nodes, and upstream connections are pooled and reused.

use mesh_tests::sniff::sniff;
use mesh_tests::two_nodes::{metrics, sum_samples, PodDef, TwoNodes};
use mesh_tests::{require_root, Pod};

use super::support::*;

/// The HBONE port.
const HBONE_PORT: u16 = 15008;

/// `x-canary: true` goes to subset v2 (on node-2), paths under `/all` to any endpoint of
/// `web`, everything else to subset v1 (on node-1).
const ROUTE: &str = "  rules:\n  - name: canary\n    match: {headers: {x-canary: \"true\"}}\n    backends: [{service: web, subset: v2}]\n  - name: all\n    match: {path: {prefix: /all}}\n    backends: [{service: web}]\n  - name: main\n    backends: [{service: web, subset: v1}]\n";

/// `client` and `web1` (version v1) on node-1, `web2a` and `web2b` (version v2) on node-2,
/// each web pod serving HTTP named after itself behind Service `web` (protocol http).
fn setup() -> TwoNodes {
    let web = |name: &str, node: usize, version: &str| {
        PodDef::mesh(name, node, "web")
            .label("app", "web")
            .label("version", version)
    };
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(web("web1", 0, "v1"))
        .pod(web("web2a", 1, "v2"))
        .pod(web("web2b", 1, "v2"))
        .config(&(web_service("http", &["v1", "v2"]) + &web_route(ROUTE)))
        .start()
        .expect("starting two nodes");
    for name in ["web1", "web2a", "web2b"] {
        mesh.serve_http(name, APP_PORT, name);
    }
    mesh
}

fn pod<'a>(mesh: &'a TwoNodes, name: &str) -> &'a Pod {
    &mesh.pod(name).pod
}

/// A string no packet contains by chance.
fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

/// `istio_requests_total` of node `node` with all of `labels` (`name="value"` each).
fn requests_counted(mesh: &TwoNodes, node: usize, labels: &[&str]) -> u64 {
    let text = metrics(mesh.agent(node)).expect("/metrics");
    sum_samples(&text, "istio_requests_total", |l| {
        labels.iter().all(|want| l.contains(want))
    })
}

/// Canary requests (header `x-canary: true`) from node-1 reach only the v2 pods on node-2, in
/// turn; the others reach the v1 pod on node-1. On the bridge between the nodes there is only
/// TLS to the HBONE port: no connection to the app port, no request path, no header, no
/// server name, no HTTP at all. node-1's request metrics count the canary requests as
/// `mutual_tls` and the same-node ones as `local`.
#[test]
fn header_routed_requests_cross_nodes_over_mutual_tls_only() {
    require_root();
    let mesh = setup();
    let client = pod(&mesh, "client");
    let canary_path = format!("/{}", marker("canary"));
    let stable_path = format!("/{}", marker("stable"));

    let (loads, capture) = sniff(mesh.bridge.name(), || {
        let canary = load(
            client,
            &format!("http://{VIP}{canary_path}"),
            20,
            &["-H", "x-canary: true"],
        );
        let stable = load(client, &format!("http://{VIP}{stable_path}"), 10, &[]);
        (canary, stable)
    })
    .unwrap();

    let (canary, stable) = loads;
    assert_eq!(canary["statuses"]["200"], 20, "{canary}");
    assert_eq!(
        canary["served_by"],
        serde_json::json!({"web2a": 10, "web2b": 10}),
        "canary requests go to v2 on node-2, in turn: {canary}"
    );
    assert_eq!(stable["statuses"]["200"], 10, "{stable}");
    assert_eq!(
        stable["served_by"],
        serde_json::json!({"web1": 10}),
        "{stable}"
    );
    let on = |name: &str, path: &str| served_on(pod(&mesh, name), path);
    assert_eq!(
        on("web2a", &canary_path) + on("web2b", &canary_path),
        20,
        "the apps on node-2 saw every canary request"
    );
    assert_eq!(on("web1", &stable_path), 10);
    assert_eq!(on("web1", &canary_path), 0);

    let summary = capture.summary();
    assert!(
        capture.payload_to_port(HBONE_PORT) > 0,
        "no payload to the HBONE port: {summary}"
    );
    assert_eq!(
        capture.syns_to_port(APP_PORT),
        0,
        "a connection to the app port crossed the bridge: {summary}"
    );
    for (what, bytes) in [
        ("the canary path", canary_path.as_bytes()),
        ("the stable path", stable_path.as_bytes()),
        ("the canary header", b"x-canary".as_slice()),
        ("a server's name", b"web2a".as_slice()),
        ("a server's name", b"web2b".as_slice()),
        ("an HTTP/1.1 message", b"HTTP/1.1".as_slice()),
        ("an HTTP/2 preface", b"PRI * HTTP/2.0".as_slice()),
    ] {
        assert!(
            !capture.contains(bytes),
            "{what} crossed the bridge in clear: {summary}"
        );
    }

    let to_web = [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "destination_workload=\"web\"",
        "response_code=\"200\"",
    ];
    let mtls = requests_counted(
        &mesh,
        0,
        &[&to_web[..], &["connection_security_policy=\"mutual_tls\""]].concat(),
    );
    let local = requests_counted(
        &mesh,
        0,
        &[&to_web[..], &["connection_security_policy=\"local\""]].concat(),
    );
    assert_eq!((mtls, local), (20, 10), "node-1's istio_requests_total");
}

/// 300 requests on ONE HTTP/2 connection from node-1 are spread over all three endpoints of
/// `web`, one on node-1 and two on node-2, by round robin per request: each gets its third
/// within 10 % (the balancer is deterministic, so a correct proxy lands on 100 each; a
/// per-connection balancer would send all 300 to one).
#[test]
fn http2_requests_of_one_connection_spread_over_endpoints_on_both_nodes() {
    require_root();
    let mesh = setup();
    let summary = load(
        pod(&mesh, "client"),
        &format!("http://{VIP}/all"),
        300,
        &["--http2", "--concurrency", "8"],
    );
    assert_eq!(summary["statuses"]["200"], 300, "{summary}");
    assert_eq!(summary["connections"], 1, "{summary}");
    for name in ["web1", "web2a", "web2b"] {
        let n = summary["served_by"][name].as_u64().unwrap_or(0);
        assert!(
            (90..=110).contains(&n),
            "{name} served {n} of 300: {summary}"
        );
    }
}

/// 200 requests from node-1 to the v2 pods on node-2, each on a client connection of its own
/// (`Connection: close`), reach the apps over a few pooled upstream connections, and node-1
/// opens at most one HBONE connection for them. A proxy relaying each client connection would
/// make the servers accept 200.
#[test]
fn upstream_connections_are_pooled_over_many_client_connections() {
    require_root();
    let mesh = setup();
    let v2 = ["web2a", "web2b"];
    let accepted = |mesh: &TwoNodes| -> u64 {
        v2.iter()
            .map(|name| {
                server_stats(pod(mesh, name))["connections"]
                    .as_u64()
                    .unwrap()
            })
            .sum()
    };
    let hbone_opened = |mesh: &TwoNodes| -> u64 {
        let text = metrics(mesh.agent(0)).expect("/metrics");
        sum_samples(&text, "mesh_hbone_connections_opened_total", |_| true)
    };
    let (accepted_before, hbone_before) = (accepted(&mesh), hbone_opened(&mesh));

    let summary = load(
        pod(&mesh, "client"),
        &format!("http://{VIP}/pooled"),
        200,
        &["-H", "x-canary: true", "-H", "connection: close"],
    );
    assert_eq!(summary["statuses"]["200"], 200, "{summary}");
    assert_eq!(
        summary["connections"], 200,
        "the client was to open a connection per request: {summary}"
    );
    // Each stats request is a connection of its own (over loopback), counted by the reading
    // it makes: one per pod in this one.
    let upstream = accepted(&mesh) - accepted_before - v2.len() as u64;
    let served: u64 = v2
        .iter()
        .map(|name| served_on(pod(&mesh, name), "/pooled"))
        .sum();
    assert_eq!(served, 200);
    // A pool needs one per endpoint (2); a request that starts before the previous response
    // has handed its connection back opens another, likelier on a loaded machine. A tenth of
    // the requests still tells pooling from relaying (200).
    assert!(
        upstream <= 20,
        "the apps accepted {upstream} connections for 200 requests"
    );
    let hbone = hbone_opened(&mesh) - hbone_before;
    assert!(hbone <= 1, "node-1 opened {hbone} HBONE connections");
}
