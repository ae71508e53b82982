//! `weighted`: Workload weights 100 and 300 give exactly one request (connection) in four to
//! the light endpoint, in every window of four, not just on average.

use super::support::*;

fn one_to_three(protocol: &str) -> Backends {
    Backends::new(
        &[web("light").weight(100), web("heavy").weight(300)],
        None,
        &service(protocol, "{policy: weighted}", ""),
    )
}

/// Checks 400 picks split exactly 100/300, then ten windows of four picks (one http-load run
/// each, `extra` flags) each exactly 1/3. Smooth weighted round robin is deterministic: the
/// light endpoint gets every fourth pick. Round robin would give 200/200, and a random
/// weighted choice puts two lights in a window of four 21 % of the time.
fn assert_one_to_three(mesh: &Backends, extra: &[&str]) {
    let all = load(&mesh.client, 400, extra);
    assert_eq!(
        (count(&all, "light"), count(&all, "heavy")),
        (100, 300),
        "{all}"
    );
    for window in 0..10 {
        let four = load(&mesh.client, 4, extra);
        assert_eq!(
            (count(&four, "light"), count(&four, "heavy")),
            (1, 3),
            "window {window}: {four}"
        );
    }
}

/// On an HTTP port every request is balanced (one keep-alive connection carries them all).
#[test]
fn weighted_splits_http_requests_one_to_three() {
    let mesh = one_to_three("http");
    assert_one_to_three(&mesh, &[]);
}

/// On a TCP port every connection is balanced: `Connection: close` makes http-load open a
/// new connection per request, each relayed as opaque bytes to the endpoint its connection
/// was given.
#[test]
fn weighted_splits_tcp_connections_one_to_three() {
    let mesh = one_to_three("tcp");
    let close = ["-H", "connection: close"];
    let probe = load(&mesh.client, 8, &close);
    assert_eq!(
        probe["connections"], 8,
        "one connection per request: {probe}"
    );
    // The probe's 8 picks are two whole periods: the next pick starts a period again.
    assert_one_to_three(&mesh, &close);
}
