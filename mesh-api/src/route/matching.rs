//! Picking the rule for an HTTP request: a Route's conditions compiled once (regexes
//! included), then evaluated per request against what [`RequestAttributes`] exposes.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};

use super::query::parse_query;
use super::{PathMatch, Route, RouteRule, StringMatch};

/// Most memory one compiled regex may take, and its lazy DFA cache. The `regex` crate
/// matches in linear time, so a pattern cannot stall a request; this bounds what a hostile
/// (or careless) one can take in memory. A pattern over it is refused when it is applied.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a Route regex as the proxy does, or says in one line why it cannot be.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex {pattern:?} is too big: compiled, it needs more than {limit} bytes")
            }
            // The syntax message spans lines (pattern, caret, reason): keep the reason.
            regex::Error::Syntax(text) => {
                let reason = text
                    .lines()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or(text.trim());
                format!("invalid regex {pattern:?}: {reason}")
            }
            other => format!("invalid regex {pattern:?}: {other}"),
        })
}

/// What the matcher needs from a request; the agent implements it for its request type.
pub trait RequestAttributes {
    fn method(&self) -> &str;
    /// The path as sent, without the query (and without percent-decoding).
    fn path(&self) -> &str;
    /// The raw query string without the '?', if the request has one.
    fn query(&self) -> Option<&str>;
    /// The first value of a header, by lowercase name; `None` if the request lacks it or
    /// the value is not UTF-8 (so `present: true` does not hold for such a header either).
    fn header(&self, lowercase_name: &str) -> Option<&str>;
}

/// A Route with its conditions compiled once: build one per Route per config snapshot and
/// keep it. Building never fails: apply-time validation already compiled every regex with
/// the same limits; should one still fail (e.g. a resource built in code and never
/// validated), the condition using it never holds, so its rule matches nothing rather than
/// everything.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone, Default)]
struct CompiledRule {
    method: Option<String>,
    path: Option<Condition>,
    headers: Vec<(String, Condition)>,
    query_params: Vec<(String, Condition)>,
}

/// One compiled condition on an optional text (a path is always there).
#[derive(Debug, Clone)]
enum Condition {
    Exact(String),
    Prefix(String),
    /// `None`: the pattern did not compile, so the condition never holds.
    Regex(Option<Regex>),
    Present(bool),
}

impl Condition {
    fn of_path(path: PathMatch) -> Condition {
        match path {
            PathMatch::Exact(s) => Condition::Exact(s),
            PathMatch::Prefix(s) => Condition::Prefix(s),
            PathMatch::Regex(s) => Condition::regex(&s),
        }
    }

    fn of_value(value: &StringMatch) -> Condition {
        match value {
            StringMatch::Exact(s) => Condition::Exact(s.clone()),
            StringMatch::Prefix(s) => Condition::Prefix(s.clone()),
            StringMatch::Regex(s) => Condition::regex(s),
            StringMatch::Present(p) => Condition::Present(*p),
        }
    }

    fn regex(pattern: &str) -> Condition {
        Condition::Regex(compile_regex(pattern).ok())
    }

    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Condition::Present(wanted), v) => v.is_some() == *wanted,
            (_, None) => false,
            (Condition::Exact(s), Some(v)) => v == s,
            (Condition::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (Condition::Regex(re), Some(v)) => re.as_ref().is_some_and(|re| re.is_match(v)),
        }
    }
}

impl CompiledRule {
    fn new(rule: &RouteRule) -> CompiledRule {
        let Some(m) = &rule.r#match else {
            return CompiledRule::default();
        };
        let values = |map: &BTreeMap<String, StringMatch>| {
            map.iter()
                .map(|(name, value)| (name.clone(), Condition::of_value(value)))
                .collect()
        };
        CompiledRule {
            method: m.method.clone(),
            path: m.path_condition().map(Condition::of_path),
            headers: values(&m.headers),
            query_params: values(&m.query_params),
        }
    }

    /// `query` parses the request's query on first use, so requests are parsed at most once
    /// and only when a rule asks about query parameters.
    fn matches(
        &self,
        request: &impl RequestAttributes,
        query: &OnceCell<BTreeMap<String, String>>,
    ) -> bool {
        self.method.as_deref().is_none_or(|m| request.method() == m)
            && self
                .path
                .as_ref()
                .is_none_or(|p| p.holds(Some(request.path())))
            && self
                .headers
                .iter()
                .all(|(name, c)| c.holds(request.header(name)))
            && (self.query_params.is_empty() || {
                let params =
                    query.get_or_init(|| request.query().map(parse_query).unwrap_or_default());
                self.query_params
                    .iter()
                    .all(|(name, c)| c.holds(params.get(name).map(String::as_str)))
            })
    }
}

impl CompiledRoute {
    pub fn new(route: &Route) -> CompiledRoute {
        CompiledRoute {
            rules: route.spec.rules.iter().map(CompiledRule::new).collect(),
        }
    }

    /// Index into `route.spec.rules` of the first rule the request matches, or `None`
    /// (the request goes to the host service's own endpoints).
    pub fn http_rule(&self, request: &impl RequestAttributes) -> Option<usize> {
        let query = OnceCell::new();
        self.rules.iter().position(|r| r.matches(request, &query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_errors_are_one_line() {
        let e = compile_regex("^/v[0-9+/").unwrap_err();
        assert_eq!(e, "invalid regex \"^/v[0-9+/\": unclosed character class");
        let e = compile_regex("(a{1000}){1000}").unwrap_err();
        assert_eq!(
            e,
            "regex \"(a{1000}){1000}\" is too big: compiled, it needs more than 1048576 bytes"
        );
        assert!(compile_regex("^/v[0-9]+/").is_ok());
    }

    #[test]
    fn conditions_on_absent_values() {
        assert!(Condition::Present(false).holds(None));
        assert!(!Condition::Present(false).holds(Some("")));
        assert!(Condition::Present(true).holds(Some("")));
        assert!(!Condition::Exact(String::new()).holds(None));
        assert!(!Condition::Regex(None).holds(Some("anything")));
        assert!(Condition::regex("").holds(Some("anything")));
    }
}
