//! Validation of an AuthorizationPolicy: every pattern, path and condition value is checked
//! for the shape its field needs, so a policy that could never match as written (a lowercase
//! method, a path with a query, an unnormalised path) is refused at apply, naming the field.

use super::conditions::Attribute;
use super::{normalize_path, AuthorizationPolicy, Condition, Operation, Source};
use crate::cidr::Cidr;
use crate::meta::ObjectMeta;
use crate::resource::Kind;
use crate::route::is_token;
use crate::validate::{check_meta, check_port, check_selector, Checker};

/// What a pattern list holds, for the checks beyond the `*` rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A SPIFFE ID.
    Spiffe,
    Namespace,
    /// `<issuer>/<subject>`.
    RequestPrincipal,
    Host,
    Method,
    Path,
    /// A header or claim value: any text without control characters.
    Value,
}

/// Why `pattern` is no valid entry of a list of `shape`, if it is not.
fn pattern_problem(pattern: &str, shape: Shape) -> Option<String> {
    if pattern.is_empty() {
        return Some("must not be empty".to_owned());
    }
    let blank = |c: char| c.is_control() || (shape != Shape::Value && c.is_whitespace());
    if pattern.chars().any(blank) {
        return Some(if shape == Shape::Value {
            format!("{pattern:?} must not contain control characters")
        } else {
            format!("{pattern:?} must not contain whitespace")
        });
    }
    let stars = pattern.matches('*').count();
    let star_ok =
        stars == 0 || (stars == 1 && (pattern.starts_with('*') || pattern.ends_with('*')));
    if !star_ok {
        return Some(format!(
            "{pattern:?} may have one '*', only at the start or the end"
        ));
    }
    let literal = pattern.trim_matches('*');
    let starred = stars == 1;
    match shape {
        Shape::Spiffe if !pattern.starts_with('*') && !pattern.starts_with("spiffe://") => {
            Some(format!(
                "{pattern:?} must be a SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<account>), optionally with '*' at the start or end"
            ))
        }
        Shape::Namespace
            if !literal
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Some(format!(
                "{pattern:?} must be a namespace name (lowercase letters, digits and '-'), optionally with '*' at the start or end"
            ))
        }
        Shape::RequestPrincipal if !starred && !pattern.contains('/') => Some(format!(
            "{pattern:?} must be <issuer>/<subject> (the JWT's iss and sub), optionally with '*' at the start or end"
        )),
        Shape::Host if literal.contains('/') => Some(format!(
            "{pattern:?} must be a host, optionally with a port (no scheme or path)"
        )),
        Shape::Method => method_problem(pattern, literal),
        Shape::Path => path_problem(pattern, literal),
        _ => None,
    }
}

fn method_problem(pattern: &str, literal: &str) -> Option<String> {
    if !literal.is_empty() && !is_token(literal) {
        return Some(format!(
            "{pattern:?} is not an HTTP method (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    if literal.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some(format!(
            "{pattern:?}: methods are case-sensitive; write {:?}",
            pattern.to_ascii_uppercase()
        ));
    }
    None
}

fn path_problem(pattern: &str, literal: &str) -> Option<String> {
    if !pattern.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(format!(
            "{pattern:?} must be visible ASCII (percent-encode anything else)"
        ));
    }
    if pattern.contains(['?', '#']) {
        return Some(format!(
            "{pattern:?}: paths are matched without the query string or fragment"
        ));
    }
    if pattern.starts_with('*') {
        return None;
    }
    if !pattern.starts_with('/') {
        return Some(format!(
            "{pattern:?} must start with '/' (or be '*' or '*suffix')"
        ));
    }
    let normal = normalize_path(literal);
    if normal != literal {
        let star = if pattern.ends_with('*') { "*" } else { "" };
        return Some(format!(
            "{pattern:?} never matches: requests are matched by their normalised path; write {:?}",
            format!("{normal}{star}")
        ));
    }
    None
}

fn check_patterns(c: &mut Checker<'_>, field: &str, patterns: &[String], shape: Shape) {
    for (i, p) in patterns.iter().enumerate() {
        if let Some(problem) = pattern_problem(p, shape) {
            c.fail(format!("{field}[{i}]"), problem);
        }
    }
}

fn check_source(c: &mut Checker<'_>, f: &str, from: &Source) {
    let lists = [
        ("principals", &from.principals, Shape::Spiffe),
        ("notPrincipals", &from.not_principals, Shape::Spiffe),
        ("namespaces", &from.namespaces, Shape::Namespace),
        ("notNamespaces", &from.not_namespaces, Shape::Namespace),
        (
            "requestPrincipals",
            &from.request_principals,
            Shape::RequestPrincipal,
        ),
        (
            "notRequestPrincipals",
            &from.not_request_principals,
            Shape::RequestPrincipal,
        ),
    ];
    for (name, list, shape) in lists {
        check_patterns(c, &format!("{f}.{name}"), list, shape);
    }
}

fn check_operation(c: &mut Checker<'_>, f: &str, to: &Operation) {
    for (j, &port) in to.ports.iter().enumerate() {
        check_port(c, &format!("{f}.ports[{j}]"), port);
    }
    let lists = [
        ("hosts", &to.hosts, Shape::Host),
        ("notHosts", &to.not_hosts, Shape::Host),
        ("methods", &to.methods, Shape::Method),
        ("notMethods", &to.not_methods, Shape::Method),
        ("paths", &to.paths, Shape::Path),
        ("notPaths", &to.not_paths, Shape::Path),
    ];
    for (name, list, shape) in lists {
        check_patterns(c, &format!("{f}.{name}"), list, shape);
    }
}

fn check_condition(c: &mut Checker<'_>, f: &str, condition: &Condition) {
    if condition.values.is_empty() && condition.not_values.is_empty() {
        c.fail(f, "needs values or notValues");
    }
    for (name, list) in [
        ("values", &condition.values),
        ("notValues", &condition.not_values),
    ] {
        for (i, value) in list.iter().enumerate() {
            if let Some(problem) = value_problem(condition.key.attribute(), value) {
                c.fail(format!("{f}.{name}[{i}]"), problem);
            }
        }
    }
}

/// Why `value` cannot be compared with the attribute, if it cannot.
fn value_problem(attribute: &Attribute, value: &str) -> Option<String> {
    match attribute {
        Attribute::SourceIp => value.parse::<Cidr>().err().map(|e| e.to_string()),
        Attribute::DestinationPort => match value.parse::<u16>() {
            Ok(port) if port > 0 => None,
            _ => Some(format!("{value:?} is not a port number (1-65535)")),
        },
        Attribute::SourcePrincipal => pattern_problem(value, Shape::Spiffe),
        Attribute::SourceNamespace => pattern_problem(value, Shape::Namespace),
        Attribute::RequestPrincipal => pattern_problem(value, Shape::RequestPrincipal),
        Attribute::RequestHeader(_)
        | Attribute::Claim(_)
        | Attribute::RequestAudiences
        | Attribute::RequestPresenter => pattern_problem(value, Shape::Value),
    }
}

impl Kind for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;
        check_selector(c, "spec.selector", spec.selector.as_ref());
        for (i, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if let Some(from) = &rule.from {
                check_source(c, &format!("{field}.from"), from);
            }
            if let Some(to) = &rule.to {
                check_operation(c, &format!("{field}.to"), to);
            }
            for (j, condition) in rule.when.iter().enumerate() {
                check_condition(c, &format!("{field}.when[{j}]"), condition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_shapes() {
        assert_eq!(pattern_problem("*", Shape::Spiffe), None);
        assert_eq!(pattern_problem("spiffe://td/ns/a/*", Shape::Spiffe), None);
        assert_eq!(pattern_problem("*/sa/frontend", Shape::Spiffe), None);
        assert!(pattern_problem("spiffe://td/*/sa/*", Shape::Spiffe).is_some());
        assert!(pattern_problem("spiffe://td/*/sa/x", Shape::Spiffe).is_some());
        assert!(pattern_problem("**", Shape::Spiffe).is_some());
        assert!(pattern_problem("td/ns/a/sa/b", Shape::Spiffe).is_some());
        assert_eq!(pattern_problem("prod-*", Shape::Namespace), None);
        assert!(pattern_problem("Prod", Shape::Namespace).is_some());
        assert_eq!(pattern_problem("GET", Shape::Method), None);
        assert_eq!(pattern_problem("*", Shape::Method), None);
        assert!(pattern_problem("get", Shape::Method)
            .unwrap()
            .contains("write \"GET\""));
        assert!(pattern_problem("G T", Shape::Method).is_some());
        assert!(pattern_problem("G/T", Shape::Method).is_some());
        assert_eq!(pattern_problem("/api/*", Shape::Path), None);
        assert_eq!(pattern_problem("*.png", Shape::Path), None);
        assert_eq!(pattern_problem("/.well-known/*", Shape::Path), None);
        assert!(pattern_problem("/api/*/v1", Shape::Path)
            .unwrap()
            .contains("only at the start or the end"));
        assert!(pattern_problem("api/*", Shape::Path).is_some());
        assert!(pattern_problem("/a?b=1", Shape::Path).is_some());
        assert!(pattern_problem("/a/../b", Shape::Path)
            .unwrap()
            .contains("write \"/b\""));
        assert!(pattern_problem("//a*", Shape::Path)
            .unwrap()
            .contains("write \"/a*\""));
        assert!(pattern_problem("/é", Shape::Path).is_some());
        assert_eq!(pattern_problem("web.default:8080", Shape::Host), None);
        assert!(pattern_problem("http://web", Shape::Host).is_some());
        assert_eq!(
            pattern_problem("https://issuer.example/*", Shape::RequestPrincipal),
            None
        );
        assert!(pattern_problem("alice", Shape::RequestPrincipal).is_some());
        assert_eq!(pattern_problem("Mozilla/5.0 (X11)", Shape::Value), None);
        assert!(pattern_problem("a\nb", Shape::Value).is_some());
    }
}
