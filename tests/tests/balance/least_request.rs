//! `least_request`: an endpoint that answers 50 ms slower than its peer gets a small share.

use mesh_tests::observe::pod_tool_json;

use super::support::*;

/// Two endpoints, `slow` answering 50 ms later than `fast`. 300 requests, 2 at a time, over
/// HTTP. Expected: with two endpoints every power-of-two draw holds both, so a request goes
/// to `slow` only while `fast` costs more, i.e. (outstanding + 1) x its latency estimate
/// exceeds slow's ~50 ms: at the start (both unmeasured count as 30 ms; ties are random) and
/// when a hiccup of this busy machine makes `fast` look slow. Once `fast` answered once
/// (~0.5 ms here), it wins until it has ~100 requests outstanding, so `slow` gets at most
/// the first request or two (0 in the runs here); the bound is 10 %. Round robin would give
/// `slow` 50 %.
#[test]
fn least_request_steers_away_from_an_endpoint_50_ms_slower() {
    let mesh = Backends::new(
        &[web("fast"), web("slow").slow(50)],
        None,
        &service("http", "{policy: least_request}", ""),
    );
    // The slow one really is: 5 requests straight to each pod (dialled by address, no
    // balancing).
    let p50 = |pod: usize| {
        let url = format!("http://{}:{APP_PORT}/", mesh.webs[pod].ip());
        let direct = pod_tool_json(
            &mesh.client,
            &["http-load", "--url", &url, "--requests", "5"],
        );
        direct["latency_ms"]["p50"].as_f64().unwrap()
    };
    let (fast_ms, slow_ms) = (p50(0), p50(1));
    assert!(
        slow_ms >= 50.0 && fast_ms < slow_ms - 40.0,
        "{fast_ms} ms vs {slow_ms} ms"
    );

    let summary = load(&mesh.client, 300, &["--concurrency", "2"]);
    let slow = count(&summary, "slow");
    eprintln!("slow endpoint got {slow} of 300: {summary}");
    assert!(slow <= 30, "{summary}");
    assert_eq!(count(&summary, "fast") + slow, 300, "{summary}");

    // Status shows the policy and each endpoint's load: nothing outstanding now, and a
    // latency estimate: slow's was 50+ ms when last measured and fades by e^(-t/10 s) while
    // unmeasured, so it still shows 35+ ms within 3 s; fast's is far below.
    let status = mesh.node.status_json().unwrap();
    let web = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "default/web")
        .unwrap()
        .clone();
    assert_eq!(web["policy"], "least_request", "{web}");
    let endpoint = |name: &str| {
        web["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["workload"] == format!("default/{name}"))
            .unwrap()
            .clone()
    };
    let (slow_load, fast_load) = (&endpoint("slow")["load"], &endpoint("fast")["load"]);
    assert_eq!(slow_load["outstanding"], 0, "{web}");
    assert_eq!(fast_load["outstanding"], 0, "{web}");
    let latency = |load: &serde_json::Value| load["latencyMs"].as_f64().unwrap();
    if slow > 0 {
        assert!(latency(slow_load) >= 35.0, "{web}");
    }
    assert!(latency(fast_load) < 35.0, "{web}");
}
