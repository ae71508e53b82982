//! A Route's own rules: what can be checked without the services it names (those checks are
//! in `snapshot/traffic.rs`).

use std::collections::HashMap;

use super::headers::{
    check_header_rules, header_name_problem, is_header_name, is_header_value,
    is_header_value_prefix, is_token, HEADER_VALUE_RULE,
};
use super::matching::compile_regex;
use super::{
    Backend, Fault, PathMatch, Retries, RetryOn, Route, RouteMatch, StringMatch,
    MAX_FAULT_DELAY_MS, MAX_RETRY_ATTEMPTS, MAX_TIMEOUT_MS, MAX_WEIGHT,
};
use crate::validate::{check_http_path, check_meta, check_name, check_port, check_ref};
use crate::validate::{map_field, Checker};

pub(super) fn check_route(c: &mut Checker<'_>, route: &Route) {
    check_meta(c, &route.metadata);
    let spec = &route.spec;
    check_ref(c, "spec.service", &spec.service);

    if spec.rules.is_empty() {
        c.fail("spec.rules", "at least one rule is required");
    }
    let mut catch_all: Option<usize> = None;
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name {
            check_name(c, &format!("{field}.name"), name);
            if let Some(j) = names.insert(name, i) {
                c.fail(
                    format!("{field}.name"),
                    format!("duplicate rule name {name:?} (also spec.rules[{j}])"),
                );
            }
        }
        if let Some(j) = catch_all {
            c.fail(
                &field,
                format!("unreachable: spec.rules[{j}] has no match and takes every request"),
            );
        } else if !rule.is_http() {
            catch_all = Some(i);
        }
        if let Some(m) = &rule.r#match {
            check_match(c, &format!("{field}.match"), m);
        }
        check_backends(c, &field, &rule.backends);
        if let Some(t) = rule.timeout_ms {
            check_timeout(c, &format!("{field}.timeoutMs"), t, MAX_TIMEOUT_MS);
        }
        if let Some(r) = &rule.retries {
            check_retries(c, &format!("{field}.retries"), r);
        }
        if let Some(f) = &rule.fault {
            check_fault(c, &format!("{field}.fault"), f);
        }
        if let Some(h) = &rule.headers {
            check_header_rules(c, &format!("{field}.headers"), h);
        }
    }

    if let Some(t) = spec.timeout_ms {
        check_timeout(c, "spec.timeoutMs", t, MAX_TIMEOUT_MS);
    }
    if let Some(r) = &spec.retries {
        check_retries(c, "spec.retries", r);
    }
}

/// A duration in milliseconds: positive and at most `max`.
pub(crate) fn check_timeout(c: &mut Checker<'_>, field: &str, ms: u64, max: u64) {
    if ms == 0 {
        c.fail(field, "must be greater than 0");
    } else if ms > max {
        c.fail(
            field,
            format!("must be at most {max} ({}), got {ms}", describe_ms(max)),
        );
    }
}

fn describe_ms(ms: u64) -> String {
    match ms {
        MAX_TIMEOUT_MS => "1 day".to_owned(),
        MAX_FAULT_DELAY_MS => "1 hour".to_owned(),
        _ => format!("{ms} ms"),
    }
}

fn check_match(c: &mut Checker<'_>, field: &str, m: &RouteMatch) {
    if let Some(method) = &m.method {
        if !is_token(method) {
            c.fail(
                format!("{field}.method"),
                format!(
                    "{method:?} is not an HTTP method (a token: letters, digits and \
                     !#$%&'*+-.^_`|~, e.g. GET)"
                ),
            );
        }
    }
    if let Some(path) = &m.path {
        let (key, value) = match path {
            PathMatch::Exact(v) => ("exact", v),
            PathMatch::Prefix(v) => ("prefix", v),
            PathMatch::Regex(v) => ("regex", v),
        };
        let at = format!("{field}.path.{key}");
        match path {
            PathMatch::Regex(pattern) => check_regex(c, &at, pattern),
            _ => check_match_path(c, &at, value),
        }
    }
    if let Some(prefix) = &m.path_prefix {
        let at = format!("{field}.pathPrefix");
        if m.path.is_some() {
            c.fail(&at, "set either path or pathPrefix, not both");
        }
        check_match_path(c, &at, prefix);
    }
    let headers = format!("{field}.headers");
    for (name, condition) in &m.headers {
        let at = map_field(&headers, name);
        if !is_header_name(name) {
            c.fail(&at, header_name_problem(name));
            continue;
        }
        match condition {
            StringMatch::Exact(v) if !is_header_value(v) => {
                c.fail(&at, format!("value {v:?} {HEADER_VALUE_RULE}"));
            }
            StringMatch::Prefix(v) if !is_header_value_prefix(v) => c.fail(
                format!("{at}.prefix"),
                format!("{v:?} must be visible ASCII, spaces and tabs, not starting with a blank"),
            ),
            StringMatch::Regex(pattern) => check_regex(c, &format!("{at}.regex"), pattern),
            _ => {}
        }
    }
    let params = format!("{field}.queryParams");
    for (name, condition) in &m.query_params {
        let at = map_field(&params, name);
        if name.is_empty() {
            c.fail(&at, "a query parameter name must not be empty");
        }
        if let StringMatch::Regex(pattern) = condition {
            check_regex(c, &format!("{at}.regex"), pattern);
        }
    }
}

/// An exact or prefix path: as a request line carries it, without the query or fragment.
fn check_match_path(c: &mut Checker<'_>, field: &str, path: &str) {
    check_http_path(c, field, path);
    if path.contains(['?', '#']) {
        c.fail(
            field,
            format!("{path:?} must not contain '?' or '#' (it matches the path only)"),
        );
    }
}

fn check_regex(c: &mut Checker<'_>, field: &str, pattern: &str) {
    if let Err(problem) = compile_regex(pattern) {
        c.fail(field, problem);
    }
}

fn check_backends(c: &mut Checker<'_>, rule: &str, backends: &[Backend]) {
    if backends.is_empty() {
        c.fail(
            format!("{rule}.backends"),
            "at least one backend is required",
        );
        return;
    }
    let mut seen: HashMap<(&str, Option<&str>, Option<u16>), usize> = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let field = format!("{rule}.backends[{i}]");
        check_ref(c, &format!("{field}.service"), &b.service);
        if let Some(subset) = &b.subset {
            check_name(c, &format!("{field}.subset"), subset);
        }
        if b.weight > MAX_WEIGHT {
            c.fail(
                format!("{field}.weight"),
                format!("must be at most {MAX_WEIGHT}, got {}", b.weight),
            );
        }
        if let Some(port) = b.port {
            check_port(c, &format!("{field}.port"), port);
        }
        if let Some(j) = seen.insert((&b.service, b.subset.as_deref(), b.port), i) {
            let name = match &b.subset {
                Some(subset) => format!("{}/{subset}", b.service),
                None => b.service.clone(),
            };
            c.fail(
                &field,
                format!(
                    "duplicate backend {name:?} (also {rule}.backends[{j}]); merge their weights"
                ),
            );
        }
    }
    if backends.iter().all(|b| b.weight == 0) {
        c.fail(
            format!("{rule}.backends"),
            "every weight is 0; at least one backend must take traffic",
        );
    }
}

fn check_retries(c: &mut Checker<'_>, field: &str, r: &Retries) {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        c.fail(
            format!("{field}.attempts"),
            format!("must be at most {MAX_RETRY_ATTEMPTS}, got {}", r.attempts),
        );
    }
    if let Some(t) = r.per_try_timeout_ms {
        check_timeout(c, &format!("{field}.perTryTimeoutMs"), t, MAX_TIMEOUT_MS);
    }
    if r.retry_on.is_empty() {
        let default: Vec<&str> = RetryOn::DEFAULT.iter().map(|r| r.as_str()).collect();
        c.fail(
            format!("{field}.retryOn"),
            format!(
                "must not be empty; omit it for the default [{}]",
                default.join(", ")
            ),
        );
    }
    for (i, on) in r.retry_on.iter().enumerate() {
        if r.retry_on[..i].contains(on) {
            c.fail(
                format!("{field}.retryOn[{i}]"),
                format!("{} is listed twice", on.as_str()),
            );
        }
    }
    let codes = format!("{field}.retriableStatusCodes");
    for (i, code) in r.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            c.fail(
                format!("{codes}[{i}]"),
                format!("must be an HTTP status from 100 to 599, got {code}"),
            );
        }
    }
    let wanted = r.retry_on.contains(&RetryOn::RetriableStatusCodes);
    match (wanted, r.retriable_status_codes.is_empty()) {
        (true, true) => c.fail(
            &codes,
            "retryOn has retriable-status-codes: list the status codes to retry here",
        ),
        (false, false) => c.fail(
            &codes,
            "has no effect: add retriable-status-codes to retryOn",
        ),
        _ => {}
    }
}

fn check_fault(c: &mut Checker<'_>, field: &str, fault: &Fault) {
    if fault.delay.is_none() && fault.abort.is_none() {
        c.fail(field, "set delay, abort or both");
    }
    if let Some(delay) = &fault.delay {
        check_timeout(
            c,
            &format!("{field}.delay.ms"),
            delay.ms,
            MAX_FAULT_DELAY_MS,
        );
    }
    if let Some(abort) = &fault.abort {
        if !(200..=599).contains(&abort.status) {
            c.fail(
                format!("{field}.abort.status"),
                format!(
                    "must be an HTTP status from 200 to 599, got {}",
                    abort.status
                ),
            );
        }
    }
}
