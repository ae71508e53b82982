//! Picking a Route rule for an HTTP request: every condition, rule order, and what the
//! compiled form does with a condition that cannot hold.

use super::doc;
use crate::fuzzing::FuzzRequest;
use crate::*;

/// A valid route on `reviews` with `rules` (YAML, indented as a rules list).
fn route(rules: &str) -> Route {
    let text = doc(
        "Route",
        "{name: r}",
        &format!("  service: reviews\n  rules:\n{rules}"),
    );
    match load_str("r.yaml", &text).unwrap().remove(0) {
        Resource::Route(r) => r,
        other => panic!("not a route: {other:?}"),
    }
}

/// The rule index `request` (`METHOD TARGET`, then `name: value` header lines) picks.
fn pick(route: &Route, request: &str) -> Option<usize> {
    CompiledRoute::new(route).http_rule(&FuzzRequest::from_text(request))
}

const TO_REVIEWS: &str = "    backends: [{service: reviews}]\n";
const CATCH_ALL: &str = "  - backends: [{service: reviews}]\n";

fn rule(condition: &str) -> String {
    format!("  - match: {condition}\n{TO_REVIEWS}")
}

#[test]
fn method_is_compared_exactly() {
    let r = route(&rule("{method: GET}"));
    assert_eq!(pick(&r, "GET /"), Some(0));
    assert_eq!(pick(&r, "get /"), None);
    assert_eq!(pick(&r, "POST /"), None);
}

#[test]
fn paths_exact_prefix_and_regex() {
    let r = route(&format!(
        "{}{}{}",
        rule("{path: {exact: /x}}"),
        rule("{path: {prefix: /api}}"),
        rule("{path: {regex: \"^/v[0-9]+/\"}}")
    ));
    assert_eq!(pick(&r, "GET /x"), Some(0));
    assert_eq!(pick(&r, "GET /x/"), None);
    assert_eq!(
        pick(&r, "GET /x?y=1"),
        Some(0),
        "the query is not part of the path"
    );
    assert_eq!(pick(&r, "GET /api/v1/x"), Some(1));
    assert_eq!(
        pick(&r, "GET /apis"),
        Some(1),
        "a prefix is a plain string prefix"
    );
    assert_eq!(pick(&r, "GET /v12/list"), Some(2));
    assert_eq!(pick(&r, "GET /v/list"), None);
    assert_eq!(pick(&r, "GET /old/v1/list"), None, "anchored by the user");
}

/// A regex is searched for, not matched against the whole path, unless anchored.
#[test]
fn a_regex_is_found_anywhere_unless_anchored() {
    let r = route(&rule("{path: {regex: \"/v[0-9]+/\"}}"));
    assert_eq!(pick(&r, "GET /old/v1/list"), Some(0));
}

/// Paths are matched as sent: `%2F` is not `/`, so an encoded path does not slip past an
/// exact or prefix match, nor into one.
#[test]
fn paths_are_not_percent_decoded() {
    let r = route(&rule("{path: {prefix: /api/}}"));
    assert_eq!(pick(&r, "GET /api%2Fadmin"), None);
    let r = route(&rule("{path: {exact: /a%20b}}"));
    assert_eq!(pick(&r, "GET /a%20b"), Some(0));
    assert_eq!(pick(&r, "GET /a b"), None);
}

#[test]
fn path_prefix_is_shorthand_for_a_prefix_path() {
    let short = route(&rule("{pathPrefix: /api}"));
    let long = route(&rule("{path: {prefix: /api}}"));
    for request in ["GET /api", "GET /apis/x", "GET /", "GET /ap"] {
        assert_eq!(pick(&short, request), pick(&long, request), "{request}");
    }
    assert_eq!(
        short.spec.rules[0]
            .r#match
            .as_ref()
            .unwrap()
            .path_condition(),
        Some(PathMatch::Prefix("/api".into()))
    );
}

#[test]
fn headers_exact_prefix_regex_present_and_absent() {
    let r = route(&format!(
        "{}{}{}{}{}",
        rule("{headers: {x-canary: \"true\"}}"),
        rule("{headers: {authorization: {prefix: \"Bearer \"}}}"),
        rule("{headers: {x-user: {regex: \"^test-[0-9]+$\"}}}"),
        rule("{headers: {x-debug: {present: true}}}"),
        rule("{headers: {x-internal: {present: false}}}"),
    ));
    assert_eq!(pick(&r, "GET /\nx-canary: true"), Some(0));
    assert_eq!(
        pick(&r, "GET /\nX-Canary: true"),
        Some(0),
        "names are case-insensitive"
    );
    assert_eq!(pick(&r, "GET /\nx-canary: True\nx-internal: 1"), None);
    assert_eq!(
        pick(&r, "GET /\nauthorization: Bearer abc\nx-internal: 1"),
        Some(1)
    );
    assert_eq!(
        pick(&r, "GET /\nauthorization: Basic abc\nx-internal: 1"),
        None
    );
    assert_eq!(pick(&r, "GET /\nx-user: test-42\nx-internal: 1"), Some(2));
    assert_eq!(pick(&r, "GET /\nx-user: test-4x\nx-internal: 1"), None);
    assert_eq!(
        pick(&r, "GET /\nx-debug:\nx-internal: 1"),
        Some(3),
        "an empty value is present"
    );
    // present: false holds only when the header is absent.
    assert_eq!(pick(&r, "GET /"), Some(4));
    assert_eq!(pick(&r, "GET /\nx-internal: 1"), None);
}

#[test]
fn query_params_are_decoded_and_the_first_one_counts() {
    let r = route(&format!(
        "{}{}{}",
        rule("{queryParams: {debug: \"1\", user: {prefix: \"ann \"}}}"),
        rule("{queryParams: {page: {regex: \"^[0-9]+$\"}, flag: {present: true}}}"),
        rule("{queryParams: {admin: {present: false}}}"),
    ));
    assert_eq!(pick(&r, "GET /?debug=1&user=ann+lee"), Some(0));
    assert_eq!(pick(&r, "GET /?user=ann%20lee&debug=%31"), Some(0));
    assert_eq!(
        pick(&r, "GET /?debug=2&debug=1&user=ann+lee&admin"),
        None,
        "the first debug is 2"
    );
    assert_eq!(
        pick(&r, "GET /x?page=12&flag"),
        Some(1),
        "a bare name is present"
    );
    assert_eq!(pick(&r, "GET /x?page=12&admin"), None);
    assert_eq!(
        pick(&r, "GET /x"),
        Some(2),
        "no query: every parameter is absent"
    );
    assert_eq!(pick(&r, "GET /x?admin=0"), None);
}

#[test]
fn every_condition_of_a_rule_must_hold_and_the_first_matching_rule_wins() {
    let r = route(&format!(
        "  - match: {{method: POST, path: {{prefix: /api}}, headers: {{x-a: \"1\"}}, queryParams: {{q: x}}}}\n{TO_REVIEWS}{}{TO_REVIEWS}",
        "  - match: {path: {prefix: /api}}\n"
    ));
    assert_eq!(pick(&r, "POST /api?q=x\nx-a: 1"), Some(0));
    assert_eq!(pick(&r, "GET /api?q=x\nx-a: 1"), Some(1));
    assert_eq!(pick(&r, "POST /api?q=y\nx-a: 1"), Some(1));
    assert_eq!(pick(&r, "POST /api?q=x"), Some(1));
    assert_eq!(
        pick(&r, "POST /other?q=x\nx-a: 1"),
        None,
        "no rule: the host service"
    );
}

#[test]
fn a_rule_without_conditions_takes_every_request() {
    let r = route(&format!("{}{CATCH_ALL}", rule("{method: GET}")));
    assert_eq!(pick(&r, "DELETE /anything?x=1"), Some(1));
    assert_eq!(r.tcp_rule(), Some(&r.spec.rules[1]));
    let only_method = &r.spec.rules[0];
    assert!(
        only_method.is_http(),
        "any condition makes a rule HTTP-only"
    );
}

/// Validation refuses a regex that does not compile; a Route built in code skips it, and
/// then the rule matches nothing rather than everything.
#[test]
fn a_regex_that_does_not_compile_never_matches() {
    let mut r = route(&format!("{}{CATCH_ALL}", rule("{method: GET}")));
    r.spec.rules[0].r#match = Some(RouteMatch {
        path: Some(PathMatch::Regex("[".into())),
        ..RouteMatch::default()
    });
    assert_eq!(pick(&r, "GET /"), Some(1));
    r.spec.rules[0].r#match = Some(RouteMatch {
        headers: [("x-a".to_owned(), StringMatch::Regex("(".into()))].into(),
        ..RouteMatch::default()
    });
    assert_eq!(pick(&r, "GET /\nx-a: ("), Some(1));
}

#[test]
fn effective_timeouts_and_retries_fall_back_to_the_route() {
    let r = route("  - match: {method: GET}\n    backends: [{service: reviews}]\n    timeoutMs: 100\n    retries: {attempts: 1}\n  - backends: [{service: reviews}]\n");
    let mut spec = r.spec.clone();
    spec.timeout_ms = Some(900);
    spec.retries = Some(Retries::new(3));
    assert_eq!(spec.timeout_ms_for(&spec.rules[0]), Some(100));
    assert_eq!(spec.retries_for(&spec.rules[0]).unwrap().attempts, 1);
    assert_eq!(spec.timeout_ms_for(&spec.rules[1]), Some(900));
    assert_eq!(spec.retries_for(&spec.rules[1]).unwrap().attempts, 3);
    assert_eq!(r.spec.timeout_ms_for(&r.spec.rules[1]), None);
}

#[test]
fn the_design_example_loads_with_its_defaults() {
    let r = route(
        "  - name: canary
    match:
      method: GET
      path: {prefix: /api}
      headers: {x-canary: \"true\", x-user: {regex: \"^test-\"}, x-debug: {present: true}}
      queryParams: {debug: \"1\"}
    backends:
    - {service: reviews, subset: v2, weight: 10}
    - {service: reviews, subset: v1, weight: 90}
    timeoutMs: 500
    retries: {attempts: 3, retryOn: [5xx, retriable-status-codes], retriableStatusCodes: [409]}
    fault: {delay: {ms: 200, percent: 10}, abort: {status: 503}}
    headers:
      request: {set: {x-env: prod}, add: {x-via: mesh}, remove: [x-debug]}
      response: {set: {cache-control: no-store}, remove: [server]}
",
    );
    let rule = &r.spec.rules[0];
    assert_eq!(rule.name.as_deref(), Some("canary"));
    assert_eq!(rule.backends[0].subset.as_deref(), Some("v2"));
    let retries = rule.retries.as_ref().unwrap();
    assert_eq!(
        retries.retry_on,
        [RetryOn::FiveXx, RetryOn::RetriableStatusCodes]
    );
    assert_eq!(retries.retriable_status_codes, [409]);
    let fault = rule.fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().percent.fraction(), 0.1);
    assert_eq!(fault.abort.as_ref().unwrap().percent, Percent::HUNDRED);
    let request = rule.headers.as_ref().unwrap().request.as_ref().unwrap();
    assert_eq!(request.remove, ["x-debug"]);
    assert_eq!(
        pick(
            &r,
            "GET /api/x?debug=1\nx-canary: true\nx-user: test-1\nx-debug: y"
        ),
        Some(0)
    );
    // Omitted retryOn is the default list, and stays omitted when written back.
    let r = route("  - backends: [{service: reviews}]\n    retries: {attempts: 2}\n");
    let retries = r.spec.rules[0].retries.as_ref().unwrap();
    assert_eq!(retries.retry_on, RetryOn::DEFAULT);
    assert_eq!(retries, &Retries::new(2));
    let yaml = serde_yaml_ng::to_string(&Resource::Route(r)).unwrap();
    assert!(yaml.contains("retries:\n      attempts: 2\n"), "{yaml}");
    assert!(!yaml.contains("retryOn"), "{yaml}");
}

#[test]
fn tables_show_a_compact_summary() {
    let r = route(
        "  - name: canary
    match: {method: GET, pathPrefix: /api, headers: {x-canary: \"true\"}}
    backends: [{service: reviews, subset: v2, weight: 10}, {service: reviews, subset: v1, weight: 90}]
  - match: {path: {regex: ^/v1/}, headers: {x-a: {present: false}, x-b: {prefix: b}}, queryParams: {q: {present: true}}}
    backends: [{service: other, port: 8080}]
    timeoutMs: 500
    retries: {attempts: 2}
    fault: {abort: {status: 503, percent: 0.5}}
  - backends: [{service: reviews}]
",
    );
    assert_eq!(
        r.summary(),
        "service=reviews rules=3 canary: GET /api* x-canary=true -> reviews/v2:10,reviews/v1:90; \
         ~^/v1/ !x-a x-b=b* ?q -> other@8080 (timeout 500ms, retries 2, abort 503 0.5%); \
         * -> reviews"
    );
}
