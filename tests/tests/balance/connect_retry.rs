//! Connect retry on one node: an endpoint that refuses connections stays in rotation (its
//! health checks are too lax to notice within the test), yet no client request or connection
//! fails: each try on it is refused and the agent tries another endpoint at once. The same
//! for an endpoint whose connections time out, after the service's connect timeout.

use super::support::*;

/// `web-0` and `web-1` serve, `dead` refuses every connection; round robin over the three.
fn one_refusing(protocol: &str) -> Backends {
    let mesh = Backends::new(
        &[web("web-0"), web("web-1"), web("dead").refusing()],
        None,
        &(service(protocol, "{policy: round_robin}", "") + LAX_HEALTH),
    );
    // Still in rotation: not called unhealthy (one probe a minute, 1000 failures needed).
    let dead = mesh
        .endpoints()
        .into_iter()
        .find(|e| e["workload"] == "default/dead")
        .expect("dead is an endpoint of web");
    assert_ne!(dead["health"], "unhealthy", "{dead}");
    mesh
}

/// Checks that every one of `n` requests of `summary` was answered 200 by a serving
/// endpoint, and that `dead` refused at least n/5 connection attempts meanwhile
/// (`resets_before`: its count of resets before the load).
fn assert_hidden(mesh: &Backends, summary: &serde_json::Value, n: u64, resets_before: u64) {
    let tries_on_dead = resets_sent(&mesh.webs[2]) - resets_before;
    eprintln!("{n} requests, {tries_on_dead} refused tries on dead: {summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["statuses"]["200"], n, "{summary}");
    assert_eq!(
        count(summary, "web-0") + count(summary, "web-1"),
        n,
        "{summary}"
    );
    // Round robin gives dead one pick in three; each try on it is refused (one reset) and
    // retried elsewhere. Without connect retry those requests would fail. On the TCP path
    // a connection is one pick (dead is tried for exactly n/3); on the HTTP path a retry is
    // a pick of its own, and one that lands on dead again is skipped, so of the n + d picks
    // a third are dead's and at most d of those are retries: d >= (n + d)/3 - d, d >= n/5
    // (n/2 when requests go one at a time: every other one).
    assert!(
        tries_on_dead >= n / 5,
        "dead was tried {tries_on_dead} times for {n} requests: not in rotation?"
    );
}

/// HTTP: 300 requests on one keep-alive connection, each balanced on its own; the ones
/// whose pick is `dead` are refused upstream before any byte of the request left the proxy
/// and go to another endpoint. Not one fails; `dead`'s kernel refused at least 60 tries.
/// The same for 300 requests multiplexed 8 at a time on one HTTP/2 connection.
#[test]
fn a_refused_connect_is_retried_for_every_http_request() {
    let mesh = one_refusing("http");
    for extra in [&[][..], &["--http2", "--concurrency", "8"][..]] {
        let before = resets_sent(&mesh.webs[2]);
        let summary = load(&mesh.client, 300, extra);
        assert_hidden(&mesh, &summary, 300, before);
    }
}

/// TCP: 90 connections (`Connection: close`, one request each), each balanced on its own
/// and relayed as opaque bytes: a connection whose first endpoint refuses is connected to
/// the next one before the client notices. Not one fails; `dead` refused some (30: one
/// connection in three).
#[test]
fn a_refused_connect_is_retried_for_every_tcp_connection() {
    let mesh = one_refusing("tcp");
    let before = resets_sent(&mesh.webs[2]);
    let summary = load(&mesh.client, 90, &["-H", "connection: close"]);
    assert_eq!(summary["connections"], 90, "{summary}");
    assert_hidden(&mesh, &summary, 90, before);
}

/// `ghost` is declared (an endpoint of `web`) but unreachable: nothing answers for its
/// address, so a connection to it neither succeeds nor is refused. The service's
/// `connectionPool.connectTimeoutMs: 300` bounds each try on it (the agent's default is
/// 5 s, the client's own timeout). 15 HTTP requests (port 80) and 15 TCP connections (port
/// 81), one connection each, round robin over web-0, web-1 and ghost: none fails; those
/// whose first pick was ghost took 300 ms more.
#[test]
fn a_connect_timeout_is_retried_on_another_endpoint() {
    let mesh = Backends::new(
        &[web("web-0"), web("web-1"), web("ghost").unreachable()],
        None,
        &(service_ports(
            &[(80, APP_PORT, "http"), (81, APP_PORT, "tcp")],
            "{policy: round_robin}",
            "  connectionPool: {connectTimeoutMs: 300}\n",
        ) + LAX_HEALTH),
    );
    for port in [80, 81] {
        let url = format!("http://{VIP}:{port}/");
        let summary = load_url(&mesh.client, &url, 15, &["-H", "connection: close"]);
        eprintln!("port {port}: {summary}");
        assert_eq!(summary["statuses"]["200"], 15, "{summary}");
        assert_eq!(
            count(&summary, "web-0") + count(&summary, "web-1"),
            15,
            "{summary}"
        );
        // Ghost was tried (a request waited out its timeout), each try bounded by the
        // service's timeout rather than the agent's 5 s.
        let slowest = summary["latency_ms"]["max"].as_f64().unwrap();
        assert!((300.0..2000.0).contains(&slowest), "{summary}");
    }
}
