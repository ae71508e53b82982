//! AuthorizationPolicy rules on the HTTP request, judged per request on both paths into a pod
//! on one node: from a mesh pod through the node proxy (same node) and from a pod outside
//! the mesh straight to the app port (plaintext).

use std::collections::BTreeMap;

use mesh_tests::two_nodes::{metrics, sum_samples};
use mesh_tests::{require_root, wait_until, wait_until_ok};
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
        for (way, r) in bed.every_way(method, path, &[]) {
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
        *expected.entry(path.split('?').next().unwrap()).or_default() += WAYS * u64::from(allowed);
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
/// only reaches it once normalised: `..`, `//`, an escaped letter) or by a header; requests
/// matching neither are allowed. The same over HTTP/1.1 and HTTP/2.
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
    let cases: [(&str, &[&str], bool); 12] = [
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
        ("//admin/a", &[], false),
        ("/%61dmin/a", &[], false),
    ];
    for version in [None, Some("--http2")] {
        for (path, headers, allowed) in cases {
            let extra = [headers, version.as_slice()].concat();
            for (way, r) in bed.every_way("GET", path, &extra) {
                let what = format!("GET {path} {extra:?} ({way})");
                if allowed {
                    assert_served(&r, &what);
                } else {
                    assert_rbac_denied(&r, &what);
                }
            }
        }
    }
    assert_eq!(served(&bed, "/tenant/a"), 2 * 2 * WAYS);
    assert_eq!(served(&bed, "/open/a"), 2 * 2 * WAYS);
    assert_eq!(served(&bed, "/admin/a"), 0);

    // Refusals name the DENY policy that matched (none when no ALLOW rule did), in the
    // access log and in mesh_request_authz_total.
    let line = wait_log_line(&bed, "/admin/a", 403, "RBAC");
    assert_eq!(line["authz_policy"], "default/web-deny", "{line}");
    let by_deny = 5 * 2 * WAYS;
    let unmatched = 3 * 2 * WAYS;
    wait_until_ok(T, || {
        let text = metrics(&bed.node)?;
        let refused = |policy: &str| {
            sum_samples(&text, "mesh_request_authz_total", |labels| {
                labels.contains(&format!("policy=\"{policy}\""))
                    && labels.contains("decision=\"deny\"")
            })
        };
        let counted = (refused("default/web-deny"), refused("-"));
        anyhow::ensure!(
            counted == (by_deny, unmatched),
            "refusals counted {counted:?}: {text}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `pod-tool ws-echo` of three messages from `pod` to `url`: its summary, or its error.
fn ws_echo(pod: &mesh_tests::Pod, url: &str) -> Result<Value, String> {
    let args = ["ws-echo", "--url", url, "--messages", "3"];
    let out = pod
        .run(env!("CARGO_BIN_EXE_pod-tool"), args, T)
        .map_err(|e| format!("{e:#}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Every way into web for a WebSocket: `(way, client pod, ws:// URL of /ws)`.
fn ws_ways(bed: &Bed) -> [(&'static str, &mesh_tests::Pod, String); 3] {
    let to_pod = format!("ws://{}:{APP_PORT}/ws", bed.web.ip());
    [
        (
            "same node via the Service",
            &bed.client,
            format!("ws://{VIP}/ws"),
        ),
        ("same node to the pod", &bed.client, to_pod.clone()),
        ("plaintext", &bed.outsider, to_pod),
    ]
}

/// A WebSocket upgrade is judged by the request it starts with: allowed, the upgrade goes
/// through and messages flow both ways; refused, the handshake gets 403.
#[test]
fn websocket_upgrades_are_judged_by_their_request() {
    require_root();
    let mut bed = Bed::new(&web_policy(
        "web-ws",
        "ALLOW",
        "  - to: {paths: [\"/ws\"]}\n",
    ));
    for (way, pod, url) in &ws_ways(&bed) {
        let echoed = ws_echo(pod, url).unwrap_or_else(|e| panic!("{way}: {e}"));
        assert_eq!(echoed["echoed"], 3, "{way}: {echoed}");
    }
    bed.set_policies(&web_policy(
        "web-ws",
        "ALLOW",
        "  - to: {paths: [\"/other\"]}\n",
    ));
    for (way, pod, url) in &ws_ways(&bed) {
        let refused = ws_echo(pod, url).expect_err(way);
        assert!(refused.contains("403"), "{way}: {refused}");
    }
}
