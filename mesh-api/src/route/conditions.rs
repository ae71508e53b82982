//! The YAML (and JSON) shapes of a route's path, header and query-parameter conditions: a
//! one-key map `{exact: ..}`, `{prefix: ..}`, `{regex: ..}` or `{present: ..}`, and for
//! headers and query parameters a plain string as shorthand for `exact`.

use std::fmt;

use serde::de::{self, Error as _, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a request path is compared (as sent: no percent-decoding, no query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A plain string prefix: `/api` matches `/api/x` and also `/apis`.
    Prefix(String),
    /// A regular expression (Rust `regex` syntax) found anywhere in the path: anchor it
    /// (`^/v[0-9]+/`) to match from the start.
    Regex(String),
}

/// How a header or query-parameter value is compared. YAML: a plain string means `exact`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Found anywhere in the value unless anchored, like [`PathMatch::Regex`].
    Regex(String),
    /// `present: true`: the header (or parameter) is there, whatever its value.
    /// `present: false`: it must be ABSENT.
    Present(bool),
}

/// One condition as read, before it is known whether a path or a value was meant.
enum Condition {
    Plain(String),
    Exact(String),
    Prefix(String),
    Regex(String),
    Present(bool),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ConditionKey {
    Exact,
    Prefix,
    Regex,
    Present,
}

const ONE_OF: &str = "exactly one of exact, prefix, regex or present";

struct ConditionVisitor;

impl<'de> Visitor<'de> for ConditionVisitor {
    type Value = Condition;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a string (quote numbers and booleans) or a map with {ONE_OF}"
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Condition, E> {
        Ok(Condition::Plain(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Condition, A::Error> {
        let Some(key) = map.next_key::<ConditionKey>()? else {
            return Err(A::Error::custom(format!("empty map: expected {ONE_OF}")));
        };
        let condition = match key {
            ConditionKey::Exact => Condition::Exact(map.next_value()?),
            ConditionKey::Prefix => Condition::Prefix(map.next_value()?),
            ConditionKey::Regex => Condition::Regex(map.next_value()?),
            ConditionKey::Present => Condition::Present(map.next_value()?),
        };
        if map.next_key::<ConditionKey>()?.is_some() {
            return Err(A::Error::custom(format!("expected {ONE_OF}, not several")));
        }
        Ok(condition)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ConditionVisitor)
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Condition::deserialize(d)? {
            Condition::Plain(s) | Condition::Exact(s) => StringMatch::Exact(s),
            Condition::Prefix(s) => StringMatch::Prefix(s),
            Condition::Regex(s) => StringMatch::Regex(s),
            Condition::Present(p) => StringMatch::Present(p),
        })
    }
}

impl<'de> Deserialize<'de> for PathMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Condition::deserialize(d)? {
            Condition::Exact(s) => Ok(PathMatch::Exact(s)),
            Condition::Prefix(s) => Ok(PathMatch::Prefix(s)),
            Condition::Regex(s) => Ok(PathMatch::Regex(s)),
            Condition::Plain(s) => Err(D::Error::custom(format!(
                "write {{exact: {s}}} or {{prefix: {s}}} (or pathPrefix: {s})"
            ))),
            Condition::Present(_) => Err(D::Error::custom(
                "present is for headers and query parameters; use exact, prefix or regex",
            )),
        }
    }
}

/// A one-entry map, `{key: value}`.
fn one_entry<S: Serializer, V: Serialize>(s: S, key: &str, value: &V) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(key, value)?;
    map.end()
}

impl Serialize for PathMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PathMatch::Exact(v) => one_entry(s, "exact", v),
            PathMatch::Prefix(v) => one_entry(s, "prefix", v),
            PathMatch::Regex(v) => one_entry(s, "regex", v),
        }
    }
}

impl Serialize for StringMatch {
    /// `exact` as the plain string users write.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StringMatch::Exact(v) => s.serialize_str(v),
            StringMatch::Prefix(v) => one_entry(s, "prefix", v),
            StringMatch::Regex(v) => one_entry(s, "regex", v),
            StringMatch::Present(p) => one_entry(s, "present", p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_match(json: &str) -> Result<StringMatch, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn shapes_round_trip() {
        for (json, expected) in [
            (r#""v""#, StringMatch::Exact("v".into())),
            (r#"{"prefix":"v"}"#, StringMatch::Prefix("v".into())),
            (r#"{"regex":"^v"}"#, StringMatch::Regex("^v".into())),
            (r#"{"present":false}"#, StringMatch::Present(false)),
        ] {
            let m = string_match(json).unwrap();
            assert_eq!(m, expected);
            assert_eq!(serde_json::to_string(&m).unwrap(), json);
        }
        assert_eq!(
            string_match(r#"{"exact":"v"}"#).unwrap(),
            StringMatch::Exact("v".into())
        );
        let p: PathMatch = serde_json::from_str(r#"{"regex":"^/v"}"#).unwrap();
        assert_eq!(p, PathMatch::Regex("^/v".into()));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"regex":"^/v"}"#);
    }

    #[test]
    fn wrong_shapes_say_what_is_expected() {
        let e = string_match("true").unwrap_err();
        assert!(e.starts_with("invalid type: boolean `true`, expected a string (quote numbers and booleans) or a map with exactly one of exact, prefix, regex or present"), "{e}");
        let e = string_match(r#"{"prefix":"a","regex":"b"}"#).unwrap_err();
        assert!(e.contains("not several"), "{e}");
        let e = string_match("{}").unwrap_err();
        assert!(e.contains("empty map"), "{e}");
        let e = string_match(r#"{"suffix":"a"}"#).unwrap_err();
        assert!(e.contains("unknown variant `suffix`"), "{e}");
        let e = serde_json::from_str::<PathMatch>(r#""/x""#).unwrap_err();
        assert!(e.to_string().contains("write {exact: /x}"), "{e}");
        let e = serde_json::from_str::<PathMatch>(r#"{"present":true}"#).unwrap_err();
        assert!(e.to_string().contains("present is for headers"), "{e}");
    }
}
