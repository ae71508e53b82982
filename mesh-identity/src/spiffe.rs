//! SPIFFE IDs as the mesh uses them.

use std::fmt;

use anyhow::{bail, Result};

/// A validated `spiffe://<trust-domain>/<path>` URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Where the path starts in `uri` (the `/` after the trust domain).
    path_start: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses and checks a SPIFFE ID: lowercase trust domain of `[a-z0-9.-_]`, a non-empty
    /// path of non-empty segments of `[A-Za-z0-9.-_]`, no `.`/`..` segments, no query.
    pub fn parse(uri: &str) -> Result<SpiffeId> {
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            bail!("{uri:?} is not a SPIFFE ID (must start with spiffe://)");
        };
        let Some(slash) = rest.find('/') else {
            bail!("SPIFFE ID {uri:?} has no path");
        };
        let (domain, path) = rest.split_at(slash);
        let domain_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c);
        if domain.is_empty() || !domain.chars().all(domain_ok) {
            bail!("SPIFFE ID {uri:?} has an invalid trust domain {domain:?}");
        }
        let segment_ok = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
        for segment in path[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                bail!("SPIFFE ID {uri:?} has an empty or relative path segment");
            }
            if !segment.chars().all(segment_ok) {
                bail!("SPIFFE ID {uri:?} has an invalid character in segment {segment:?}");
            }
        }
        Ok(SpiffeId {
            uri: uri.to_owned(),
            path_start: SCHEME.len() + slash,
        })
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service_account>`: a workload.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// `spiffe://<td>/mesh/node/<name>`: a node's agent.
    pub fn node(trust_domain: &str, name: &str) -> Result<SpiffeId> {
        Self::parse(&format!("{SCHEME}{trust_domain}/mesh/node/{name}"))
    }

    /// `spiffe://<td>/mesh/control-plane`: every control-plane replica.
    pub fn control_plane(trust_domain: &str) -> Result<SpiffeId> {
        Self::parse(&format!("{SCHEME}{trust_domain}/mesh/control-plane"))
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The node name of a node identity.
    pub fn node_name(&self) -> Option<&str> {
        self.path()
            .strip_prefix("/mesh/node/")
            .filter(|name| !name.contains('/'))
    }

    /// `(namespace, service account)` of a workload identity.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.path()[1..].split('/');
        match [(); 5].map(|()| parts.next()) {
            [Some("ns"), Some(ns), Some("sa"), Some(sa), None] => Some((ns, sa)),
            _ => None,
        }
    }

    pub fn is_control_plane(&self) -> bool {
        self.path() == "/mesh/control-plane"
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_each_kind() {
        let w = SpiffeId::workload("cluster.local", "default", "reviews").unwrap();
        assert_eq!(w.as_str(), "spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!(w.trust_domain(), "cluster.local");
        assert_eq!(w.workload_parts(), Some(("default", "reviews")));
        assert_eq!(w.node_name(), None);
        let n = SpiffeId::node("td", "node-1").unwrap();
        assert_eq!(n.node_name(), Some("node-1"));
        assert_eq!(n.workload_parts(), None);
        assert!(SpiffeId::control_plane("td").unwrap().is_control_plane());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "http://td/x",
            "spiffe://td",
            "spiffe://td/",
            "spiffe://TD/x",
            "spiffe://td//x",
            "spiffe://td/a/../b",
            "spiffe://td/a?b",
            "spiffe:///x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
