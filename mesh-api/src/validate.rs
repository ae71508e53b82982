//! Rules shared by several kinds (names, labels, addresses) and the collector that turns a
//! broken rule into an [`Issue`] naming the resource and the field.

use std::net::IpAddr;

use crate::error::Issue;
use crate::meta::{Labels, ObjectKey, ObjectMeta};

/// Collects issues for one resource, so every message carries its kind and `namespace/name`.
pub(crate) struct Checker<'a> {
    pub(crate) kind: &'static str,
    object: ObjectKey,
    issues: &'a mut Vec<Issue>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(kind: &'static str, meta: &ObjectMeta, issues: &'a mut Vec<Issue>) -> Self {
        Checker {
            kind,
            object: meta.key(),
            issues,
        }
    }

    pub(crate) fn fail(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        self.issues.push(Issue {
            kind: Some(self.kind.to_owned()),
            object: Some(self.object.clone()),
            field: Some(field.as_ref().to_owned()),
            ..Issue::new(message)
        });
    }
}

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;

/// RFC 1123 label as Kubernetes uses it for names: it must fit in a DNS name.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS_SUBDOMAIN_MAX && s.split('.').all(is_dns1123_label)
}

/// Label names and values share this shape: alphanumeric at both ends, `-_.` inside.
pub(crate) fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Why `key` is not a Kubernetes-style label key (`[prefix/]name`), if it is not.
fn label_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("label key must not be empty".to_owned());
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return Some(format!(
                "label key prefix {p:?} is not a DNS-1123 subdomain"
            ));
        }
    }
    if !is_label_name(name) {
        return Some(format!(
            "label key {key:?} must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit, after an optional 'prefix/'"
        ));
    }
    None
}

/// Field path for a map entry: `spec.labels.app`, or `spec.labels["odd key"]` when the key
/// would not read as one path segment.
pub(crate) fn map_field(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        format!("{prefix}.{key}")
    } else {
        format!("{prefix}[{key:?}]")
    }
}

/// Labels and selectors: keys as Kubernetes label keys, values empty or label-name shaped.
pub(crate) fn check_labels(c: &mut Checker<'_>, prefix: &str, labels: &Labels) {
    for (k, v) in labels {
        if let Some(problem) = label_key_problem(k) {
            c.fail(map_field(prefix, k), problem);
        } else if !v.is_empty() && !is_label_name(v) {
            c.fail(
                map_field(prefix, k),
                format!(
                    "label value {v:?} must be empty or at most 63 letters, digits, '-', '_' \
                     or '.', starting and ending with a letter or digit"
                ),
            );
        }
    }
}

/// Annotations carry free-form values, so only their keys are checked.
fn check_annotations(c: &mut Checker<'_>, prefix: &str, annotations: &Labels) {
    for k in annotations.keys() {
        if let Some(problem) = label_key_problem(k) {
            c.fail(
                map_field(prefix, k),
                problem.replace("label key", "annotation key"),
            );
        }
    }
}

/// Metadata of a namespaced kind: name and namespace are DNS labels.
pub(crate) fn check_meta(c: &mut Checker<'_>, meta: &ObjectMeta) {
    check_name(c, "metadata.name", &meta.name);
    check_name(c, "metadata.namespace", &meta.namespace);
    check_labels(c, "metadata.labels", &meta.labels);
    check_annotations(c, "metadata.annotations", &meta.annotations);
}

/// Metadata of a cluster-scoped kind: no namespace. The kind checks the name (singletons
/// have a fixed one).
pub(crate) fn check_cluster_meta(c: &mut Checker<'_>, meta: &ObjectMeta) {
    if !meta.namespace.is_empty() {
        c.fail(
            "metadata.namespace",
            format!(
                "{} is cluster-scoped; omit the namespace (got {:?})",
                c.kind, meta.namespace
            ),
        );
    }
    check_labels(c, "metadata.labels", &meta.labels);
    check_annotations(c, "metadata.annotations", &meta.annotations);
}

/// A reference to another resource by name (e.g. a Service in the same namespace).
pub(crate) fn check_ref(c: &mut Checker<'_>, field: &str, name: &str) {
    check_name(c, field, name);
}

/// A port number from a `u16` field: only 0 is out of range.
pub(crate) fn check_port(c: &mut Checker<'_>, field: &str, port: u16) {
    if port == 0 {
        c.fail(field, "must be between 1 and 65535, got 0");
    }
}

/// An optional workload selector: omitted means "every workload in scope"; an empty map is
/// refused so that meaning is never spelt two ways.
pub(crate) fn check_selector(c: &mut Checker<'_>, field: &str, selector: Option<&Labels>) {
    if let Some(selector) = selector {
        if selector.is_empty() {
            c.fail(
                field,
                "must not be empty; omit it to select every workload in the namespace",
            );
        }
        check_labels(c, field, selector);
    }
}

/// Whether `labels` contain every pair of `selector`.
pub(crate) fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A millisecond duration that must be positive.
pub(crate) fn check_positive(c: &mut Checker<'_>, field: &str, value: u64) {
    if value == 0 {
        c.fail(field, "must be greater than 0");
    }
}

/// An HTTP request path (health check path, route prefix): starts with '/', and only
/// visible ASCII, so it goes on the request line as written.
pub(crate) fn check_http_path(c: &mut Checker<'_>, field: &str, path: &str) {
    if !path.starts_with('/') {
        c.fail(field, format!("{path:?} must start with '/'"));
    } else if !path.bytes().all(|b| b.is_ascii_graphic()) {
        c.fail(
            field,
            format!("{path:?} must be visible ASCII (percent-encode anything else)"),
        );
    }
}

/// A name that must be a DNS-1123 label: resources, and names inside them (rules, subsets).
pub(crate) fn check_name(c: &mut Checker<'_>, field: &str, name: &str) {
    if name.is_empty() {
        c.fail(field, "must not be empty");
    } else if !is_dns1123_label(name) {
        c.fail(
            field,
            format!(
                "{name:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting \
                 and ending with a letter or digit, at most 63 characters)"
            ),
        );
    }
}

/// Addresses that would capture or route traffic nobody meant to: the proxy's own loopback
/// listener, "any", multicast and broadcast. IPv4-mapped IPv6 is refused so each address has
/// exactly one spelling in the lookup indexes.
pub(crate) fn check_ip(c: &mut Checker<'_>, field: &str, ip: &IpAddr) {
    let problem = match ip {
        _ if ip.is_unspecified() => Some("is the unspecified address"),
        _ if ip.is_loopback() => Some("is a loopback address"),
        _ if ip.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("is IPv4-mapped; write the IPv4 address instead")
        }
        _ => None,
    };
    if let Some(problem) = problem {
        c.fail(field, format!("{ip} {problem}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "reviews", "a-b", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64), "é"] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(".a"));
        assert!(!is_dns1123_subdomain(&"a.".repeat(127)));
    }

    #[test]
    fn label_keys() {
        assert_eq!(label_key_problem("app"), None);
        assert_eq!(label_key_problem("app.kubernetes.io/name"), None);
        assert_eq!(label_key_problem("Version_2"), None);
        assert!(label_key_problem("").is_some());
        assert!(label_key_problem("/x").is_some());
        assert!(label_key_problem("a/b/c").is_some());
        assert!(label_key_problem("a b").is_some());
        assert!(label_key_problem("-a").is_some());
    }

    #[test]
    fn map_fields() {
        assert_eq!(map_field("spec.labels", "app"), "spec.labels.app");
        assert_eq!(map_field("spec.labels", "a/b"), "spec.labels[\"a/b\"]");
        assert_eq!(map_field("spec.labels", ""), "spec.labels[\"\"]");
    }
}
