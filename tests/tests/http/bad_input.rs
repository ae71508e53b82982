//! Bad input: malformed HTTP/1, oversized headers and HTTP/2 protocol errors from an app end
//! only that app connection (with 400, 431, GOAWAY) while the agent keeps serving everyone else;
//! invalid Routes are refused at apply time naming the field.

use mesh_tests::control::ControlPlane;
use mesh_tests::observe::get;
use mesh_tests::{require_root, temp_dir, PodProcess};
use serde_json::Value;

use super::support::*;

/// `pod-tool raw-send` from the client to the VIP: `data` (escaped text) and then the file
/// `data_file`; the tool's JSON report.
fn raw_send(mesh: &Versions, data: &[&str], data_file: Option<&std::path::Path>) -> Value {
    let connect = format!("{VIP}:80");
    let mut args = vec!["raw-send", "--connect", &connect, "--timeout-ms", "3000"];
    for d in data {
        args.extend(["--data", d]);
    }
    let file = data_file.map(|f| f.display().to_string());
    if let Some(f) = &file {
        args.extend(["--data-file", f]);
    }
    mesh_tests::observe::pod_tool_json(&mesh.client, &args)
}

/// `http-load` started in the background on ONE connection of the client (`extra`: e.g.
/// `--http2`): 20 requests to `/delay/100`, two seconds in all, so it is open while the test
/// sends bad input on other connections. Returns once the app has seen its first request.
fn background_load(mesh: &Versions, extra: &[&str]) -> PodProcess {
    let url = format!("http://{VIP}/delay/100");
    let args = [&["http-load", "--url", &url, "--requests", "20"][..], extra].concat();
    let mut load = mesh
        .client
        .spawn(pod_tool(), &args)
        .expect("spawning http-load");
    let started = mesh_tests::wait_until(T, || {
        served_on(&mesh.webs[0], "/delay/100") > 0 || !load.is_running()
    });
    assert!(started && load.is_running(), "http-load: {}", load.stderr());
    load
}

/// The background load's summary: every request answered 200 on the one connection it
/// opened, so the bad input next to it closed nothing but its own connection.
fn assert_load_unharmed(mut load: PodProcess) {
    let out = load.wait_success(T).expect("http-load");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("http-load JSON");
    assert_eq!(summary["statuses"]["200"], 20, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(
        summary["connections"], 1,
        "the keep-alive connection next to the bad one was closed: {summary}"
    );
}

/// Connections the app has accepted, counting the one this reading makes (over loopback).
fn app_connections(mesh: &Versions) -> u64 {
    server_stats(&mesh.webs[0])["connections"]
        .as_u64()
        .expect("connections in /stats")
}

/// The client's open outbound connections as the agent counts them.
fn client_active(mesh: &Versions) -> i64 {
    mesh.node.status_json().expect("status")["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["pod"] == "default/client"))
        .and_then(|p| p["outbound"]["active"].as_i64())
        .expect("outbound.active of default/client")
}

/// The agent is alive and never panicked, answers status, serves a new request, and holds no
/// connection of the client beyond `active_before` (the bad ones were not leaked).
fn assert_agent_unharmed(mesh: &mut Versions, active_before: i64) {
    let r = get(&mesh.client, &format!("http://{VIP}/"));
    assert_eq!(r.name, "web-v1", "{r:?}");
    let settled = mesh_tests::wait_until(T, || client_active(mesh) <= active_before);
    assert!(
        settled,
        "the client's connections stay open in the agent: {} > {active_before}",
        client_active(mesh)
    );
    let agent = mesh.node.agent().expect("the agent process");
    assert!(agent.is_running(), "the agent died: {}", agent.log_tail(30));
    assert!(
        !agent.log().contains("panicked"),
        "the agent panicked: {}",
        agent.log_tail(30)
    );
}

/// A request with a malformed header line gets 400 from the proxy and its connection closes;
/// a request head over the proxy's 64 KiB limit gets 431 and its connection closes. None
/// reaches the app, and a keep-alive connection of the same pod carrying requests meanwhile
/// keeps going.
#[test]
fn malformed_http1_gets_400_and_oversized_headers_431_ending_only_their_connection() {
    require_root();
    let mut mesh = Versions::new(&["v1"], &web_service("http", &["v1"]));
    let active_before = client_active(&mesh);
    let load = background_load(&mesh, &[]);
    let accepted = app_connections(&mesh);

    let bad = raw_send(
        &mesh,
        &["GET /malformed HTTP/1.1\\r\\nHost: web\\r\\nno colon here\\r\\n\\r\\n"],
        None,
    );
    let text = bad["received"].as_str().unwrap_or_default();
    assert!(text.starts_with("HTTP/1.1 400 "), "{bad}");
    assert_eq!(bad["ended"], "eof", "the connection stayed open: {bad}");

    // 100 KiB: over the proxy's 64 KiB limit on a request head but within what its HTTP/1
    // parser buffers (and what the app would accept); 1 MiB: beyond that buffer too.
    let dir = temp_dir().unwrap();
    for kib in [100, 1024] {
        let big = dir.path().join(format!("header-{kib}k.txt"));
        let head = format!(
            "GET /oversized HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
            "a".repeat(kib * 1024)
        );
        std::fs::write(&big, head).unwrap();
        let oversized = raw_send(&mesh, &[], Some(&big));
        let text = oversized["received"].as_str().unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 431 "), "{kib} KiB: {oversized}");
        if kib == 100 {
            // The proxy's own answer (hyper's parser answers beyond its buffer, unflagged).
            assert!(text.contains("x-mesh-response-flags: DPE"), "{oversized}");
        }
        assert_ne!(
            oversized["ended"], "timeout",
            "{kib} KiB: the connection stayed open: {oversized}"
        );
    }

    assert_eq!(
        app_connections(&mesh),
        accepted + 1,
        "the bad connections reached the app: the proxy was to answer them itself"
    );
    assert_load_unharmed(load);
    let stats = server_stats(&mesh.webs[0]);
    assert!(stats["by_path"].get("/malformed").is_none(), "{stats}");
    assert!(stats["by_path"].get("/oversized").is_none(), "{stats}");
    assert_agent_unharmed(&mut mesh, active_before);
}

/// After the HTTP/2 preface, a SETTINGS frame on stream 1 (SETTINGS belong to stream 0) is a
/// connection error: the proxy answers GOAWAY with PROTOCOL_ERROR and closes that connection,
/// while an HTTP/2 connection of the same pod multiplexing requests meanwhile keeps going.
#[test]
fn an_http2_protocol_error_ends_only_its_connection() {
    require_root();
    let mut mesh = Versions::new(&["v1"], &web_service("http", &["v1"]));
    let active_before = client_active(&mesh);
    let load = background_load(&mesh, &["--http2", "--concurrency", "2"]);
    let accepted = app_connections(&mesh);

    let preface = "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n";
    // length 0, type 4 (SETTINGS), flags 0, stream 1.
    let settings_on_stream_1 = "\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x01";
    let bad = raw_send(&mesh, &[preface, settings_on_stream_1], None);
    assert_eq!(bad["ended"], "eof", "the connection stayed open: {bad}");
    let received = hex_bytes(bad["received_hex"].as_str().unwrap_or_default());
    let goaway = h2_frames(&received)
        .into_iter()
        .find(|(kind, _)| *kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY frame in the answer: {bad}"));
    let error_code = u32::from_be_bytes(goaway.1[4..8].try_into().expect("GOAWAY payload"));
    assert_eq!(error_code, PROTOCOL_ERROR, "{bad}");
    assert_eq!(
        app_connections(&mesh),
        accepted + 1,
        "the bad connection reached the app: the proxy was to answer it itself"
    );

    assert_load_unharmed(load);
    assert_agent_unharmed(&mut mesh, active_before);
}

const GOAWAY: u8 = 7;
const PROTOCOL_ERROR: u32 = 1;

/// The HTTP/2 frames in `bytes` as (type, payload); a truncated last frame is left out.
fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let Some(payload) = bytes.get(9..9 + length) else {
            break;
        };
        frames.push((bytes[3], payload.to_vec()));
        bytes = &bytes[9 + length..];
    }
    frames
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Routes with an invalid regex, an unknown subset, weights that are all 0, a fault
/// percentage over 100, too many retry attempts or a zero timeout are refused by `meshctl
/// apply` naming the field; none is stored, while a valid Route for the same Service is
/// accepted.
#[test]
fn invalid_routes_are_refused_at_apply_naming_the_field() {
    require_root();
    let cp = ControlPlane::start_embedded().expect("starting mesh-control");
    cp.apply(&web_service("http", &["v1"]))
        .expect("the Service");
    let rule = |rule: &str| web_route(&format!("  rules:\n  - {rule}\n"));
    let cases = [
        (
            "an invalid regex",
            rule("match: {path: {regex: \"^/v[0-9+\"}}\n    backends: [{service: web}]"),
            "spec.rules[0].match.path.regex",
        ),
        (
            "an unknown subset",
            rule("backends: [{service: web, subset: v9}]"),
            "spec.rules[0].backends[0].subset",
        ),
        (
            "weights that are all 0",
            rule("backends: [{service: web, subset: v1, weight: 0}, {service: web, weight: 0}]"),
            "spec.rules[0].backends",
        ),
        (
            "a fault percentage over 100",
            rule("backends: [{service: web}]\n    fault: {abort: {status: 503, percent: 101}}"),
            "spec.rules[0].fault.abort.percent",
        ),
        (
            "retry attempts over 10",
            rule("backends: [{service: web}]\n    retries: {attempts: 11}"),
            "spec.rules[0].retries.attempts",
        ),
        (
            "a zero timeout",
            rule("backends: [{service: web}]\n    timeoutMs: 0"),
            "spec.rules[0].timeoutMs",
        ),
    ];
    for (what, yaml, field) in &cases {
        let err = apply_fails(&cp, yaml);
        eprintln!("{what}: {err}");
        assert!(
            err.contains(field),
            "{what}: the error does not name {field}: {err}"
        );
    }
    let stored = cp.meshctl_ok(&["get", "routes", "-o", "json"]).unwrap();
    assert!(
        !stored.contains("\"web\""),
        "a refused Route was stored: {stored}"
    );

    cp.apply(&rule("backends: [{service: web, subset: v1}]"))
        .expect("a valid Route is accepted");
    let stored = cp.meshctl_ok(&["get", "routes", "-o", "json"]).unwrap();
    assert!(stored.contains("\"web\""), "{stored}");
}

/// `meshctl apply` of `yaml` that must fail; its stderr.
fn apply_fails(cp: &ControlPlane, yaml: &str) -> String {
    let dir = temp_dir().unwrap();
    let file = dir.path().join("route.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = cp
        .meshctl(&["apply", "-f", &file.display().to_string()])
        .expect("running meshctl");
    assert!(
        !out.status.success(),
        "apply of {yaml} was expected to fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
