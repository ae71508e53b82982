//! Passive outlier detection and circuit breakers (`outlierDetection`, `connectionPool`):
//! an endpoint that keeps failing is ejected and comes back by itself; past a service's
//! limits the proxy fails fast (HTTP 503 with flag UO, a reset TCP connection) and counts it.

use std::time::{Duration, Instant};

use mesh_tests::observe::pod_tool_json;
use mesh_tests::two_nodes::{metrics, sum_samples};
use mesh_tests::wait::wait_until;
use serde_json::Value;

use super::support::*;

/// Three endpoints, of which `bad` answers every request with 500.
fn with_a_failing_endpoint(protocol: &str, more: &str) -> Backends {
    let webs = [web("a"), web("b"), web("bad").failing(500)];
    Backends::new(
        &webs,
        None,
        &(service(protocol, "{policy: round_robin}", more) + LAX_HEALTH),
    )
}

/// One request at a time, any status: the summary (`statuses`, `served_by`, ...).
fn requests(mesh: &Backends, n: usize) -> Value {
    let url = format!("http://{VIP}/");
    pod_tool_json(
        &mesh.client,
        &["http-load", "--url", &url, "--requests", &n.to_string()],
    )
}

fn status_count(summary: &Value, status: &str) -> u64 {
    summary["statuses"][status].as_u64().unwrap_or(0)
}

/// The `web` endpoint `name` in the agent's status.
fn endpoint(mesh: &Backends, name: &str) -> Value {
    mesh.endpoints()
        .into_iter()
        .find(|e| e["workload"] == format!("default/{name}"))
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

fn opens(mesh: &Backends, limit: &str) -> u64 {
    let text = metrics(&mesh.node).unwrap();
    sum_samples(&text, "mesh_circuit_breaker_opens_total", |l| {
        l.contains(&format!("limit=\"{limit}\""))
    })
}

/// Round robin over three endpoints, one answering 500: after its third 500 in a row it is
/// ejected (the client saw exactly those three), the others take everything, status shows
/// the ejection, and after `baseEjectionMs` it is back by itself (and, still failing, is
/// ejected again after three more).
#[test]
fn an_endpoint_answering_5xx_is_ejected_and_comes_back_by_itself() {
    let outlier =
        "  outlierDetection: {consecutiveErrors: 3, intervalMs: 60000, baseEjectionMs: 1500, maxEjectionPercent: 50}\n";
    let mesh = with_a_failing_endpoint("http", outlier);
    let first = requests(&mesh, 30);
    assert_eq!(status_count(&first, "500"), 3, "{first}");
    assert_eq!(status_count(&first, "200"), 27, "{first}");
    let ejected_at = Instant::now();
    assert!(
        endpoint(&mesh, "bad")["ejectedMs"].as_u64().is_some(),
        "{:?}",
        mesh.endpoints()
    );
    assert!(endpoint(&mesh, "a")["ejectedMs"].is_null());
    assert_eq!(opens(&mesh, "outlier_ejection"), 1);
    let table = mesh.node.cli_ok(&["status"]).unwrap();
    assert!(table.contains("ejected"), "{table}");

    // Back by itself 1.5 s later: it takes requests (and fails) again.
    let back = wait_until(Duration::from_secs(5), || {
        endpoint(&mesh, "bad")["ejectedMs"].is_null()
    });
    assert!(
        back && ejected_at.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        mesh.endpoints()
    );
    let again = requests(&mesh, 30);
    assert_eq!(
        status_count(&again, "500"),
        3,
        "back in rotation, then ejected again: {again}"
    );
    assert_eq!(opens(&mesh, "outlier_ejection"), 2);
}

/// An endpoint refusing connections on a TCP port: connect retry hides it from every client
/// connection, and after three refusals in a row it is ejected, so later connections no
/// longer pay the retry.
#[test]
fn an_endpoint_refusing_connections_is_ejected_on_the_l4_path() {
    let webs = [web("a"), web("b"), web("down").refusing()];
    let outlier =
        "  outlierDetection: {consecutiveErrors: 3, intervalMs: 60000, baseEjectionMs: 60000, maxEjectionPercent: 50}\n";
    let mesh = Backends::new(
        &webs,
        None,
        &(service("tcp", "{policy: round_robin}", outlier) + LAX_HEALTH),
    );
    // One connection per request over the TCP port: each is balanced on its own.
    let summary = load(&mesh.client, 30, &["-H", "connection: close"]);
    assert_eq!(count(&summary, "a") + count(&summary, "b"), 30, "{summary}");
    assert!(
        endpoint(&mesh, "down")["ejectedMs"].as_u64().is_some(),
        "{:?}",
        mesh.endpoints()
    );
    assert_eq!(opens(&mesh, "outlier_ejection"), 1);
}

/// `maxRequests: 2` with endpoints answering 300 ms later: of six concurrent requests,
/// those past the limit are answered 503 (flag UO) at once instead of waiting; each
/// overflow is counted; afterwards the limit is free again.
#[test]
fn past_max_requests_http_requests_fail_fast_with_503_uo() {
    let webs = [web("a").slow(300), web("b").slow(300)];
    let pool = "  connectionPool: {maxRequests: 2}\n";
    let mesh = Backends::new(&webs, None, &service("http", "{policy: round_robin}", pool));
    let url = format!("http://{VIP}/");
    let started = Instant::now();
    let summary = pod_tool_json(
        &mesh.client,
        &[
            "http-load",
            "--url",
            &url,
            "--requests",
            "6",
            "--concurrency",
            "6",
        ],
    );
    assert_eq!(status_count(&summary, "200"), 2, "{summary}");
    assert_eq!(status_count(&summary, "503"), 4, "{summary}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no queueing behind the limit"
    );
    assert_eq!(opens(&mesh, "max_requests"), 4);
    let text = metrics(&mesh.node).unwrap();
    let uo = sum_samples(&text, "istio_requests_total", |l| {
        l.contains("response_flags=\"UO\"")
    });
    assert_eq!(uo, 4, "the 503s are the proxy's own, flagged UO");
    let status = mesh.node.status_json().unwrap();
    let web = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "default/web")
        .unwrap();
    assert_eq!(
        web["circuit"], "connections 2/1024 pending 0/1024 requests 0/2 retries 0/3",
        "no request in flight once done; the two pooled connections stay open: {web}"
    );
    let after = requests(&mesh, 4);
    assert_eq!(status_count(&after, "200"), 4, "{after}");
}

/// `maxConnections: 1` on a TCP port: while one connection is open, another is reset at
/// once (not queued), counted as `CircuitOpen`; once it closes, new connections go through.
#[test]
fn past_max_connections_tcp_connections_are_reset() {
    let pool = "  connectionPool: {maxConnections: 1}\n";
    let mesh = Backends::new(
        &[web("a")],
        None,
        &service("tcp", "{policy: round_robin}", pool),
    );
    let url = format!("http://{VIP}/");
    let holder = mesh
        .client
        .spawn(
            env!("CARGO_BIN_EXE_pod-tool"),
            ["http-hold", "--url", &url, "--count", "1"],
        )
        .unwrap();
    assert!(
        wait_until(T, || holder.stdout().contains(r#"{"held":1}"#)),
        "{} {}",
        holder.stdout(),
        holder.stderr()
    );
    let second = mesh
        .client
        .run(env!("CARGO_BIN_EXE_pod-tool"), ["http-get", &url], T);
    let refused = format!(
        "{:#}",
        second.expect_err("a second connection while one is open")
    );
    assert!(refused.contains("reset"), "{refused}");
    assert_eq!(opens(&mesh, "max_connections"), 1);
    let failures = mesh_tests::two_nodes::failures(&mesh.node, "CircuitOpen", None).unwrap();
    assert_eq!(failures, 1);
    drop(holder);
    // The slot comes back once the relay sees the held connection close.
    let through = || {
        mesh.client
            .run(env!("CARGO_BIN_EXE_pod-tool"), ["http-get", &url], T)
            .is_ok()
    };
    assert!(wait_until(T, through), "the slot never came back");
}

/// `connectionPool.idleTimeoutMs: 500` on a TCP port: a connection that moves nothing is
/// closed by the proxy about half a second later (Istio's TCP metrics count it closed while
/// the client still holds it); one in use is not.
#[test]
fn idle_tcp_connections_are_closed_after_the_services_idle_timeout() {
    let pool = "  connectionPool: {idleTimeoutMs: 500}\n";
    let mesh = Backends::new(
        &[web("a")],
        None,
        &service("tcp", "{policy: round_robin}", pool),
    );
    let closed = || {
        let text = metrics(&mesh.node).unwrap();
        sum_samples(&text, "istio_tcp_connections_closed_total", |_| true)
    };
    // Busy for 1.5 s (a request every 100 ms on one connection): never idle that long.
    let url = format!("http://{VIP}/");
    let busy = pod_tool_json(
        &mesh.client,
        &[
            "http-rate",
            "--url",
            &url,
            "--rate",
            "10",
            "--seconds",
            "1.5",
            "--connections",
            "1",
            "--warmup",
            "0",
        ],
    );
    assert_eq!(busy["errors"], 0, "{busy}");
    let mut holder = mesh
        .client
        .spawn(
            env!("CARGO_BIN_EXE_pod-tool"),
            ["http-hold", "--url", &url, "--count", "1"],
        )
        .unwrap();
    assert!(wait_until(T, || holder.stdout().contains(r#"{"held":1}"#)));
    let before = closed();
    let held_at = Instant::now();
    assert!(
        wait_until(T, || closed() > before),
        "the idle connection was never closed"
    );
    let after = held_at.elapsed();
    assert!(
        after >= Duration::from_millis(450),
        "closed after {after:?}"
    );
    assert!(holder.is_running());
}
