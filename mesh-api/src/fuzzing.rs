//! What fuzzing does with one input: the property tests (src/tests/fuzz.rs) and the cargo-fuzz
//! targets (fuzz/ at the workspace root) share it. Built for tests and with the `fuzzing`
//! feature only.
//!
//! Every input must end in `Ok` or an error; whatever loads must survive a round trip and
//! answer every query of its snapshot. The input is also read as an HTTP request (see
//! [`FuzzRequest`]) and matched against a route using every kind of condition, and its
//! query string is parsed: the parts of route matching that see network input.

mod request_security;

use std::net::IpAddr;
use std::sync::OnceLock;

pub use request_security::{
    exercise_request_security, sample_request, NOW, SAMPLE_JWKS, SAMPLE_TOKENS,
};

use crate::{
    load_str, parse_query, CompiledRoute, Peer, RequestAttributes, Resource, ResourceKey, Snapshot,
};

/// Load, and when that works, check the result serialises back to the same resources (YAML
/// and JSON), then build a snapshot and query everything it indexes (routes matched against
/// the input read as a request).
pub fn exercise(text: &str) {
    let request = FuzzRequest::from_text(text);
    let _ = parse_query(text);
    let _ = sample_route().http_rule(&request);
    let Ok(resources) = load_str("fuzz.yaml", text) else {
        return;
    };
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).unwrap();
        assert_eq!(
            &serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(),
            r,
            "{yaml}"
        );
        let json = r.to_json();
        assert_eq!(&Resource::from_json(json.as_bytes()).unwrap(), r, "{json}");
        assert_eq!(
            ResourceKey::from_storage_key(&r.storage_key()),
            Some(r.resource_key())
        );
    }
    if let Ok(snap) = Snapshot::from_resources(resources) {
        query(&snap, &request);
    }
}

/// Asks `snap` everything the agent asks of one; routes are matched against `request`.
pub fn query(snap: &Snapshot, request: &FuzzRequest<'_>) {
    let _ = snap.capture_prefixes();
    let _ = snap.mesh_config();
    for s in snap.services() {
        let _ = snap.endpoints(s);
        for subset in &s.spec.subsets {
            let _ = snap.subset_endpoints(s, &subset.name);
        }
        if let Some(route) = snap.route_for(s) {
            let _ = route.needs_http();
            let _ = route.tcp_rule();
            let _ = route.summary();
            let compiled = CompiledRoute::new(route);
            if let Some(i) = compiled.http_rule(request) {
                let rule = &route.spec.rules[i];
                let _ = (
                    route.spec.timeout_ms_for(rule),
                    route.spec.retries_for(rule),
                );
            }
        }
    }
    let ip: IpAddr = "10.244.1.4".parse().unwrap();
    let peers = [
        Peer {
            principal: None,
            ip,
        },
        Peer {
            principal: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"),
            ip,
        },
    ];
    for w in snap.workloads() {
        let _ = snap.policies_for(w);
        for port in [0, 9080, 9091] {
            let _ = snap.mtls_mode_for(w, port);
            for peer in &peers {
                let _ = snap.authorize(w, peer, port);
            }
        }
    }
}

/// A request read from fuzz input: the first line as `METHOD TARGET` (target split at the
/// first '?' into path and query), each further `name: value` line a header.
pub struct FuzzRequest<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> FuzzRequest<'a> {
    pub fn from_text(text: &'a str) -> FuzzRequest<'a> {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        FuzzRequest {
            method,
            path,
            query,
            headers,
        }
    }
}

impl RequestAttributes for FuzzRequest<'_> {
    fn method(&self) -> &str {
        self.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(lowercase_name))
            .map(|(_, value)| *value)
    }
}

/// A route with every kind of condition, so any input reaches every matcher.
pub const SAMPLE_ROUTE: &str = r#"
apiVersion: mesh/v1
kind: Route
metadata: {name: sample}
spec:
  service: web
  rules:
  - name: exact
    match: {method: GET, path: {exact: /x}, headers: {x-a: "1"}}
    backends: [{service: web}]
  - match: {path: {regex: "^/v[0-9]+/"}, headers: {x-b: {regex: "b+$"}, x-c: {present: false}}}
    backends: [{service: web}]
  - match: {pathPrefix: /api, queryParams: {q: {prefix: a}, r: {present: true}, s: "x y"}}
    backends: [{service: web}]
  - match: {headers: {x-d: {prefix: "Bearer "}}, queryParams: {t: {regex: "^[0-9]{2,}$"}}}
    backends: [{service: web}]
"#;

fn sample_route() -> &'static CompiledRoute {
    static ROUTE: OnceLock<CompiledRoute> = OnceLock::new();
    ROUTE.get_or_init(|| {
        let resources = load_str("sample.yaml", SAMPLE_ROUTE).expect("SAMPLE_ROUTE is valid");
        let Some(Resource::Route(route)) = resources.first() else {
            panic!("SAMPLE_ROUTE is one Route");
        };
        CompiledRoute::new(route)
    })
}
