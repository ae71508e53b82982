//! Timeouts, retries (and what is never retried), the retry budget, injected faults, and the
//! proxy's own errors with their response flags.

use serde_json::json;

use super::support::*;

/// Milliseconds of a latency field of an http-load summary (`p50`, `p99`, `max`).
fn latency(summary: &serde_json::Value, which: &str) -> f64 {
    summary["latency_ms"][which]
        .as_f64()
        .unwrap_or_else(|| panic!("no latency_ms.{which}: {summary}"))
}

/// Slack on the late side of timing checks: the agent is a debug build on two cores shared
/// with builds and other tests. Early is never allowed.
const LATE_MS: f64 = 700.0;

/// A rule's 300 ms timeout answers 504 (flag UT) at 300 ms, although the server was asked
/// and would have answered after 3 s; a faster answer passes.
#[test]
fn a_route_timeout_answers_504_at_the_configured_time() {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web}]
    timeoutMs: 300
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    let slow = format!("http://{VIP}/delay/3000");
    let summary = load(&mesh.client, &slow, 2, &["--concurrency", "2"]);
    assert_eq!(summary["statuses"], json!({"504": 2}), "{summary}");
    // Both 504s came at 300 ms or later, and not much later (the nearest-rank p50 of two
    // latencies is the smaller one).
    let (fastest, slowest) = (latency(&summary, "p50"), latency(&summary, "max"));
    assert!(fastest >= 300.0 && slowest <= 300.0 + LATE_MS, "{summary}");
    let shown = show(&mesh.client, &slow, &[]);
    assert_eq!(shown.status, 504, "{shown:?}");
    assert_eq!(
        shown.header("x-mesh-response-flags"),
        Some("UT"),
        "{shown:?}"
    );
    // The proxy did send them: the timeout is its own, not a refusal.
    assert_eq!(served_on(&mesh.webs[0], "/delay/3000"), 3);

    let fast = load(&mesh.client, &format!("http://{VIP}/delay/50"), 2, &[]);
    assert_eq!(fast["statuses"], json!({"200": 2}), "{fast}");
}

/// The endpoint fails every other request with 503 (`/flaky/2`); with retries on
/// gateway errors the client sees only 200s, and the server saw each failed try and its
/// retry: exactly two tries per request.
#[test]
fn retries_mask_an_endpoint_failing_every_other_request() {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web}]
    retries: {attempts: 2, retryOn: [gateway-error]}
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    let summary = load(&mesh.client, &format!("http://{VIP}/flaky/2"), 20, &[]);
    assert_eq!(summary["statuses"], json!({"200": 20}), "{summary}");
    assert_eq!(served_on(&mesh.webs[0], "/flaky/2"), 40);
}

/// A small POST body is kept and the request retried; a 1 MiB body is more than the proxy
/// keeps for a replay, so that request is not retried: the client gets the server's 503 (sent
/// before it read the body) and the server saw one try. The same 1 MiB body still streams
/// through whole when it succeeds.
#[test]
fn a_post_with_a_1mib_body_is_not_retried() {
    large_post_is_not_retried(&[]);
}

#[test]
fn a_post_with_a_1mib_body_is_not_retried_over_http2() {
    large_post_is_not_retried(&["--http2"]);
}

fn large_post_is_not_retried(version: &[&str]) {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web}]
    retries: {attempts: 2, retryOn: [5xx]}
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    let post = |path: &str, bytes: &str| {
        let extra = [version, &["--method", "POST", "--body-bytes", bytes]].concat();
        show(&mesh.client, &format!("http://{VIP}{path}"), &extra)
    };
    // Try 0 fails, its retry (try 1) succeeds.
    let small = post("/flaky/2", "1024");
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(served_on(&mesh.webs[0], "/flaky/2"), 2);
    // Try 2 fails and is final.
    let large = post("/flaky/2", "1048576");
    assert_eq!(large.status, 503, "{large:?}");
    assert_eq!(served_on(&mesh.webs[0], "/flaky/2"), 3);

    let echo = post("/echo", "1048576");
    let body: serde_json::Value = serde_json::from_str(&echo.body).unwrap();
    assert_eq!(body["bytes"], 1048576, "{echo:?}");
}

/// The endpoint answers 503 to everything and the route asks for 3 retries: without a
/// budget the server would see 4 tries per request (4000). The budget allows retries of 20 %
/// of the requests in its 10 s window plus 10 per second of it (100): at most 300 retries for
/// 1000 requests, a hard cap (no statistics involved). At least some retries must happen
/// (the floor alone allows 100).
#[test]
fn the_retry_budget_caps_retries_while_an_endpoint_is_down() {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web}]
    retries: {attempts: 3, retryOn: [5xx]}
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    let summary = load(
        &mesh.client,
        &format!("http://{VIP}/status/503"),
        1000,
        &["--concurrency", "16", "--timeout-ms", "10000"],
    );
    assert_eq!(summary["statuses"], json!({"503": 1000}), "{summary}");
    let retries = served_on(&mesh.webs[0], "/status/503") - 1000;
    assert!(
        (50..=300).contains(&retries),
        "{retries} retries for 1000 requests"
    );
}

/// A delay fault holds every request it takes for at least its 400 ms (and the server still
/// answers); requests the rule doesn't take are not held.
#[test]
fn a_delay_fault_holds_requests_for_its_time() {
    let route = web_route(
        r#"  rules:
  - match: {path: {prefix: /slow}}
    backends: [{service: web}]
    fault: {delay: {ms: 400, percent: 100}}
  - backends: [{service: web}]
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    // One request per run, so its p50 is its latency: every one is checked.
    for _ in 0..3 {
        let slow = load(&mesh.client, &format!("http://{VIP}/slow"), 1, &[]);
        assert_eq!(slow["served_by"], json!({"web-v1": 1}), "{slow}");
        let ms = latency(&slow, "p50");
        assert!((400.0..=400.0 + LATE_MS).contains(&ms), "{slow}");
    }
    let fast = load(&mesh.client, &format!("http://{VIP}/"), 5, &[]);
    assert_eq!(fast["served_by"], json!({"web-v1": 5}), "{fast}");
    assert!(latency(&fast, "max") < 400.0, "{fast}");
}

/// An abort fault at 100 % answers 503 with flag FI and never reaches the server; at 50 %
/// it aborts about half. Tolerance: 150..=250 aborted of 400 (mean 200, standard deviation
/// 10); a correct proxy lands outside with probability 3.8e-7 (exact binomial tails).
#[test]
fn an_abort_fault_answers_for_the_server() {
    let route = web_route(
        r#"  rules:
  - match: {path: {prefix: /abort}}
    backends: [{service: web}]
    fault: {abort: {status: 503, percent: 100}}
  - match: {path: {prefix: /half}}
    backends: [{service: web}]
    fault: {abort: {status: 503, percent: 50}}
  - backends: [{service: web}]
"#,
    );
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1"]) + &route));
    let shown = show(&mesh.client, &format!("http://{VIP}/abort"), &[]);
    assert_eq!(shown.status, 503, "{shown:?}");
    assert_eq!(
        shown.header("x-mesh-response-flags"),
        Some("FI"),
        "{shown:?}"
    );
    assert_eq!(shown.header("x-served-by"), None, "{shown:?}");
    let all = load(&mesh.client, &format!("http://{VIP}/abort"), 20, &[]);
    assert_eq!(all["statuses"], json!({"503": 20}), "{all}");

    let half = load(
        &mesh.client,
        &format!("http://{VIP}/half"),
        400,
        &["--concurrency", "8"],
    );
    let aborted = half["statuses"]["503"].as_u64().unwrap_or(0);
    let passed = half["statuses"]["200"].as_u64().unwrap_or(0);
    assert!((150..=250).contains(&aborted), "{half}");
    assert_eq!(aborted + passed, 400, "{half}");
    let stats = server_stats(&mesh.webs[0]);
    assert_eq!(stats["by_path"]["/half"], passed, "{stats}");
    assert!(stats["by_path"].get("/abort").is_none(), "{stats}");
}

/// A rule's subset with no endpoints (no workload carries its labels): 503, flag UH.
#[test]
fn a_subset_without_endpoints_answers_503_uh() {
    let route = web_route(
        r#"  rules:
  - backends: [{service: web, subset: v2}]
"#,
    );
    // Subset v2 is declared, but only v1 runs.
    let mesh = Versions::new(&["v1"], &(web_service("http", &["v1", "v2"]) + &route));
    let shown = show(&mesh.client, &format!("http://{VIP}/"), &[]);
    assert_eq!(shown.status, 503, "{shown:?}");
    assert_eq!(
        shown.header("x-mesh-response-flags"),
        Some("UH"),
        "{shown:?}"
    );
    assert_eq!(server_stats(&mesh.webs[0])["requests"], 0);
}

/// The endpoint's app is gone, so its port refuses: 503, flag UF (and the agent keeps
/// serving: the next request after the app is back succeeds).
#[test]
fn a_refusing_endpoint_is_skipped_for_another_without_a_route() {
    // No Route, so no retries configured: the connect retry alone hides the dead endpoint.
    let mut mesh = Versions::new(&["v1", "v2"], &web_service("http", &["v1", "v2"]));
    mesh.servers[1].kill();
    let url = format!("http://{VIP}/");
    let summary = load(&mesh.client, &url, 20, &[]);
    // Round robin alone would send every other request to web-v2 and answer it 503 UF.
    assert_eq!(summary["statuses"], json!({"200": 20}), "{summary}");
    assert_eq!(summary["served_by"], json!({"web-v1": 20}), "{summary}");
}

#[test]
fn a_refusing_endpoint_answers_503_uf() {
    let mut mesh = Versions::new(&["v1"], &web_service("http", &["v1"]));
    mesh.servers[0].kill();
    let shown = show(&mesh.client, &format!("http://{VIP}/"), &[]);
    assert_eq!(shown.status, 503, "{shown:?}");
    assert_eq!(
        shown.header("x-mesh-response-flags"),
        Some("UF"),
        "{shown:?}"
    );
    mesh.servers[0] = mesh_tests::observe::http_server(&mesh.webs[0], "web-v1", APP_PORT);
    let again = show(&mesh.client, &format!("http://{VIP}/"), &[]);
    assert_eq!(again.status, 200, "{again:?}");
}
