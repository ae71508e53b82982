//! Apply-time checks of the HTTP parts of a Route: each bad value is named by its field.

use super::{doc, lines, load_err};

/// The issue lines of loading a route on `reviews` with one rule made of `rule` (YAML lines
/// indented for a rule's keys) plus a backend, and route-level `extra` lines; none if it
/// loads.
fn rule_errors(rule: &str, extra: &str) -> Vec<String> {
    let text = doc(
        "Route",
        "{name: r}",
        &format!(
            "  service: reviews\n  rules:\n  - backends: [{{service: reviews}}]\n{rule}{extra}"
        ),
    );
    let Err(e) = crate::load_str("config.yaml", &text) else {
        return Vec::new();
    };
    lines(e)
        .into_iter()
        .map(|l| {
            l.strip_prefix("config.yaml: Route default/r: ")
                .unwrap_or(&l)
                .to_owned()
        })
        .collect()
}

fn match_errors(condition: &str) -> Vec<String> {
    rule_errors(&format!("    match: {condition}\n"), "")
}

#[test]
fn invalid_regexes_are_named_by_field() {
    assert_eq!(
        match_errors("{path: {regex: \"^/v[0-9+/\"}}"),
        ["spec.rules[0].match.path.regex: invalid regex \"^/v[0-9+/\": unclosed character class"]
    );
    assert_eq!(
        match_errors("{headers: {x-user: {regex: \"(\"}}, queryParams: {q: {regex: \"a{2,1}\"}}}"),
        [
            "spec.rules[0].match.headers.x-user.regex: invalid regex \"(\": unclosed group",
            "spec.rules[0].match.queryParams.q.regex: invalid regex \"a{2,1}\": invalid repetition count range, the start must be <= the end",
        ]
    );
}

/// A pattern whose compiled form would exceed the bound is refused, not compiled on every
/// agent.
#[test]
fn a_regex_over_the_size_bound_is_refused() {
    let e = match_errors("{path: {regex: \"(\\\\w{100}){100}\"}}");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("spec.rules[0].match.path.regex: regex \"(\\\\w{100}){100}\" is too big: compiled, it needs more than 1048576 bytes"),
        "{e:?}"
    );
}

#[test]
fn methods_are_tokens() {
    assert!(match_errors("{method: M-SEARCH}").is_empty());
    assert!(match_errors("{method: purge}").is_empty(), "any token");
    assert_eq!(
        match_errors("{method: \"GE T\"}"),
        ["spec.rules[0].match.method: \"GE T\" is not an HTTP method (a token: letters, digits and !#$%&'*+-.^_`|~, e.g. GET)"]
    );
    assert_eq!(match_errors("{method: \"\"}").len(), 1);
}

#[test]
fn paths_start_with_a_slash_and_hold_no_query() {
    assert_eq!(
        match_errors("{path: {exact: x}}"),
        ["spec.rules[0].match.path.exact: \"x\" must start with '/'"]
    );
    assert_eq!(
        match_errors("{path: {prefix: \"/a#b\"}}"),
        ["spec.rules[0].match.path.prefix: \"/a#b\" must not contain '?' or '#' (it matches the path only)"]
    );
    assert_eq!(
        match_errors("{path: {exact: /a}, pathPrefix: /b}"),
        ["spec.rules[0].match.pathPrefix: set either path or pathPrefix, not both"]
    );
    assert_eq!(
        match_errors("{path: {present: true}}"),
        ["spec.rules[0].match.path: present is for headers and query parameters; use exact, prefix or regex"]
    );
}

#[test]
fn header_and_query_conditions_are_checked() {
    assert_eq!(
        match_errors("{headers: {X-A: \"1\", x-b: \" 1\", x-c: {prefix: \" a\"}, x-d: {prefix: \"Bearer \"}}, queryParams: {\"\": \"1\"}}"),
        [
            "spec.rules[0].match.headers.X-A: \"X-A\" is not a lowercase header name (letters a-z, digits and !#$%&'*+-.^_`|~)",
            "spec.rules[0].match.headers.x-b: value \" 1\" must be visible ASCII, spaces and tabs, without leading or trailing blanks",
            "spec.rules[0].match.headers.x-c.prefix: \" a\" must be visible ASCII, spaces and tabs, not starting with a blank",
            "spec.rules[0].match.queryParams[\"\"]: a query parameter name must not be empty",
        ]
    );
    assert_eq!(
        match_errors("{headers: {x-a: true}}"),
        ["spec.rules[0].match.headers.x-a: invalid type: boolean `true`, expected a string (quote numbers and booleans) or a map with exactly one of exact, prefix, regex or present"]
    );
}

#[test]
fn rule_names_are_labels_and_unique() {
    let text = doc(
        "Route",
        "{name: r}",
        "  service: reviews\n  rules:\n  - name: Canary\n    match: {method: GET}\n    backends: [{service: reviews}]\n  - name: a\n    match: {method: PUT}\n    backends: [{service: reviews}]\n  - name: a\n    backends: [{service: reviews}]\n",
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: Route default/r: spec.rules[0].name: \"Canary\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            "config.yaml: Route default/r: spec.rules[2].name: duplicate rule name \"a\" (also spec.rules[1])",
        ]
    );
}

/// Only a rule without any condition catches everything; one with just a method does not.
#[test]
fn only_a_rule_without_conditions_makes_later_rules_unreachable() {
    let text = doc(
        "Route",
        "{name: r}",
        "  service: reviews\n  rules:\n  - match: {method: GET}\n    backends: [{service: reviews}]\n  - match: {queryParams: {a: b}}\n    backends: [{service: reviews}]\n  - match: {}\n    backends: [{service: reviews}]\n  - match: {method: GET}\n    backends: [{service: reviews}]\n",
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Route default/r: spec.rules[3]: unreachable: spec.rules[2] has no match and takes every request"]
    );
}

#[test]
fn timeouts_are_positive_and_at_most_a_day() {
    assert_eq!(
        rule_errors("    timeoutMs: 86400001\n", "  timeoutMs: 0\n"),
        [
            "spec.rules[0].timeoutMs: must be at most 86400000 (1 day), got 86400001",
            "spec.timeoutMs: must be greater than 0",
        ]
    );
    assert!(rule_errors("    timeoutMs: 86400000\n", "").is_empty());
}

#[test]
fn retries_are_checked() {
    assert_eq!(
        rule_errors(
            "    retries: {attempts: 11, perTryTimeoutMs: 0, retryOn: [reset, reset]}\n",
            "  retries: {attempts: 1, perTryTimeoutMs: 86400001, retryOn: []}\n"
        ),
        [
            "spec.rules[0].retries.attempts: must be at most 10, got 11",
            "spec.rules[0].retries.perTryTimeoutMs: must be greater than 0",
            "spec.rules[0].retries.retryOn[1]: reset is listed twice",
            "spec.retries.perTryTimeoutMs: must be at most 86400000 (1 day), got 86400001",
            "spec.retries.retryOn: must not be empty; omit it for the default [connect-failure, reset, gateway-error]",
        ]
    );
    assert_eq!(
        rule_errors(
            "    retries: {attempts: 1, retryOn: [retriable-status-codes]}\n",
            "  retries: {attempts: 1, retriableStatusCodes: [503, 99, 600]}\n"
        ),
        [
            "spec.rules[0].retries.retriableStatusCodes: retryOn has retriable-status-codes: list the status codes to retry here",
            "spec.retries.retriableStatusCodes[1]: must be an HTTP status from 100 to 599, got 99",
            "spec.retries.retriableStatusCodes[2]: must be an HTTP status from 100 to 599, got 600",
            "spec.retries.retriableStatusCodes: has no effect: add retriable-status-codes to retryOn",
        ]
    );
    assert_eq!(
        rule_errors("    retries: {attempts: 1, retryOn: [5XX]}\n", ""),
        ["spec.rules[0].retries.retryOn[0]: unknown variant `5XX`, expected one of `connect-failure`, `reset`, `gateway-error`, `5xx`, `retriable-status-codes`, `unavailable`, `cancelled`, `resource-exhausted`"]
    );
    assert!(rule_errors(
        "    retries: {attempts: 10, perTryTimeoutMs: 1, retryOn: [unavailable, cancelled, resource-exhausted, retriable-status-codes], retriableStatusCodes: [100, 599]}\n",
        ""
    )
    .is_empty());
}

#[test]
fn faults_are_checked() {
    assert_eq!(
        rule_errors("    fault: {abort: {status: 503, percent: 100.5}}\n", ""),
        ["spec.rules[0].fault.abort.percent: 100.5 is not a percentage (0 to 100)"]
    );
    assert_eq!(
        rule_errors("    fault: {delay: {ms: 10, percent: -1}}\n", ""),
        ["spec.rules[0].fault.delay.percent: -1 is not a percentage (0 to 100)"]
    );
    assert_eq!(
        rule_errors(
            "    fault: {delay: {ms: 3600001}, abort: {status: 199}}\n",
            ""
        ),
        [
            "spec.rules[0].fault.delay.ms: must be at most 3600000 (1 hour), got 3600001",
            "spec.rules[0].fault.abort.status: must be an HTTP status from 200 to 599, got 199",
        ]
    );
    assert_eq!(
        rule_errors("    fault: {}\n", ""),
        ["spec.rules[0].fault: set delay, abort or both"]
    );
    assert_eq!(
        rule_errors("    fault: {delay: {ms: 0}}\n", ""),
        ["spec.rules[0].fault.delay.ms: must be greater than 0"]
    );
    assert!(rule_errors(
        "    fault: {delay: {ms: 3600000, percent: 0}, abort: {status: 200, percent: 0.0001}}\n",
        ""
    )
    .is_empty());
}

#[test]
fn header_rules_refuse_framing_and_pseudo_headers() {
    assert_eq!(
        rule_errors(
            "    headers:
      request:
        set: {content-length: \"0\", host: example.com, X-Env: prod, x-ok: \" padded\"}
        add: {\":path\": /admin, x-via: mesh}
        remove: [transfer-encoding, x-via, te]
      response:
        remove: [connection, server]
",
            ""
        ),
        [
            "spec.rules[0].headers.request.set.X-Env: \"X-Env\" is not a lowercase header name (letters a-z, digits and !#$%&'*+-.^_`|~)",
            "spec.rules[0].headers.request.set.content-length: \"content-length\" frames the message or manages the connection; the proxy sets it, rules cannot",
            "spec.rules[0].headers.request.set.x-ok: value \" padded\" must be visible ASCII, spaces and tabs, without leading or trailing blanks",
            "spec.rules[0].headers.request.add[\":path\"]: \":path\" is a pseudo-header; the proxy sets those from the request itself",
            "spec.rules[0].headers.request.remove[0]: \"transfer-encoding\" frames the message or manages the connection; the proxy sets it, rules cannot",
            "spec.rules[0].headers.request.remove[1]: \"x-via\" is also in spec.rules[0].headers.request.add; name each header in one of set, add and remove",
            "spec.rules[0].headers.request.remove[2]: \"te\" frames the message or manages the connection; the proxy sets it, rules cannot",
            "spec.rules[0].headers.response.remove[0]: \"connection\" frames the message or manages the connection; the proxy sets it, rules cannot",
        ]
    );
}
