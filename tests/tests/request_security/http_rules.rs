//! AuthorizationPolicy rules on the HTTP request, judged per request on both paths into a pod
//! on one node: from a mesh pod through the node proxy (same node) and from a pod outside
//! the mesh straight to the app port (plaintext).

use std::collections::BTreeMap;
use std::io::Write;

use mesh_tests::{require_root, wait_until, PodProcess};
use serde_json::Value;

use super::support::*;

/// Requests the app in web served on `path` (no query), over both ways in.
fn served(bed: &Bed, path: &str) -> u64 {
    served_on(&bed.web, path)
}

/// An ALLOW policy of methods and paths in all three forms: each request is allowed or
/// refused (403 `RBAC: access denied`, flag `RBAC`) by its own method and path, the same on
/// the same-node and the plaintext path; refused requests never reach the app, and each has
/// an access log line with flag `RBAC`.
#[test]
fn methods_and_exact_prefix_suffix_paths_decide_each_request() {
    require_root();
    let rules = "  - to: {methods: [GET], paths: [\"/exact\", \"/public/*\", \"*.png\"]}\n  - to: {methods: [POST], paths: [\"/api/*\"]}\n";
    let bed = Bed::new(&web_policy("web-http", "ALLOW", rules));
    // (method, path and query, allowed)
    let cases = [
        ("GET", "/exact", true),
        ("GET", "/exact/more", false),
        ("GET", "/exactly", false),
        ("GET", "/public/a/b?q=1", true),
        ("GET", "/publicity", false),
        ("GET", "/img/logo.png", true),
        ("GET", "/img/logo.png.txt", false),
        ("GET", "/private", false),
        ("POST", "/public/form", false),
        ("POST", "/api/items", true),
        ("DELETE", "/api/items", false),
        ("GET", "/api/list", false),
    ];
    let mut denied = 0;
    for (method, path, allowed) in cases {
        for (way, r) in bed.both_ways(method, path, &[]) {
            let what = format!("{method} {path} ({way})");
            if allowed {
                assert_served(&r, &what);
            } else {
                assert_rbac_denied(&r, &what);
                denied += 1;
            }
        }
    }
    // What the app saw, per path (without the query).
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, path, allowed) in cases {
        *expected.entry(path.split('?').next().unwrap()).or_default() += 2 * u64::from(allowed);
    }
    for (path, want) in expected {
        assert_eq!(served(&bed, path), want, "requests the app saw on {path}");
    }

    for (method, path, _) in cases.iter().filter(|(_, _, allowed)| !allowed) {
        let line = wait_log_line(&bed, path, 403, "RBAC");
        assert_eq!(line["method"], *method, "{line}");
    }
    let rbac = |lines: &[Value]| {
        lines
            .iter()
            .filter(|l| l["response_flags"] == "RBAC")
            .count()
    };
    wait_until(T, || rbac(&bed.access_log()) >= denied);
    let lines = bed.access_log();
    assert_eq!(
        rbac(&lines),
        denied,
        "one line per refused request: {lines:#?}"
    );
    for line in lines.iter().filter(|l| l["response_flags"] == "RBAC") {
        assert_eq!(line["response_code"], 403, "{line}");
    }
}

/// `when` on request headers (any listed value, header names without case) allows; a DENY
/// policy refuses a request the ALLOW policy lets through, by path (also when the path
/// only reaches it once normalised) or by a header; requests matching neither are allowed.
#[test]
fn header_conditions_allow_and_deny_wins_over_allow_per_request() {
    require_root();
    let allow = web_policy(
        "web-allow",
        "ALLOW",
        "  - to: {paths: [\"/tenant/*\"]}\n    when: [{key: \"request.headers[x-tenant]\", values: [acme, globex]}]\n  - to: {paths: [\"/open/*\", \"/admin/*\"]}\n",
    );
    let deny = web_policy(
        "web-deny",
        "DENY",
        "  - to: {paths: [\"/admin/*\"]}\n  - when: [{key: \"request.headers[x-debug]\", values: [\"on\"]}]\n",
    );
    let bed = Bed::new(&(allow + &deny));
    // (path, headers, allowed)
    let cases: [(&str, &[&str], bool); 10] = [
        ("/tenant/a", &["-H", "x-tenant: acme"], true),
        ("/tenant/a", &["-H", "X-Tenant: globex"], true),
        ("/tenant/a", &["-H", "x-tenant: initech"], false),
        ("/tenant/a", &["-H", "x-tenant: ACME"], false),
        ("/tenant/a", &[], false),
        ("/open/a", &[], true),
        ("/open/a", &["-H", "x-debug: off"], true),
        ("/open/a", &["-H", "x-debug: on"], false),
        ("/admin/a", &[], false),
        ("/open/../admin/a", &[], false),
    ];
    for (path, headers, allowed) in cases {
        for (way, r) in bed.both_ways("GET", path, headers) {
            let what = format!("GET {path} {headers:?} ({way})");
            if allowed {
                assert_served(&r, &what);
            } else {
                assert_rbac_denied(&r, &what);
            }
        }
    }
    assert_eq!(served(&bed, "/tenant/a"), 4);
    assert_eq!(served(&bed, "/open/a"), 4);
    assert_eq!(served(&bed, "/admin/a"), 0);
}

/// `pod-tool http-get --repeat` from `pod` to `url`: one keep-alive connection, each
/// request after the first sent once the test appends a line to `gate`.
fn keep_alive_client(pod: &mesh_tests::Pod, url: &str, gate: &std::path::Path) -> PodProcess {
    let gate = gate.display().to_string();
    let args = ["http-get", url, "--repeat", "4", "--wait-file", &gate];
    pod.spawn(env!("CARGO_BIN_EXE_pod-tool"), args)
        .unwrap_or_else(|e| panic!("pod-tool {args:?}: {e:#}"))
}

/// The answers `client` printed so far (one JSON line each).
fn answers(client: &PodProcess) -> Vec<Value> {
    client
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until each client printed `n` answers; their statuses and response flags.
fn nth_answers(clients: &mut [PodProcess], n: usize) -> Vec<(u64, Value)> {
    clients
        .iter_mut()
        .map(|c| {
            let arrived = wait_until(T, || answers(c).len() >= n || !c.is_running());
            let all = answers(c);
            assert!(
                arrived && all.len() >= n,
                "answer {n} missing: {all:?}; stderr: {}",
                c.stderr()
            );
            let a = &all[n - 1];
            (
                a["status"].as_u64().unwrap(),
                a["headers"]["x-mesh-response-flags"].clone(),
            )
        })
        .collect()
}

/// On one keep-alive connection per way in (same node, plaintext): a request allowed, then
/// after a policy change the next request on the same connection refused (403, the
/// connection stays open), the one after refused again on its own, and after the policy is
/// changed back the last one allowed. All four requests of each client share its
/// connection (the client fails if it cannot send the next one).
#[test]
fn policy_changes_apply_to_the_next_request_on_an_open_connection() {
    require_root();
    let allow_kept = web_policy("web-http", "ALLOW", "  - to: {paths: [\"/kept\"]}\n");
    let allow_other = web_policy("web-http", "ALLOW", "  - to: {paths: [\"/other\"]}\n");
    let mut bed = Bed::new(&allow_kept);
    let dir = mesh_tests::temp_dir().unwrap();
    let gate = dir.path().join("gate");
    let release = |gate: &std::path::Path| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(gate)
            .unwrap();
        writeln!(f, "next").unwrap();
    };
    let web_url = format!("http://{}:{APP_PORT}/kept", bed.web.ip());
    let mut clients = vec![
        keep_alive_client(&bed.client, &format!("http://{VIP}/kept"), &gate),
        keep_alive_client(&bed.outsider, &web_url, &gate),
    ];
    let allowed = (200, Value::Null);
    let refused = (403, Value::from("RBAC"));

    assert_eq!(
        nth_answers(&mut clients, 1),
        [allowed.clone(), allowed.clone()]
    );
    bed.set_policies(&allow_other);
    release(&gate);
    assert_eq!(
        nth_answers(&mut clients, 2),
        [refused.clone(), refused.clone()]
    );
    release(&gate);
    assert_eq!(nth_answers(&mut clients, 3), [refused.clone(), refused]);
    bed.set_policies(&allow_kept);
    release(&gate);
    assert_eq!(nth_answers(&mut clients, 4), [allowed.clone(), allowed]);
    for c in &mut clients {
        let out = c.wait_output(T).unwrap();
        assert!(out.status.success(), "client failed: {}", c.stderr());
    }
    assert_eq!(served(&bed, "/kept"), 4);
}
