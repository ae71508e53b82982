//! Per-request telemetry: Istio's request metrics on the agent's `/metrics` and the JSON access
//! log, checked against requests whose outcomes the test knows (200s, a 503 from the app, a
//! 504 from the route's timeout), and the MeshConfig switch that turns the access log off.

use std::collections::BTreeMap;
use std::path::Path;

use mesh_tests::mesh::MeshNode;
use mesh_tests::two_nodes::metrics;
use mesh_tests::{require_root, temp_dir, wait_until, wait_until_ok};
use serde_json::Value;

use super::support::*;

/// Requests whose path starts with `/delay` time out after 300 ms (rule `slow`); all others
/// go to subset v1 (rule `main`).
const ROUTE: &str = "  rules:\n  - name: slow\n    match: {path: {prefix: /delay}}\n    backends: [{service: web}]\n    timeoutMs: 300\n  - name: main\n    backends: [{service: web, subset: v1}]\n";

fn mesh_config(access_log: &Path, enabled: bool) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  observability:\n    accessLog: {{enabled: {enabled}, path: \"{}\"}}\n",
        access_log.display()
    )
}

/// One sample of a metric: its labels and value.
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of metric `name` (exactly that name, e.g. `istio_requests_total`) in a
/// Prometheus text exposition.
fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some(Sample {
                labels: parse_labels(labels),
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

/// `a="x",b="y"` as a map (values here never hold quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// The one sample of `name` whose labels include `want`; fails listing them all otherwise.
fn sample<'a>(all: &'a [Sample], name: &str, want: &[(&str, &str)]) -> &'a Sample {
    let matching: Vec<&Sample> = all
        .iter()
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching[..] {
        [one] => one,
        _ => panic!(
            "{} samples of {name} with {want:?}; all: {:#?}",
            matching.len(),
            all.iter().map(|s| (&s.labels, s.value)).collect::<Vec<_>>()
        ),
    }
}

/// The agent's metrics once `istio_requests_total` adds up to `requests`. A request is
/// recorded (metrics, then its log line) as its response body ends or is dropped, which may
/// be a moment after the client has read the last byte.
fn metrics_after(node: &MeshNode, requests: u64) -> String {
    wait_until_ok(T, || {
        let text = metrics(node)?;
        let total: f64 = samples(&text, "istio_requests_total")
            .iter()
            .map(|s| s.value)
            .sum();
        anyhow::ensure!(total == requests as f64, "{total} requests counted: {text}");
        Ok(text)
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The access log's lines, parsed.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A 32-hex-digit trace id of request `i` (W3C `traceparent` format).
fn trace_id(i: usize) -> String {
    format!("4bf92f3577b34da6a3ce929d0e0e{i:04x}")
}

/// Five 200s (each with its own `x-request-id` and `traceparent`), two 503s from the app and
/// one 504 from the route's 300 ms timeout give `istio_requests_total` samples with Istio's
/// labels and exactly these counts, a duration histogram counting the same (the 504 lasting
/// about 300 ms), and one access log line per request naming rule, route, upstream, flags and
/// the ids the client sent (kept upstream unchanged). With the access log switched off in
/// MeshConfig, requests still count but add no line.
#[test]
fn metrics_and_access_log_match_the_requests_made() {
    require_root();
    let dir = temp_dir().unwrap();
    let log = dir.path().join("access.log");
    let config = web_service("http", &["v1"]) + &web_route(ROUTE) + &mesh_config(&log, true);
    let mut mesh = Versions::new(&["v1"], &config);
    let (client, web) = (&mesh.client, &mesh.webs[0]);
    let upstream = format!("{}:{APP_PORT}", web.ip());

    for i in 0..5 {
        let request_id = format!("req-{i}-{}", std::process::id());
        let traceparent = format!("traceparent: 00-{}-00f067aa0ba902b7-01", trace_id(i));
        let r = show(
            client,
            &format!("http://{VIP}/headers?n={i}"),
            &[
                "-H",
                &format!("x-request-id: {request_id}"),
                "-H",
                &traceparent,
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let seen: Value = serde_json::from_str(&r.body).expect("/headers JSON");
        assert_eq!(seen["x-request-id"], request_id.as_str(), "{seen}");
        assert_eq!(
            seen["traceparent"],
            &traceparent["traceparent: ".len()..],
            "{seen}"
        );
    }
    for _ in 0..2 {
        let r = show(client, &format!("http://{VIP}/status/503"), &[]);
        assert_eq!(r.status, 503, "{r:?}");
    }
    let r = show(client, &format!("http://{VIP}/delay/3000"), &[]);
    assert_eq!(r.status, 504, "{r:?}");

    let text = metrics_after(&mesh.node, 8);
    let requests = samples(&text, "istio_requests_total");
    let common = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_workload_namespace", "default"),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
    ];
    let served = [
        ("destination_workload", "web"),
        ("connection_security_policy", "local"),
    ];
    let ok = [
        &common[..],
        &served,
        &[("response_code", "200"), ("response_flags", "-")],
    ]
    .concat();
    assert_eq!(sample(&requests, "istio_requests_total", &ok).value, 5.0);
    let app_503 = [
        &common[..],
        &served,
        &[("response_code", "503"), ("response_flags", "-")],
    ]
    .concat();
    assert_eq!(
        sample(&requests, "istio_requests_total", &app_503).value,
        2.0
    );
    // The try that timed out went to web (its connection's security is not known).
    let timed_out = [
        &common[..],
        &[
            ("destination_workload", "web"),
            ("response_code", "504"),
            ("response_flags", "UT"),
        ],
    ]
    .concat();
    assert_eq!(
        sample(&requests, "istio_requests_total", &timed_out).value,
        1.0
    );

    let count = samples(&text, "istio_request_duration_milliseconds_count");
    let name = "istio_request_duration_milliseconds_count";
    assert_eq!(sample(&count, name, &ok).value, 5.0);
    assert_eq!(sample(&count, name, &app_503).value, 2.0);
    assert_eq!(sample(&count, name, &timed_out).value, 1.0);
    let sums = samples(&text, "istio_request_duration_milliseconds_sum");
    let timeout_ms = sample(&sums, "istio_request_duration_milliseconds_sum", &timed_out).value;
    // The route's 300 ms, not the app's 3 s; 1 s of slack for a loaded machine.
    assert!(
        (300.0..1300.0).contains(&timeout_ms),
        "504 after {timeout_ms} ms"
    );

    // Written right after the metrics.
    wait_until(T, || log_lines(&log).len() >= 8);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    for i in 0..5 {
        let request_id = format!("req-{i}-{}", std::process::id());
        let line = lines
            .iter()
            .find(|l| l["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("no line with request_id {request_id}: {lines:#?}"));
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/headers", "{line}");
        assert_eq!(line["response_code"], 200, "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert_eq!(line["upstream_host"], upstream.as_str(), "{line}");
        assert_eq!(line["route_name"], "web", "{line}");
        assert_eq!(line["rule_name"], "main", "{line}");
        assert_eq!(line["trace_id"], trace_id(i).as_str(), "{line}");
    }
    let app_errors: Vec<&Value> = lines.iter().filter(|l| l["response_code"] == 503).collect();
    assert_eq!(app_errors.len(), 2, "{lines:#?}");
    for line in app_errors {
        assert_eq!(line["path"], "/status/503", "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert_eq!(line["rule_name"], "main", "{line}");
        // The proxy made up an id for a request that came without one.
        assert!(
            line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{line}"
        );
    }
    let timeout = lines
        .iter()
        .find(|l| l["response_code"] == 504)
        .unwrap_or_else(|| panic!("no 504 line: {lines:#?}"));
    assert_eq!(timeout["path"], "/delay/3000", "{timeout}");
    assert_eq!(timeout["response_flags"], "UT", "{timeout}");
    assert_eq!(timeout["rule_name"], "slow", "{timeout}");

    // Access log off (the file path stays): requests are still counted, no line is added.
    let config = std::fs::read_to_string(mesh.node.config_path()).unwrap();
    let off = config.replace("accessLog: {enabled: true", "accessLog: {enabled: false");
    assert_ne!(off, config);
    mesh.node.reload_config_and_wait(&off).unwrap();
    for _ in 0..3 {
        let r = show(&mesh.client, &format!("http://{VIP}/"), &[]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    let text = metrics_after(&mesh.node, 11);
    let requests = samples(&text, "istio_requests_total");
    assert_eq!(sample(&requests, "istio_requests_total", &ok).value, 8.0);
    assert_eq!(log_lines(&log).len(), 8, "{:#?}", log_lines(&log));
}
