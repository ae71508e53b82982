//! Which protocol a port speaks, through the mesh: WebSocket upgrades, `auto` ports (HTTP/1
//! and HTTP/2 detected and routed per request, a server-first protocol passed through after
//! the wait), gRPC unary and streaming calls and the proxy's gRPC timeout answer, and TCP
//! ports still relayed as bytes.

use mesh_tests::observe::{banner_server, grpc_server, pod_tool_json};
use serde_json::json;

use super::support::*;

/// A second Service VIP of these tests (`grpc`, `banner`).
const VIP2: &str = "10.96.0.31";

/// A Service `name` at [`VIP2`]:`port` -> `target` speaking `protocol`, over the web pods.
fn second_service(name: &str, port: u16, target: u16, protocol: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  vips: [\"{VIP2}\"]\n  ports: [{{port: {port}, targetPort: {target}, protocol: {protocol}}}]\n  selector: {{app: web}}\n"
    )
}

/// Routes by a header: only a proxy that parses each request can follow it.
const CANARY_ROUTE: &str = r#"  rules:
  - match: {headers: {x-canary: "true"}}
    backends: [{service: web, subset: v2}]
  - backends: [{service: web, subset: v1}]
"#;

/// A WebSocket handshake is routed like any request (by its path here), and after the 101
/// the connection carries frames both ways.
#[test]
fn a_websocket_upgrade_goes_through_the_mesh() {
    let route = web_route(
        r#"  rules:
  - match: {path: {exact: /ws}}
    backends: [{service: web, subset: v2}]
  - backends: [{service: web, subset: v1}]
"#,
    );
    let mesh = Versions::new(
        &["v1", "v2"],
        &(web_service("http", &["v1", "v2"]) + &route),
    );
    let url = format!("ws://{VIP}/ws");
    let echo = pod_tool_json(
        &mesh.client,
        &["ws-echo", "--url", &url, "--messages", "20"],
    );
    assert_eq!(echo, json!({"echoed": 20, "served_by": "web-v2"}));
    assert_eq!(served_on(&mesh.webs[1], "/ws"), 1);
    // Plain requests on the same port are still routed per request.
    let r = mesh_tests::observe::get(&mesh.client, &format!("http://{VIP}/"));
    assert_eq!(r.name, "web-v1");
}

/// On an `auto` port the proxy recognises HTTP/1.1 and the HTTP/2 preface and routes each
/// request by its header; as opaque TCP both kinds would go to v1 (the Route's rule without
/// conditions).
#[test]
fn an_auto_port_detects_http1_and_http2_and_routes_per_request() {
    let mesh = Versions::new(
        &["v1", "v2"],
        &(web_service("auto", &["v1", "v2"]) + &web_route(CANARY_ROUTE)),
    );
    let url = format!("http://{VIP}/");
    for version in [&[][..], &["--http2"]] {
        let canary = [version, &["-H", "x-canary: true"]].concat();
        let summary = load(&mesh.client, &url, 10, &canary);
        assert_eq!(summary["served_by"], json!({"web-v2": 10}), "{summary}");
        let summary = load(&mesh.client, &url, 10, version);
        assert_eq!(summary["served_by"], json!({"web-v1": 10}), "{summary}");
    }
}

/// A server-speaks-first protocol behind an `auto` port: the client sends nothing until the
/// banner arrives, so the proxy must stop waiting for the client's first bytes and relay.
#[test]
fn a_server_first_protocol_passes_an_auto_port_after_the_wait() {
    let config = web_service("http", &["v1"]) + &second_service("banner", 25, 2525, "auto");
    let mesh = Versions::new(&["v1"], &config);
    let _banner = banner_server(&mesh.webs[0], "220 banner.test ready", 2525);
    let out = mesh
        .client
        .run(
            pod_tool(),
            ["banner-get", "--connect", &format!("{VIP2}:25")],
            T,
        )
        .unwrap_or_else(|e| panic!("banner-get: {e:#}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "220 banner.test ready\n"
    );
}

/// gRPC (port protocol `grpc`): 40 unary calls on one channel (one HTTP/2 connection) spread
/// over both endpoints, each within 10 % of its share (round robin gives 20 each); a
/// bidirectional stream echoes every message in lockstep.
#[test]
fn grpc_unary_calls_spread_per_call_and_streams_work() {
    let config = web_service("http", &["v1", "v2"]) + &second_service("grpc", 9090, 9090, "grpc");
    let mesh = Versions::new(&["v1", "v2"], &config);
    let _grpc: Vec<_> = ["v1", "v2"]
        .iter()
        .zip(&mesh.webs)
        .map(|(v, pod)| grpc_server(pod, &format!("grpc-{v}"), 9090))
        .collect();
    let target = format!("{VIP2}:9090");
    let calls = pod_tool_json(
        &mesh.client,
        &[
            "grpc-call",
            "--connect",
            &target,
            "--count",
            "40",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(calls["codes"], json!({"OK": 40}), "{calls}");
    for server in ["grpc-v1", "grpc-v2"] {
        let n = calls["served_by"][server].as_u64().unwrap_or(0);
        assert!(
            (18..=22).contains(&n),
            "{server} answered {n} of 40: {calls}"
        );
    }
    let chat = pod_tool_json(
        &mesh.client,
        &["grpc-chat", "--connect", &target, "--messages", "25"],
    );
    assert_eq!(chat["echoed"], 25, "{chat}");
    assert_eq!(
        chat["served_by"].as_array().map(Vec::len),
        Some(1),
        "{chat}"
    );
}

/// A route timeout on a gRPC port ends the call with the proxy's trailers-only
/// DEADLINE_EXCEEDED (the client set no deadline of its own: tonic would report its own
/// expiry as CANCELLED), and faster calls pass.
#[test]
fn a_grpc_route_timeout_answers_deadline_exceeded() {
    let route = r#"---
apiVersion: mesh/v1
kind: Route
metadata: {name: grpc}
spec:
  service: grpc
  timeoutMs: 300
  rules:
  - backends: [{service: grpc}]
"#;
    let config = web_service("http", &["v1"]) + &second_service("grpc", 9090, 9090, "grpc") + route;
    let mesh = Versions::new(&["v1"], &config);
    let _grpc = grpc_server(&mesh.webs[0], "grpc-v1", 9090);
    let target = format!("{VIP2}:9090");
    let call = |delay_ms: &str| {
        pod_tool_json(
            &mesh.client,
            &["grpc-call", "--connect", &target, "--delay-ms", delay_ms],
        )
    };
    let slow = call("3000");
    assert_eq!(slow["codes"], json!({"DEADLINE_EXCEEDED": 1}), "{slow}");
    assert!(
        slow["error_samples"][0]
            .as_str()
            .is_some_and(|s| s.contains("upstream request timeout")),
        "{slow}"
    );
    let fast = call("10");
    assert_eq!(fast["codes"], json!({"OK": 1}), "{fast}");
}

/// A `tcp` port is relayed as bytes, as before HTTP support: a Route's rule without
/// conditions picks the backend for every connection (the service's round robin alone would
/// alternate), and the proxy adds nothing to the requests (no `x-request-id`). (A rule with
/// HTTP conditions is refused on a Service without an HTTP port.)
#[test]
fn a_tcp_port_is_relayed_as_bytes_to_the_first_unconditional_rule() {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web, subset: v2}]
"#,
    );
    let mesh = Versions::new(&["v1", "v2"], &(web_service("tcp", &["v1", "v2"]) + &route));
    let url = format!("http://{VIP}/");
    // Five connections (one per concurrency slot), with and without the header.
    for extra in [&["-H", "x-canary: true"][..], &[]] {
        let args = [&["--concurrency", "5"][..], extra].concat();
        let summary = load(&mesh.client, &url, 20, &args);
        assert_eq!(summary["served_by"], json!({"web-v2": 20}), "{summary}");
        assert_eq!(summary["connections"], 5, "{summary}");
    }
    let shown = show(&mesh.client, &format!("http://{VIP}/headers"), &[]);
    let headers: serde_json::Value = serde_json::from_str(&shown.body).unwrap();
    assert!(headers.get("x-request-id").is_none(), "{headers}");
    // Every connection reached the app as one connection of its own (the loads, /headers
    // and the /stats request itself).
    assert_eq!(server_stats(&mesh.webs[1])["connections"], 5 + 5 + 1 + 1);
}
