//! [`ResourceKey`]: kind + namespace + name, the identity of a resource across all kinds, and
//! its spelling as a store key.

use std::fmt;

use crate::meta::ObjectKey;
use crate::resource::Resource;

/// Every store key starts with this; then `<Kind>/<namespace>/<name>`.
pub const STORAGE_PREFIX: &str = "/mesh/v1/";

/// Unique across all resources. Orders by kind, then namespace, then name. Displays as
/// `Kind namespace/name` (`Kind name` when cluster-scoped), as in error messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// One of [`Resource::KINDS`].
    pub kind: &'static str,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: &'static str, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The `(namespace, name)` part, unique within the kind.
    pub fn object_key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// `/mesh/v1/<Kind>/<namespace>/<name>`. Cluster-scoped kinds keep the (empty) namespace
    /// segment, e.g. `/mesh/v1/MeshConfig//mesh`, so every key has the same shape. Names and
    /// namespaces are DNS labels, so valid resources need no escaping.
    pub fn storage_key(&self) -> String {
        format!(
            "{STORAGE_PREFIX}{}/{}/{}",
            self.kind, self.namespace, self.name
        )
    }

    /// `/mesh/v1/<Kind>/`: list every resource of a kind with one prefix scan.
    pub fn kind_prefix(kind: &str) -> String {
        format!("{STORAGE_PREFIX}{kind}/")
    }

    /// Reads back a [`ResourceKey::storage_key`]. `None` for an unknown kind, a key without
    /// exactly three segments, an empty name, or a namespace that does not fit the kind's
    /// scope (empty exactly when cluster-scoped).
    pub fn from_storage_key(key: &str) -> Option<ResourceKey> {
        let rest = key.strip_prefix(STORAGE_PREFIX)?;
        let mut parts = rest.split('/');
        let [Some(kind), Some(namespace), Some(name), None] = [(); 4].map(|()| parts.next()) else {
            return None;
        };
        let kind = Resource::KINDS.iter().copied().find(|k| *k == kind)?;
        let scope_ok = namespace.is_empty() != Resource::kind_is_namespaced(kind);
        (scope_ok && !name.is_empty()).then(|| ResourceKey::new(kind, namespace, name))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.object_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_round_trip() {
        let route = ResourceKey::new("Route", "default", "reviews-canary");
        assert_eq!(route.storage_key(), "/mesh/v1/Route/default/reviews-canary");
        assert_eq!(route.to_string(), "Route default/reviews-canary");
        assert_eq!(
            ResourceKey::from_storage_key(&route.storage_key()),
            Some(route)
        );
        let mesh = ResourceKey::new("MeshConfig", "", "mesh");
        assert_eq!(mesh.storage_key(), "/mesh/v1/MeshConfig//mesh");
        assert_eq!(mesh.to_string(), "MeshConfig mesh");
        assert_eq!(
            ResourceKey::from_storage_key(&mesh.storage_key()),
            Some(mesh)
        );
        assert!(ResourceKey::kind_prefix("Route").starts_with(STORAGE_PREFIX));
    }

    #[test]
    fn bad_storage_keys_are_refused() {
        for bad in [
            "",
            "/mesh/v1/",
            "/mesh/v2/Route/default/a",
            "/mesh/v1/Nope/default/a",
            "/mesh/v1/route/default/a",
            "/mesh/v1/Route/a",
            "/mesh/v1/Route/default/a/b",
            "/mesh/v1/Route//a",
            "/mesh/v1/Route/default/",
            "/mesh/v1/MeshConfig/default/mesh",
            "/mesh/v1/MeshConfig/mesh",
            "/mesh/v1/MeshConfig//",
        ] {
            assert_eq!(ResourceKey::from_storage_key(bad), None, "{bad}");
        }
    }
}
