//! What a header name or value in a Route may be, and the checks of a rule's header changes
//! (`headers: {request: .., response: ..}`).

use std::collections::BTreeMap;

use super::{HeaderOps, HeaderRules};
use crate::validate::{map_field, Checker};

/// Headers a rule may not set, add or remove: they frame the message or manage the
/// connection, which the proxy does itself on each side (changing them would corrupt the
/// stream or smuggle a request). `host` is not among them: rewriting it is legitimate.
pub(super) const FRAMING_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
];

/// An RFC 9110 `tchar`: what method and header-name tokens are made of.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// An RFC 9110 token, e.g. a method.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// A token without uppercase letters: header names are stored lowercase (HTTP/2 sends them
/// so, and lookups are case-insensitive).
pub(crate) fn is_header_name(s: &str) -> bool {
    is_token(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

pub(crate) fn header_name_problem(name: &str) -> String {
    format!("{name:?} is not a lowercase header name (letters a-z, digits and !#$%&'*+-.^_`|~)")
}

/// Visible ASCII, spaces and tabs: what a header value may hold on the wire.
fn is_header_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
}

/// A whole header value: header text without surrounding blanks (which HTTP strips, so a
/// value with them could never match, and one set with them would not arrive as written).
pub(super) fn is_header_value(s: &str) -> bool {
    is_header_text(s) && s.trim_matches([' ', '\t']).len() == s.len()
}

/// The start of a header value: a trailing blank is fine (`Bearer `), a leading one never
/// matches.
pub(super) fn is_header_value_prefix(s: &str) -> bool {
    is_header_text(s) && !s.starts_with([' ', '\t'])
}

pub(super) const HEADER_VALUE_RULE: &str =
    "must be visible ASCII, spaces and tabs, without leading or trailing blanks";

/// `headers.request` and `headers.response` of a rule at `field`.
pub(super) fn check_header_rules(c: &mut Checker<'_>, field: &str, rules: &HeaderRules) {
    if let Some(ops) = &rules.request {
        check_header_ops(c, &format!("{field}.request"), ops);
    }
    if let Some(ops) = &rules.response {
        check_header_ops(c, &format!("{field}.response"), ops);
    }
}

fn check_header_ops(c: &mut Checker<'_>, field: &str, ops: &HeaderOps) {
    // Header name -> the first list naming it, to refuse a name in two lists.
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (list, values) in [("set", &ops.set), ("add", &ops.add)] {
        let list_field = format!("{field}.{list}");
        for (name, value) in values {
            let at = map_field(&list_field, name);
            if check_changeable(c, &at, name, &mut seen, &list_field) && !is_header_value(value) {
                c.fail(&at, format!("value {value:?} {HEADER_VALUE_RULE}"));
            }
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        let at = format!("{field}.remove[{i}]");
        check_changeable(c, &at, name, &mut seen, &at);
    }
}

/// Whether a rule may change header `name` (reported at `at` if not); `seen` catches a name
/// changed twice (`here` is how this occurrence is named for later ones).
fn check_changeable<'a>(
    c: &mut Checker<'_>,
    at: &str,
    name: &'a str,
    seen: &mut BTreeMap<&'a str, String>,
    here: &str,
) -> bool {
    let problem = if name.starts_with(':') {
        Some(format!(
            "{name:?} is a pseudo-header; the proxy sets those from the request itself"
        ))
    } else if !is_header_name(name) {
        Some(header_name_problem(name))
    } else if FRAMING_HEADERS.contains(&name) {
        Some(format!(
            "{name:?} frames the message or manages the connection; the proxy sets it, rules \
             cannot"
        ))
    } else {
        seen.get(name).map(|first| {
            format!("{name:?} is also in {first}; name each header in one of set, add and remove")
        })
    };
    seen.entry(name).or_insert_with(|| here.to_owned());
    match problem {
        Some(problem) => {
            c.fail(at, problem);
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_values() {
        assert!(is_token("GET") && is_token("M-SEARCH") && is_token("purge"));
        assert!(!is_token("") && !is_token("GE T") && !is_token("GET\r\n"));
        assert!(is_header_name("x-canary") && !is_header_name("X-Canary"));
        assert!(!is_header_name(":path") && !is_header_name("a b"));
        assert!(is_header_value("") && is_header_value("a b") && !is_header_value(" a"));
        assert!(!is_header_value("a\r\nx: y") && !is_header_value("é"));
        assert!(is_header_value_prefix("Bearer ") && !is_header_value_prefix(" Bearer"));
    }
}
