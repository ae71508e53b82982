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

    /// Metadata of a cluster-scoped resource (e.g. `MeshConfig`): no namespace.
    pub fn cluster_scoped(name: impl Into<String>) -> Self {
        ObjectMeta::new("", name)
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

/// `namespace/name`, or just `name` for a cluster-scoped resource (empty namespace).
impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// `metadata:` of a cluster-scoped kind (`MeshConfig`), for `#[serde(with = ...)]`.
///
/// Such kinds still use [`ObjectMeta`], so `Resource::metadata()` and keys work the same for
/// every kind, but their namespace is the empty string: omitted in YAML/JSON (not defaulted to
/// `default`), and not written back out. A non-empty namespace is kept as written so
/// validation can refuse it by field.
pub(crate) mod cluster_scoped {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Labels, ObjectMeta};

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct In {
        name: String,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        labels: Labels,
        #[serde(default)]
        annotations: Labels,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        namespace: &'a str,
        #[serde(skip_serializing_if = "Labels::is_empty")]
        labels: &'a Labels,
        #[serde(skip_serializing_if = "Labels::is_empty")]
        annotations: &'a Labels,
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
        let m = In::deserialize(d)?;
        Ok(ObjectMeta {
            name: m.name,
            namespace: m.namespace.unwrap_or_default(),
            labels: m.labels,
            annotations: m.annotations,
        })
    }

    pub(crate) fn serialize<S: Serializer>(m: &ObjectMeta, s: S) -> Result<S::Ok, S::Error> {
        Out {
            name: &m.name,
            namespace: &m.namespace,
            labels: &m.labels,
            annotations: &m.annotations,
        }
        .serialize(s)
    }
}
