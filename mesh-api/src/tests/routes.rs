//! Route: validation, cross-checks against services, and rule selection.

use super::{doc, load_err, problems, service, snapshot, snapshot_err};
use crate::fuzzing::FuzzRequest;
use crate::*;

fn route(spec: &str) -> String {
    doc("Route", "{name: canary}", spec)
}

fn svc(name: &str, vip: &str, ports: &str) -> String {
    doc(
        "Service",
        &format!("{{name: {name}}}"),
        &format!("  vips: [\"{vip}\"]\n  ports: {ports}\n  selector: {{app: {name}}}\n"),
    )
}

/// reviews (http 80 and grpc 90), reviews-v2 (http 80), plain (tcp 5432).
fn services() -> String {
    [
        svc(
            "reviews",
            "10.96.0.1",
            "[{port: 80, protocol: http}, {port: 90, protocol: grpc}]",
        ),
        svc(
            "reviews-v2",
            "10.96.0.2",
            "[{port: 80, protocol: http}, {port: 90, protocol: grpc}]",
        ),
        svc("plain", "10.96.0.3", "[{port: 5432}]"),
    ]
    .join("---\n")
}

fn with_services(route_doc: &str) -> String {
    format!("{}---\n{route_doc}", services())
}

fn only(resources: Vec<Resource>) -> Route {
    match resources.into_iter().next() {
        Some(Resource::Route(r)) => r,
        other => panic!("not a route: {other:?}"),
    }
}

#[test]
fn defaults_and_helpers() {
    let r = only(
        load_str(
            "r.yaml",
            &route(
                "  service: reviews\n  rules:\n  - match: {pathPrefix: /api, headers: {x-canary: \"true\"}}\n    backends: [{service: reviews-v2}]\n  - backends: [{service: reviews, weight: 0}, {service: reviews-v2, port: 90}]\n",
            ),
        )
        .unwrap(),
    );
    let rules = &r.spec.rules;
    assert_eq!(rules[0].backends[0].weight, 1);
    assert_eq!(rules[0].backends[0].port, None);
    assert_eq!(rules[0].backends[0].port_for(80), 80);
    assert_eq!(rules[1].backends[1].port_for(80), 90);
    assert_eq!(rules[1].total_weight(), 1);
    assert_eq!(r.spec.timeout_ms, None);
    assert_eq!(r.spec.retries, None);
    assert!(r.needs_http());
    assert!(rules[0].is_http());
    assert!(!rules[1].is_http());

    let compiled = CompiledRoute::new(&r);
    let rule = |text: &str| compiled.http_rule(&FuzzRequest::from_text(text));
    assert_eq!(rule("GET /api/x\nx-canary: true"), Some(0));
    assert_eq!(rule("GET /apis\nX-Canary: true"), Some(0));
    assert_eq!(rule("GET /api/x"), Some(1));
    assert_eq!(rule("GET /\nx-canary: true"), Some(1));
    assert_eq!(r.tcp_rule(), Some(&rules[1]));
}

#[test]
fn an_empty_match_is_not_http() {
    let r = only(
        load_str(
            "r.yaml",
            &route(
                "  service: reviews\n  rules:\n  - match: {}\n    backends: [{service: reviews}]\n",
            ),
        )
        .unwrap(),
    );
    assert!(!r.needs_http());
    assert_eq!(r.tcp_rule(), Some(&r.spec.rules[0]));
    assert_eq!(
        CompiledRoute::new(&r).http_rule(&FuzzRequest::from_text("PUT /anything")),
        Some(0)
    );
}

#[test]
fn rules_and_backends_are_required() {
    assert_eq!(
        load_err(&route("  service: reviews\n  rules: []\n")),
        ["config.yaml: Route default/canary: spec.rules: at least one rule is required"]
    );
    assert_eq!(
        load_err(&route("  service: reviews\n  rules: [{backends: []}]\n")),
        ["config.yaml: Route default/canary: spec.rules[0].backends: at least one backend is required"]
    );
    assert_eq!(
        load_err(&route("  rules: []\n")),
        ["config.yaml: Route default/canary: spec: missing field `service`"]
    );
}

#[test]
fn bad_values_are_named_by_field() {
    let text = route(
        "  service: Reviews
  rules:
  - match: {pathPrefix: api, headers: {X-Canary: \"1\", x-ok: \" padded\"}}
    backends:
    - {service: reviews_v2, weight: 1001, port: 0}
    - {service: reviews, weight: 0}
  - match: {pathPrefix: \"/a?b\"}
    backends: [{service: a, weight: 0}, {service: a, weight: 0}]
  timeoutMs: 0
  retries: {attempts: 11}
",
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: Route default/canary: spec.service: \"Reviews\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            "config.yaml: Route default/canary: spec.rules[0].match.pathPrefix: \"api\" must start with '/'",
            "config.yaml: Route default/canary: spec.rules[0].match.headers.X-Canary: \"X-Canary\" is not a lowercase header name (letters a-z, digits and !#$%&'*+-.^_`|~)",
            "config.yaml: Route default/canary: spec.rules[0].match.headers.x-ok: value \" padded\" must be visible ASCII, spaces and tabs, without leading or trailing blanks",
            "config.yaml: Route default/canary: spec.rules[0].backends[0].service: \"reviews_v2\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            "config.yaml: Route default/canary: spec.rules[0].backends[0].weight: must be at most 1000, got 1001",
            "config.yaml: Route default/canary: spec.rules[0].backends[0].port: must be between 1 and 65535, got 0",
            "config.yaml: Route default/canary: spec.rules[1].match.pathPrefix: \"/a?b\" must not contain '?' or '#' (it matches the path only)",
            "config.yaml: Route default/canary: spec.rules[1].backends[1]: duplicate backend \"a\" (also spec.rules[1].backends[0]); merge their weights",
            "config.yaml: Route default/canary: spec.rules[1].backends: every weight is 0; at least one backend must take traffic",
            "config.yaml: Route default/canary: spec.timeoutMs: must be greater than 0",
            "config.yaml: Route default/canary: spec.retries.attempts: must be at most 10, got 11",
        ]
    );
}

#[test]
fn rules_after_a_catch_all_are_unreachable() {
    let text = route(
        "  service: reviews\n  rules:\n  - backends: [{service: reviews}]\n  - match: {pathPrefix: /x}\n    backends: [{service: reviews}]\n",
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Route default/canary: spec.rules[1]: unreachable: spec.rules[0] has no match and takes every request"]
    );
}

#[test]
fn unknown_fields_and_types_have_paths() {
    assert_eq!(
        load_err(&route(
            "  service: reviews\n  rules:\n  - match: {paht: /x}\n    backends: [{service: reviews}]\n"
        )),
        ["config.yaml: Route default/canary: spec.rules[0].match.paht: unknown field `paht`, expected one of `method`, `path`, `pathPrefix`, `headers`, `queryParams`"]
    );
    assert_eq!(
        load_err(&route(
            "  service: reviews\n  rules:\n  - match: {path: /x}\n    backends: [{service: reviews}]\n"
        )),
        ["config.yaml: Route default/canary: spec.rules[0].match.path: write {exact: /x} or {prefix: /x} (or pathPrefix: /x)"]
    );
    assert_eq!(
        load_err(&route(
            "  service: reviews\n  rules:\n  - backends: [{service: reviews, weight: -1}]\n"
        )),
        ["config.yaml: Route default/canary: spec.rules[0].backends[0].weight: invalid value: integer `-1`, expected u32"]
    );
}

#[test]
fn routes_resolve_against_services() {
    let snap = snapshot(&with_services(&route(
        "  service: reviews\n  rules:\n  - match: {headers: {x-canary: \"true\"}}\n    backends: [{service: reviews-v2}]\n  - backends: [{service: reviews, weight: 9}, {service: reviews-v2, port: 80}]\n",
    )));
    let reviews = snap.service("default", "reviews").unwrap();
    assert_eq!(snap.route_for(reviews).unwrap().metadata.name, "canary");
    assert!(snap
        .route_for(snap.service("default", "plain").unwrap())
        .is_none());
    // A service built elsewhere with the same name finds the route too.
    assert!(snap
        .route_for(&service("reviews", "10.96.0.9", "x"))
        .is_some());
    assert_eq!(
        snap.route("default", "canary").unwrap().spec.service,
        "reviews"
    );
    assert!(snap.route("default", "nope").is_none());
    assert_eq!(snap.routes().len(), 1);
}

#[test]
fn missing_services_and_ports_are_named() {
    let text = with_services(&route(
        "  service: reviewz
  rules:
  - backends: [{service: reviews}, {service: reviewz-v2}, {service: reviews-v2, port: 81}]
",
    ));
    assert_eq!(
        snapshot_err(&text),
        [
            "Route default/canary: spec.service: no Service default/reviewz",
            "Route default/canary: spec.rules[0].backends[1].service: no Service default/reviewz-v2",
            "Route default/canary: spec.rules[0].backends[2].port: Service default/reviews-v2 has no port 81",
        ]
    );
}

#[test]
fn backends_without_a_port_need_the_hosts_ports() {
    let text = with_services(&route(
        "  service: reviews\n  rules:\n  - backends: [{service: plain}]\n",
    ));
    assert_eq!(
        snapshot_err(&text),
        ["Route default/canary: spec.rules[0].backends[0].service: Service default/plain has no port 80, which Service default/reviews has; set spec.rules[0].backends[0].port"]
    );
}

#[test]
fn one_route_per_service() {
    let first = route("  service: reviews\n  rules: [{backends: [{service: reviews-v2}]}]\n");
    let second = first.replace("name: canary", "name: other");
    assert_eq!(
        snapshot_err(&format!("{}---\n{second}", with_services(&first))),
        ["Route default/other: spec.service: Service default/reviews already has Route default/canary (one Route per Service)"]
    );
}

#[test]
fn http_matches_need_an_http_port() {
    let text = with_services(&route(
        "  service: plain\n  rules:\n  - match: {pathPrefix: /}\n    backends: [{service: plain}]\n",
    ));
    assert_eq!(
        snapshot_err(&text),
        ["Route default/canary: spec.rules[0].match: HTTP match, but Service default/plain has no http, http2, grpc or auto port"]
    );
}

#[test]
fn routes_are_checked_per_namespace() {
    let text = with_services(
        &route("  service: reviews\n  rules: [{backends: [{service: reviews}]}]\n")
            .replace("{name: canary}", "{name: canary, namespace: prod}"),
    );
    assert_eq!(
        snapshot_err(&text),
        [
            "Route prod/canary: spec.service: no Service prod/reviews",
            "Route prod/canary: spec.rules[0].backends[0].service: no Service prod/reviews",
        ]
    );
}

#[test]
fn built_in_code_validates_too() {
    let r = Route {
        metadata: ObjectMeta::new("default", "r"),
        spec: RouteSpec {
            service: "reviews".into(),
            rules: vec![RouteRule::new(vec![Backend {
                weight: 0,
                ..Backend::new("reviews")
            }])],
            timeout_ms: Some(1),
            retries: Some(Retries::new(10)),
        },
    };
    assert_eq!(
        problems(r),
        ["Route default/r: spec.rules[0].backends: every weight is 0; at least one backend must take traffic"]
    );
}
