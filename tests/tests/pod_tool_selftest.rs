//! Self-test of pod-tool's L7 tools between two pods on a bridge, no mesh in between: the
//! HTTP/1.1 + HTTP/2 server and its special paths, `http-get`, `http-load`, `ws-echo`,
//! `banner-serve`/`banner-get`, the gRPC server and clients, and the benchmark's `http-rate`
//! and `http-hold`. The mesh's L7 tests rely on these tools saying the truth, so each claim
//! they make is checked against the other side here (e.g. the server's own connection count
//! against the client's). Needs root.

use mesh_tests::observe::{banner_server, grpc_server, http_server, pod_tool_json};
use mesh_tests::{cargo_bin, require_root, Bridge, Pod};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);
const PORT: u16 = 8080;

/// pod-tool's stdout, or its error (with stderr and exit code).
fn tool(pod: &Pod, args: &[&str]) -> anyhow::Result<String> {
    let out = pod.run(cargo_bin("pod-tool"), args, T)?;
    Ok(String::from_utf8(out.stdout)?)
}

fn ok(pod: &Pod, args: &[&str]) -> String {
    tool(pod, args).unwrap_or_else(|e| panic!("pod-tool {args:?}: {e:#}"))
}

/// The JSON body of a GET (HTTP/1.1 unless `extra` says `--http2`).
fn get_json(pod: &Pod, url: &str, extra: &[&str]) -> Value {
    let body = ok(pod, &[&["http-get", url][..], extra].concat());
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

struct TwoPods {
    client: Pod,
    server: Pod,
    _bridge: Bridge,
}

fn two_pods(bridge_index: u8) -> TwoPods {
    let bridge = Bridge::new(bridge_index).unwrap();
    TwoPods {
        client: Pod::new(&bridge, "client", 2).unwrap(),
        server: Pod::new(&bridge, "server", 3).unwrap(),
        _bridge: bridge,
    }
}

#[test]
fn http_serve_answers_http1_and_h2c_on_one_port() {
    require_root();
    let p = two_pods(5);
    let _srv = http_server(&p.server, "web", PORT);
    let base = format!("http://{}:{PORT}", p.server.ip());
    let url = |path: &str| format!("{base}{path}");

    // `/` keeps the body every older suite parses, in both versions.
    for version in [&[][..], &["--http2"]] {
        let body = ok(&p.client, &[&["http-get", &url("/")][..], version].concat());
        assert!(
            body.starts_with(&format!("name=web peer={}:", p.client.ip())),
            "{body}"
        );
    }

    // The version really differs, and headers, method, path and query arrive as sent.
    for (flags, version) in [(&[][..], "HTTP/1.1"), (&["--http2"][..], "HTTP/2.0")] {
        let extra = [flags, &["-H", "x-canary: yes", "--method", "PUT"]].concat();
        let h = get_json(&p.client, &url("/headers?q=1"), &extra);
        assert_eq!(h[":version"], version, "{h}");
        assert_eq!(h[":method"], "PUT", "{h}");
        assert_eq!(h[":path"], "/headers?q=1", "{h}");
        assert_eq!(h["x-canary"], "yes", "{h}");
    }

    // --show-headers: status, the headers every response carries, body, then trailers.
    let shown = ok(
        &p.client,
        &["http-get", &url("/trailers"), "--http2", "--show-headers"],
    );
    assert!(shown.starts_with("status=200\n"), "{shown}");
    assert!(shown.contains("\nx-served-by: web\n"), "{shown}");
    assert!(shown.contains("\nserver: pod-tool\n"), "{shown}");
    assert!(shown.ends_with("\ntrailer x-trailer: yes\n"), "{shown}");
    // HTTP/1.1 sends trailers only to a client that asked with `TE: trailers`.
    let h1 = ["http-get", &url("/trailers"), "--show-headers"];
    let asked = ok(&p.client, &[&h1[..], &["-H", "te: trailers"]].concat());
    assert!(asked.contains("transfer-encoding: chunked"), "{asked}");
    assert!(asked.ends_with("\ntrailer x-trailer: yes\n"), "{asked}");
    let unasked = ok(&p.client, &h1);
    assert!(!unasked.contains("trailer x-trailer"), "{unasked}");

    // Status codes: shown with --show-status, exit 22 (like curl -f) without.
    let teapot = ok(
        &p.client,
        &["http-get", &url("/status/418"), "--show-status"],
    );
    assert!(teapot.starts_with("status=418\n"), "{teapot}");
    let err = format!(
        "{:#}",
        tool(&p.client, &["http-get", &url("/status/503")]).unwrap_err()
    );
    assert!(
        err.contains("exit code 22") && err.contains("HTTP status 503"),
        "{err}"
    );
    let bad = ok(&p.client, &["http-get", &url("/flaky/1"), "--show-status"]);
    assert!(
        bad.starts_with("status=400\n") && bad.contains("n >= 2"),
        "{bad}"
    );

    // /flaky/2: the 1st, 3rd, ... request fails.
    let statuses: Vec<String> = (0..4)
        .map(|_| ok(&p.client, &["http-get", &url("/flaky/2"), "--show-status"]))
        .map(|out| out.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses,
        ["status=503", "status=200", "status=503", "status=200"]
    );

    // /delay: the answer comes after the delay (and the client's timeout fires before it).
    let started = Instant::now();
    ok(&p.client, &["http-get", &url("/delay/300")]);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err = tool(
        &p.client,
        &["http-get", &url("/delay/2000"), "--timeout-ms", "200"],
    );
    assert!(format!("{:#}", err.unwrap_err()).contains("timed out"));

    // /echo counts a 1 MiB body in either version.
    for version in [&[][..], &["--http2"]] {
        let extra = [version, &["--method", "POST", "--body-bytes", "1048576"]].concat();
        let echo = get_json(&p.client, &url("/echo"), &extra);
        assert_eq!(echo, json!({"bytes": 1048576, "name": "web"}));
    }

    // /stats saw every request above, by path.
    let stats = get_json(&p.client, &url("/stats"), &[]);
    let by_path = &stats["by_path"];
    assert_eq!(by_path["/flaky/2"], 4, "{stats}");
    assert_eq!(by_path["/echo"], 2, "{stats}");
    assert_eq!(by_path["/trailers"], 3, "{stats}");
    assert_eq!(by_path["/headers"], 2, "{stats}");
    assert!(by_path.get("/stats").is_none(), "{stats}");
    let total: u64 = by_path
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(stats["requests"], total, "{stats}");
}

#[test]
fn http_load_counts_what_the_server_saw() {
    require_root();
    let p = two_pods(6);
    let _srv = http_server(&p.server, "web", PORT);
    let url = |path: &str| format!("http://{}:{PORT}{path}", p.server.ip());
    let connections = || {
        get_json(&p.client, &url("/stats"), &[])["connections"]
            .as_u64()
            .unwrap()
    };

    // HTTP/2: 200 requests, 16 in flight, one connection (the server agrees).
    let before = connections();
    let load = pod_tool_json(
        &p.client,
        &[
            "http-load",
            "--url",
            &url("/"),
            "--requests",
            "200",
            "--concurrency",
            "16",
            "--http2",
        ],
    );
    assert_eq!(load["ok"], 200, "{load}");
    assert_eq!(load["statuses"], json!({"200": 200}), "{load}");
    assert_eq!(load["served_by"], json!({"web": 200}), "{load}");
    assert_eq!(
        (load["errors"].as_u64(), load["connections"].as_u64()),
        (Some(0), Some(1))
    );
    // +1: the /stats request's own connection.
    assert_eq!(connections(), before + 1 + 1);
    let lat = &load["latency_ms"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 5000.0,
        "{load}"
    );

    // HTTP/1.1 keep-alive: one connection per slot; statuses of a flaky path, one at a time.
    let before = connections();
    let load = pod_tool_json(
        &p.client,
        &[
            "http-load",
            "--url",
            &url("/flaky/2"),
            "--requests",
            "20",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(load["statuses"], json!({"200": 10, "503": 10}), "{load}");
    assert_eq!(
        (load["ok"].as_u64(), load["connections"].as_u64()),
        (Some(10), Some(1))
    );
    assert_eq!(connections(), before + 1 + 1);
    let load = pod_tool_json(
        &p.client,
        &[
            "http-load",
            "--url",
            &url("/echo"),
            "--requests",
            "8",
            "--concurrency",
            "4",
            "--method",
            "POST",
            "--body-bytes",
            "70000",
            "-H",
            "x-test: 1",
        ],
    );
    assert_eq!(
        (load["ok"].as_u64(), load["connections"].as_u64()),
        (Some(8), Some(4)),
        "{load}"
    );

    // Nobody listening: errors are counted and sampled, and the tool still exits 0.
    let refused = format!("http://{}:{}/", p.server.ip(), PORT + 1);
    let load = pod_tool_json(
        &p.client,
        &["http-load", "--url", &refused, "--requests", "5"],
    );
    assert_eq!(
        (load["ok"].as_u64(), load["errors"].as_u64()),
        (Some(0), Some(5)),
        "{load}"
    );
    let sample = load["error_samples"][0].as_str().unwrap();
    assert!(sample.contains("refused"), "{load}");
    // Bad arguments are the one failure.
    let err = tool(
        &p.client,
        &["http-load", "--url", &url("/"), "-H", "no colon"],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("not `name: value`"), "{err:#}");
}

#[test]
fn http_rate_keeps_its_schedule_and_http_hold_holds() {
    require_root();
    let p = two_pods(8);
    let _srv = http_server(&p.server, "web", PORT);
    let url = |path: &str| format!("http://{}:{PORT}{path}", p.server.ip());
    let stats = || get_json(&p.client, &url("/stats"), &[]);

    // 500 requests/s for 1 s after 50 unmeasured ones, over 2 connections: the server saw
    // every request (warm-up included) on exactly those connections.
    let before = stats();
    let rate = pod_tool_json(
        &p.client,
        &[
            "http-rate",
            "--url",
            &url("/"),
            "--rate",
            "500",
            "--seconds",
            "1",
            "--connections",
            "2",
            "--warmup",
            "50",
        ],
    );
    let after = stats();
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    assert_eq!((n(&rate, "requests"), n(&rate, "ok")), (500, 500), "{rate}");
    assert_eq!(
        (n(&rate, "errors"), n(&rate, "connections")),
        (0, 2),
        "{rate}"
    );
    assert_eq!(
        n(&after, "requests") - n(&before, "requests"),
        550,
        "{after}"
    );
    // +1: this /stats request's own connection.
    assert_eq!(n(&after, "connections") - n(&before, "connections"), 2 + 1);
    let f = |k: &str| rate[k].as_f64().unwrap();
    assert!(0.0 < f("p50_us") && f("p50_us") <= f("p99_us") && f("p99_us") <= f("max_us"));
    assert!((f("achieved_per_s") - 500.0).abs() < 50.0, "{rate}");

    // Open loop: 100 requests/s to a path that takes 20 ms, on one connection that can carry
    // 50/s. The requests queue behind each other and their latency, counted from when each
    // was due, grows to about a second; a client timing from its own send (or one that only
    // sends after the last answer, like wrk) would see 20 ms throughout.
    let late = pod_tool_json(
        &p.client,
        &[
            "http-rate",
            "--url",
            &url("/delay/20"),
            "--rate",
            "100",
            "--seconds",
            "1",
            "--connections",
            "1",
            "--warmup",
            "0",
        ],
    );
    let g = |k: &str| late[k].as_f64().unwrap();
    assert_eq!(late["ok"], 100, "{late}");
    assert!(g("service_p99_us") < 200_000.0, "{late}");
    assert!(
        g("p99_us") > 500_000.0 && g("send_lag_p99_us") > 500_000.0,
        "{late}"
    );

    // http-hold: 20 connections, one request each, kept open.
    let before = stats();
    let mut holder = p
        .client
        .spawn(
            cargo_bin("pod-tool"),
            ["http-hold", "--url", &url("/"), "--count", "20"],
        )
        .unwrap();
    assert!(
        mesh_tests::wait_until(T, || holder.stdout().contains(r#"{"held":20}"#)),
        "{} {}",
        holder.stdout(),
        holder.stderr()
    );
    let after = stats();
    assert_eq!(n(&after, "requests") - n(&before, "requests"), 20);
    assert_eq!(n(&after, "connections") - n(&before, "connections"), 20 + 1);
    assert!(holder.is_running(), "http-hold must keep running");
    // Bad arguments are an error naming the flag.
    let err = tool(&p.client, &["http-rate", "--url", &url("/"), "--rate", "0"]).unwrap_err();
    assert!(format!("{err:#}").contains("--rate"), "{err:#}");
}

#[test]
fn websocket_banner_and_grpc_tools_work_between_pods() {
    require_root();
    let p = two_pods(7);
    let _http = http_server(&p.server, "web", PORT);
    let _banner = banner_server(&p.server, "220 hello from the server", 2525);
    let _grpc = grpc_server(&p.server, "rpc", 9090);
    let (v4, v6) = (p.server.ip().to_string(), format!("[{}]", p.server.ip6()));

    // WebSocket: a real upgrade and framed echo; a plain path is no upgrade and fails.
    let ws = pod_tool_json(
        &p.client,
        &[
            "ws-echo",
            "--url",
            &format!("ws://{v4}:{PORT}/ws"),
            "--messages",
            "5",
        ],
    );
    assert_eq!(ws, json!({"echoed": 5, "served_by": "web"}));
    let err = tool(
        &p.client,
        &["ws-echo", "--url", &format!("ws://{v4}:{PORT}/")],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("handshake"), "{err:#}");

    // The banner arrives without the client sending anything, in both families.
    for host in [&v4, &v6] {
        let line = ok(
            &p.client,
            &["banner-get", "--connect", &format!("{host}:2525")],
        );
        assert_eq!(line, "220 hello from the server\n");
    }

    // gRPC unary: many calls on one channel, failures by status code, deadlines.
    for host in [&v4, &v6] {
        let addr = format!("{host}:9090");
        let calls = pod_tool_json(
            &p.client,
            &[
                "grpc-call",
                "--connect",
                &addr,
                "--count",
                "20",
                "--concurrency",
                "4",
            ],
        );
        assert_eq!(calls["codes"], json!({"OK": 20}), "{calls}");
        assert_eq!(calls["served_by"], json!({"rpc": 20}), "{calls}");
        assert!(
            calls["messages"][0].as_str().unwrap().starts_with("call "),
            "{calls}"
        );
    }
    let addr = format!("{v4}:9090");
    let failing = pod_tool_json(
        &p.client,
        &[
            "grpc-call",
            "--connect",
            &addr,
            "--count",
            "3",
            "--fail-code",
            "14",
        ],
    );
    assert_eq!(failing["codes"], json!({"UNAVAILABLE": 3}), "{failing}");
    let started = Instant::now();
    let late = pod_tool_json(
        &p.client,
        &[
            "grpc-call",
            "--connect",
            &addr,
            "--delay-ms",
            "3000",
            "--deadline-ms",
            "200",
        ],
    );
    assert!(started.elapsed() < Duration::from_millis(2500), "{late}");
    assert!(late["codes"].get("OK").is_none(), "{late}");
    let refused = pod_tool_json(
        &p.client,
        &["grpc-call", "--connect", &format!("{v4}:9091")],
    );
    assert_eq!(refused["codes"], json!({"UNAVAILABLE": 1}), "{refused}");

    // gRPC bidirectional streaming, message by message.
    let chat = pod_tool_json(
        &p.client,
        &[
            "grpc-chat",
            "--connect",
            &format!("{v6}:9090"),
            "--messages",
            "10",
        ],
    );
    assert_eq!(chat, json!({"echoed": 10, "served_by": ["rpc"]}));
    // A chat against something that is not gRPC fails instead of claiming echoes.
    let err = tool(
        &p.client,
        &["grpc-chat", "--connect", &format!("{v4}:2525")],
    )
    .unwrap_err();
    assert!(!format!("{err:#}").contains("panicked"), "{err:#}");
}
