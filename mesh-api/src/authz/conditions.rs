//! `when` condition keys: which attribute of a connection or request a condition reads. The
//! key is parsed when the policy is read, so an unknown key is refused at apply (naming the
//! field) and evaluation never re-parses it.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::route::is_token;

/// The keys a `when` condition may use, as written in a policy:
///
/// - `request.headers[NAME]`: the first value of request header NAME (case-insensitive);
/// - `request.auth.claims[NAME]`: a claim of the verified JWT; nested claims as
///   `claims[a][b]` or `claims[a.b]` (a claim literally named `a.b` is found first); a list
///   claim matches when any element does; numbers and booleans match their JSON text;
/// - `request.auth.principal` (`<iss>/<sub>`), `request.auth.audiences` (`aud`),
///   `request.auth.presenter` (`azp`);
/// - `source.principal`, `source.namespace`, `source.ip` (values are CIDRs),
///   `destination.port` (values are port numbers): known without HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionKey {
    text: String,
    attribute: Attribute,
}

/// What a key reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attribute {
    /// Lowercase header name.
    RequestHeader(String),
    /// Claim path: one entry per `[...]`.
    Claim(Vec<String>),
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    DestinationPort,
}

const KNOWN_KEYS: &str = "request.headers[NAME], request.auth.claims[NAME], \
    request.auth.principal, request.auth.audiences, request.auth.presenter, source.principal, \
    source.namespace, source.ip, destination.port";

impl ConditionKey {
    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the attribute belongs to an HTTP request (headers, JWT), rather than to the
    /// connection.
    pub fn needs_http(&self) -> bool {
        !matches!(
            self.attribute,
            Attribute::SourcePrincipal
                | Attribute::SourceNamespace
                | Attribute::SourceIp
                | Attribute::DestinationPort
        )
    }

    pub(crate) fn attribute(&self) -> &Attribute {
        &self.attribute
    }
}

impl std::str::FromStr for ConditionKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let attribute = parse(text)?;
        Ok(ConditionKey {
            text: text.to_owned(),
            attribute,
        })
    }
}

fn parse(text: &str) -> Result<Attribute, String> {
    let plain = match text {
        "request.auth.principal" => Some(Attribute::RequestPrincipal),
        "request.auth.audiences" => Some(Attribute::RequestAudiences),
        "request.auth.presenter" => Some(Attribute::RequestPresenter),
        "source.principal" => Some(Attribute::SourcePrincipal),
        "source.namespace" => Some(Attribute::SourceNamespace),
        "source.ip" => Some(Attribute::SourceIp),
        "destination.port" => Some(Attribute::DestinationPort),
        _ => None,
    };
    if let Some(attribute) = plain {
        return Ok(attribute);
    }
    if let Some(rest) = text.strip_prefix("request.headers") {
        let name = match bracketed(rest).as_deref() {
            Some([name]) => name.clone(),
            _ => {
                return Err(format!(
                    "{text:?} must name one header: request.headers[NAME]"
                ))
            }
        };
        if !is_token(&name) {
            return Err(format!(
                "{text:?}: {name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        return Ok(Attribute::RequestHeader(name.to_ascii_lowercase()));
    }
    if let Some(rest) = text.strip_prefix("request.auth.claims") {
        return match bracketed(rest) {
            Some(path) => Ok(Attribute::Claim(path)),
            None => Err(format!(
                "{text:?} must name a claim: request.auth.claims[NAME], nested as [a][b] or [a.b]"
            )),
        };
    }
    Err(format!(
        "unknown condition key {text:?}; known keys: {KNOWN_KEYS}"
    ))
}

/// `[a][b]` -> `["a", "b"]`; `None` unless the whole text is one or more non-empty groups
/// without brackets or blanks inside.
fn bracketed(mut text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    while !text.is_empty() {
        let inner = text.strip_prefix('[')?;
        let (part, rest) = inner.split_once(']')?;
        let well_formed = !part.is_empty()
            && !part.contains('[')
            && !part.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return None;
        }
        parts.push(part.to_owned());
        text = rest;
    }
    (!parts.is_empty()).then_some(parts)
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for ConditionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConditionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// The claim at `path` of `claims`: a single name is looked up as written first, then as a
/// dotted path; several names walk nested objects.
pub(crate) fn claim<'c>(
    claims: &'c serde_json::Map<String, Value>,
    path: &[String],
) -> Option<&'c Value> {
    match path {
        [name] => claims.get(name).or_else(|| walk(claims, name.split('.'))),
        _ => walk(claims, path.iter().map(String::as_str)),
    }
}

fn walk<'c, 'p>(
    claims: &'c serde_json::Map<String, Value>,
    mut names: impl Iterator<Item = &'p str>,
) -> Option<&'c Value> {
    let mut value = claims.get(names.next()?)?;
    for name in names {
        value = value.as_object()?.get(name)?;
    }
    Some(value)
}

/// Whether `test` holds for the text of `value` (a string, number or boolean) or of any
/// element of a list of those. Objects and nulls match nothing.
pub(crate) fn any_claim_text(value: &Value, test: &mut dyn FnMut(&str) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|v| scalar_text(v, test)),
        v => scalar_text(v, test),
    }
}

fn scalar_text(value: &Value, test: &mut dyn FnMut(&str) -> bool) -> bool {
    match value {
        Value::String(s) => test(s),
        Value::Number(n) => test(&n.to_string()),
        Value::Bool(b) => test(if *b { "true" } else { "false" }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(text: &str) -> Result<Attribute, String> {
        text.parse::<ConditionKey>().map(|k| k.attribute)
    }

    #[test]
    fn keys_parse_to_attributes() {
        assert_eq!(
            attr("request.headers[X-Tenant]"),
            Ok(Attribute::RequestHeader("x-tenant".into()))
        );
        assert_eq!(
            attr("request.auth.claims[groups]"),
            Ok(Attribute::Claim(vec!["groups".into()]))
        );
        assert_eq!(
            attr("request.auth.claims[a][b]"),
            Ok(Attribute::Claim(vec!["a".into(), "b".into()]))
        );
        assert_eq!(attr("source.ip"), Ok(Attribute::SourceIp));
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headers[a][b]",
            "request.headers[a b]",
            "request.headers[x]y",
            "request.auth.claims",
            "request.auth.claims[",
            "request.auth.claims[a]]",
            "request.auth.claims[[a]]",
            "request.auth.claimsx",
            "request.method",
            "",
        ] {
            assert!(attr(bad).is_err(), "{bad}");
        }
        assert!(attr("nope").unwrap_err().contains("known keys"));
    }

    #[test]
    fn claims_are_found_literally_then_nested() {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"a.b": "literal", "a": {"b": "nested", "c": {"d": 1}}, "x": {"y": 2}}"#,
        )
        .unwrap();
        let get = |path: &[&str]| {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            claim(&claims, &path).cloned()
        };
        assert_eq!(get(&["a.b"]), Some(Value::from("literal")));
        assert_eq!(get(&["a", "b"]), Some(Value::from("nested")));
        assert_eq!(get(&["a.c.d"]), Some(Value::from(1)));
        assert_eq!(get(&["x.y"]), Some(Value::from(2)));
        assert_eq!(get(&["a", "c", "d", "e"]), None);
        assert_eq!(get(&["missing"]), None);
    }

    #[test]
    fn list_claims_match_any_element() {
        let value: Value = serde_json::from_str(r#"["dev", 7, true, {"x": 1}, null]"#).unwrap();
        let has = |want: &str| any_claim_text(&value, &mut |t| t == want);
        assert!(has("dev"));
        assert!(has("7"));
        assert!(has("true"));
        assert!(!has("x"));
        assert!(!any_claim_text(&Value::Null, &mut |_| true));
    }
}
