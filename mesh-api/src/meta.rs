//! Metadata shared by every kind: the name and namespace that identify a resource.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Label and selector maps. A `BTreeMap` so serialised output and error order are stable.
pub type Labels = BTreeMap<String, String>;

/// The namespace a resource lands in when its metadata names none, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata:` of a resource. Kept Kubernetes-shaped so the same files can be produced from
/// (or compared with) Kubernetes objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

impl ObjectMeta {
    /// Metadata with no labels or annotations, for building resources in code and tests.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            labels: Labels::new(),
            annotations: Labels::new(),
        }
    }

    /// The identity of the resource within its kind.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// `(namespace, name)`: what makes a resource unique within its kind. Orders by namespace
/// first, so listings group by namespace. Displays as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
