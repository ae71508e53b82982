//! Consistent hashing: `maglev` on a request header and `ring_hash` on a cookie keep each
//! user on one endpoint while users spread over all endpoints; `ring_hash` on the source IP
//! keeps every connection of a pod on one endpoint.

use std::collections::BTreeMap;

use super::support::*;

/// 24 users (`x-user: user-<n>`), 10 requests each on a keep-alive connection: each user's
/// requests all reach one endpoint (round robin would send each user's 10 to all three),
/// and the users are spread over all three endpoints (the table hashes the workload names
/// and the keys, so which user lands where is fixed: this is not a statistical test).
#[test]
fn maglev_keeps_each_user_on_one_endpoint_by_header() {
    let mesh = three_webs("{policy: maglev, hashOn: {header: x-user}}");
    assert_each_user_sticks(&mesh, |user| format!("x-user: user-{user}"));
}

/// The same with `ring_hash` on the cookie `session`, which the agent finds among the
/// request's other cookies (`theme=dark; session=s-<n>; lang=en`).
#[test]
fn ring_hash_keeps_each_user_on_one_endpoint_by_cookie() {
    let mesh = three_webs("{policy: ring_hash, hashOn: {cookie: session}}");
    assert_each_user_sticks(&mesh, |user| {
        format!("cookie: theme=dark; session=s-{user}; lang=en")
    });
    // Only the named cookie is the key: the same other cookies without `session` are no
    // key at all (requests spread at random, as the keyless ones above).
    let other_cookies = load(&mesh.client, 60, &["-H", "cookie: theme=dark; lang=en"]);
    assert_reaches_all(&other_cookies);
}

/// Service `web` on an HTTP port with `lb` over web-0, web-1, web-2.
fn three_webs(lb: &str) -> Backends {
    Backends::new(
        &[web("web-0"), web("web-1"), web("web-2")],
        None,
        &service("http", lb, ""),
    )
}

/// 24 users, each sending 10 requests with the header `header_of(user)` on one keep-alive
/// connection: each user's 10 reach one endpoint, and the users reach all three.
fn assert_each_user_sticks(mesh: &Backends, header_of: impl Fn(u32) -> String) {
    let mut users_per_endpoint: BTreeMap<String, u32> = BTreeMap::new();
    for user in 0..24 {
        let header = header_of(user);
        let summary = load(&mesh.client, 10, &["-H", &header]);
        let served: &serde_json::Map<String, serde_json::Value> =
            summary["served_by"].as_object().unwrap();
        assert_eq!(
            served.len(),
            1,
            "{header:?} reached several endpoints: {summary}"
        );
        let (endpoint, n) = served.iter().next().unwrap();
        assert_eq!(n, 10, "{summary}");
        *users_per_endpoint.entry(endpoint.clone()).or_default() += 1;
    }
    eprintln!("users per endpoint: {users_per_endpoint:?}");
    assert_eq!(users_per_endpoint.len(), 3, "{users_per_endpoint:?}");
    // Requests without the header are spread at random.
    assert_reaches_all(&load(&mesh.client, 60, &[]));
}

/// 60 keyless requests (picked at random) reach every endpoint: a given endpoint misses all
/// 60 with probability (2/3)^60 = 3e-11.
fn assert_reaches_all(keyless: &serde_json::Value) {
    for endpoint in ["web-0", "web-1", "web-2"] {
        assert!(count(keyless, endpoint) > 0, "{keyless}");
    }
}

/// On a TCP port, `ring_hash` on the source IP: 30 connections of the one client pod all
/// reach the same endpoint (round robin would give each endpoint 10).
#[test]
fn ring_hash_keeps_a_pods_connections_on_one_endpoint_by_source_ip() {
    let mesh = Backends::new(
        &[web("web-0"), web("web-1"), web("web-2")],
        None,
        &service("tcp", "{policy: ring_hash, hashOn: {sourceIp: true}}", ""),
    );
    let summary = load(&mesh.client, 30, &["-H", "connection: close"]);
    assert_eq!(summary["connections"], 30, "{summary}");
    let served = summary["served_by"].as_object().unwrap();
    assert_eq!(served.len(), 1, "{summary}");
}
