//! Certificate rotation: with a 10 s workload certificate lifetime, certificates renew at
//! half life while traffic flows, and no request is lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mesh_tests::require_root;
use serde_json::Value;

use crate::support::*;

const TTL_SECONDS: u64 = 10;
/// About 2.5 lifetimes.
const TRAFFIC_SECONDS: u64 = 25;

/// Over 25 s (2.5 lifetimes of 10 s) `a` (node-1) keeps one connection to `b`'s echo
/// server (node-2) busy with a round trip every 100 ms and opens a new HTTP connection to
/// `b` every 50 ms: not one round trip or request fails. Meanwhile both agents' status show
/// new certificates (serial and notBefore change) for `a` and `b`, each valid for no longer
/// than the lifetime, renewed at half life (so a few times, not continuously).
#[test]
fn certificates_rotate_under_traffic_without_losing_a_request() {
    require_root();
    let mut mesh = client_and_web(TTL_SECONDS);
    mesh.serve_http("b", APP_PORT, "b");
    mesh.serve_echo("b", ECHO_PORT);
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let (a_id, b_id) = (a.spiffe_id(), b.spiffe_id());

    let seconds = TRAFFIC_SECONDS.to_string();
    let (echo_target, http_target) = (b.addr(ECHO_PORT).to_string(), b.addr(APP_PORT).to_string());
    let mut long = a
        .pod
        .spawn(
            probe(),
            [
                "echo-loop",
                "--connect",
                &echo_target,
                "--seconds",
                &seconds,
                "--interval-ms",
                "100",
            ],
        )
        .unwrap();
    let mut short = a
        .pod
        .spawn(
            probe(),
            [
                "get-loop",
                "--connect",
                &http_target,
                "--seconds",
                &seconds,
                "--interval-ms",
                "50",
            ],
        )
        .unwrap();

    let mut seen_a: BTreeSet<String> = BTreeSet::new();
    let mut seen_b: BTreeSet<String> = BTreeSet::new();
    let mut first: Option<(Value, Value)> = None;
    let mut last: Option<(Value, Value)> = None;
    let deadline = Instant::now() + Duration::from_secs(TRAFFIC_SECONDS + 15);
    while (long.is_running() || short.is_running()) && Instant::now() < deadline {
        if let (Some(ca), Some(cb)) = (
            certificate(mesh.agent(0), &a_id),
            certificate(mesh.agent(1), &b_id),
        ) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            for c in [&ca, &cb] {
                let not_after = c["notAfter"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("notAfter: {c}"));
                assert!(
                    not_after <= now + TTL_SECONDS + 2,
                    "valid until {not_after}, more than the {TTL_SECONDS} s lifetime from now ({now}): {c}"
                );
            }
            seen_a.insert(ca["serial"].to_string());
            seen_b.insert(cb["serial"].to_string());
            first.get_or_insert_with(|| (ca.clone(), cb.clone()));
            last = Some((ca, cb));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !long.is_running() && !short.is_running(),
        "the probes did not finish"
    );

    let long_out = long.wait_output(T).unwrap();
    let long_stdout = String::from_utf8_lossy(&long_out.stdout).into_owned();
    assert!(
        long_out.status.success(),
        "the long-lived connection broke: {long_stdout} {}",
        String::from_utf8_lossy(&long_out.stderr)
    );
    let long_result: Value = serde_json::from_str(long_stdout.trim()).unwrap();
    assert!(long_result["ok"].as_u64().unwrap() >= 100, "{long_result}");

    let short_out = short.wait_output(T).unwrap();
    let short_result: Value = serde_json::from_str(
        String::from_utf8_lossy(&short_out.stdout).trim(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "get-loop output ({e}): {}",
            String::from_utf8_lossy(&short_out.stderr)
        )
    });
    assert_eq!(short_result["failed"], 0, "requests failed: {short_result}");
    assert!(
        short_result["ok"].as_u64().unwrap() >= 100,
        "{short_result}"
    );

    let (first, last) = (first.expect("no certificates seen"), last.unwrap());
    eprintln!("a: serials {seen_a:?}; b: serials {seen_b:?}");
    for (who, seen, i) in [("a", &seen_a, 0), ("b", &seen_b, 1)] {
        let (f, l) = if i == 0 {
            (&first.0, &last.0)
        } else {
            (&first.1, &last.1)
        };
        assert!(
            seen.len() >= 3,
            "{who}'s certificate should have renewed at least twice in {TRAFFIC_SECONDS} s (lifetime {TTL_SECONDS} s): serials {seen:?}"
        );
        // Renewal at half life: one new certificate every TTL/2 s, not a stream of them.
        let at_most = (2 * TRAFFIC_SECONDS / TTL_SECONDS + 3) as usize;
        assert!(
            seen.len() <= at_most,
            "{who}'s certificate renewed far more often than at half life: {} serials seen in {TRAFFIC_SECONDS} s with a {TTL_SECONDS} s lifetime (expected at most {at_most}); last: {l}",
            seen.len()
        );
        assert_ne!(f["serial"], l["serial"], "{who}: {f} -> {l}");
        assert_ne!(f["notBefore"], l["notBefore"], "{who}: {f} -> {l}");
    }
}
