//! The [`Resource`] enum over all kinds, and its envelope: `apiVersion` + `kind` around each
//! kind's `metadata` + `spec`.
//!
//! Adding a kind: define its struct (with `metadata` and `spec`), implement [`Kind`] for it,
//! and add one line to the `resources!` invocation below.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml_ng::{Mapping, Value};

use crate::authz::AuthorizationPolicy;
use crate::error::{ConfigError, Issue};
use crate::key::ResourceKey;
use crate::mesh_config::MeshConfig;
use crate::meta::{ObjectKey, ObjectMeta, DEFAULT_NAMESPACE};
use crate::peer_auth::PeerAuthentication;
use crate::request_auth::RequestAuthentication;
use crate::route::Route;
use crate::service::Service;
use crate::validate::Checker;
use crate::workload::Workload;

/// The only `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "mesh/v1";

/// What every kind provides to the envelope and to validation.
pub(crate) trait Kind: Serialize + DeserializeOwned {
    const KIND: &'static str;
    /// False for cluster-scoped kinds, whose namespace is always the empty string.
    const NAMESPACED: bool = true;
    fn metadata(&self) -> &ObjectMeta;
    /// Checks that need only this resource; cross-resource ones live in the snapshot.
    fn check(&self, c: &mut Checker<'_>);
}

macro_rules! resources {
    ($($kind:ident),+ $(,)?) => {
        /// Any resource a config file can hold. Tagged by `kind` in YAML/JSON.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Resource {
            $($kind($kind),)+
        }

        impl Resource {
            /// Every `kind:` value accepted, for messages and CLI help.
            pub const KINDS: &'static [&'static str] = &[$(<$kind as Kind>::KIND),+];

            /// The canonical `kind:` string for `name`, matched case-insensitively (for CLI
            /// arguments such as `meshctl get route`).
            pub fn kind_named(name: &str) -> Option<&'static str> {
                Self::KINDS.iter().copied().find(|k| k.eq_ignore_ascii_case(name))
            }

            /// Whether resources of `kind` (a canonical kind string) live in a namespace;
            /// false for cluster-scoped kinds and unknown ones.
            pub fn kind_is_namespaced(kind: &str) -> bool {
                $(if kind == <$kind as Kind>::KIND {
                    return <$kind as Kind>::NAMESPACED;
                })+
                false
            }

            /// The `kind:` string, e.g. `"Service"`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Resource::$kind(_) => <$kind as Kind>::KIND,)+
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Resource::$kind(r) => Kind::metadata(r),)+
                }
            }

            fn check(&self, issues: &mut Vec<Issue>) {
                match self {
                    $(Resource::$kind(r) => {
                        r.check(&mut Checker::new(<$kind as Kind>::KIND, &r.metadata, issues))
                    })+
                }
            }

            fn decode_kind(kind: &str, body: Value) -> Option<Result<Resource, Box<Issue>>> {
                $(if kind == <$kind as Kind>::KIND {
                    return Some(decode_body::<$kind>(body).map(Resource::$kind));
                })+
                None
            }
        }

        impl Serialize for Resource {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Resource::$kind(r) => Envelope {
                        api_version: API_VERSION,
                        kind: <$kind as Kind>::KIND,
                        object: r,
                    }
                    .serialize(s),)+
                }
            }
        }

        $(impl From<$kind> for Resource {
            fn from(r: $kind) -> Self {
                Resource::$kind(r)
            }
        })+
    };
}

resources!(
    Service,
    Workload,
    Route,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    MeshConfig,
);

impl Resource {
    /// `(namespace, name)`; unique per kind within a snapshot. The namespace is empty for
    /// cluster-scoped kinds.
    pub fn key(&self) -> ObjectKey {
        self.metadata().key()
    }

    /// Whether this resource lives in a namespace (false for `MeshConfig`).
    pub fn is_namespaced(&self) -> bool {
        Self::kind_is_namespaced(self.kind())
    }

    /// Kind, namespace and name: unique across all resources.
    pub fn resource_key(&self) -> ResourceKey {
        let m = self.metadata();
        ResourceKey::new(self.kind(), &m.namespace, &m.name)
    }

    /// Where the control plane stores this resource: `/mesh/v1/<Kind>/<namespace>/<name>`
    /// (`/mesh/v1/MeshConfig//mesh` for the cluster-scoped one). See
    /// [`ResourceKey::storage_key`].
    pub fn storage_key(&self) -> String {
        self.resource_key().storage_key()
    }

    /// The resource as one line of JSON, with `apiVersion` and `kind`: how resources travel
    /// over gRPC and sit in the store. [`Resource::from_json`] reads it back.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("resources always serialise to JSON")
    }

    /// Parses one JSON resource and runs [`Resource::validate`] on it, so what comes back is
    /// individually valid. Errors name the kind, object and field as [`crate::load_str`]
    /// does (without a file).
    pub fn from_json(json: &[u8]) -> Result<Resource, ConfigError> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| ConfigError::Invalid(vec![Issue::new(format!("invalid JSON: {e}"))]))?;
        let resource = decode(value).map_err(|issue| ConfigError::Invalid(vec![*issue]))?;
        resource.validate()?;
        Ok(resource)
    }

    /// Checks that need only this resource (names, ports, addresses, labels). Loading runs
    /// these already; call it for resources built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issues = self.issues();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    pub(crate) fn issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        self.check(&mut issues);
        issues
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    object: &'a T,
}

/// Goes through a YAML `Value` so any self-describing format (JSON too) decodes with the same
/// `apiVersion`/`kind` checks and field paths as the loader.
impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        decode(value).map_err(D::Error::custom)
    }
}

/// Turns one parsed document into a resource. The issue names the kind and object whenever
/// the document says them, even if they are what is wrong with it.
pub(crate) fn decode(value: Value) -> Result<Resource, Box<Issue>> {
    let Value::Mapping(mut map) = value else {
        return Err(Box::new(Issue::new(format!(
            "expected a mapping with apiVersion, kind, metadata and spec, found {}",
            type_name(&value)
        ))));
    };
    let (kind, object) = identity(&map);
    let located = |field: &str, message: String| {
        Box::new(Issue {
            kind: kind.clone(),
            object: object.clone(),
            field: (!field.is_empty()).then(|| field.to_owned()),
            ..Issue::new(message)
        })
    };

    match map.shift_remove("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(located(
                "apiVersion",
                format!("unsupported {v:?}, expected {API_VERSION:?}"),
            ))
        }
        Some(other) => {
            return Err(located(
                "apiVersion",
                format!("expected a string, found {}", type_name(&other)),
            ))
        }
        None => return Err(located("apiVersion", "missing field".to_owned())),
    }
    let kind_str = match map.shift_remove("kind") {
        Some(Value::String(k)) => k,
        Some(other) => {
            return Err(located(
                "kind",
                format!("expected a string, found {}", type_name(&other)),
            ))
        }
        None => return Err(located("kind", "missing field".to_owned())),
    };
    match Resource::decode_kind(&kind_str, Value::Mapping(map)) {
        Some(Ok(resource)) => Ok(resource),
        Some(Err(issue)) => Err(Box::new(Issue {
            kind: kind.clone(),
            object: object.clone(),
            ..*issue
        })),
        None => Err(located(
            "kind",
            format!(
                "unknown kind {kind_str:?}, expected one of: {}",
                Resource::KINDS.join(", ")
            ),
        )),
    }
}

fn decode_body<T: Kind>(body: Value) -> Result<T, Box<Issue>> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let mut issue = Issue::new(e.into_inner().to_string());
        if path != "." {
            issue.field = Some(path);
        }
        Box::new(issue)
    })
}

/// Best-effort kind and `namespace/name` of a document, read before it is known to be valid.
fn identity(map: &Mapping) -> (Option<String>, Option<ObjectKey>) {
    let kind = map.get("kind").and_then(Value::as_str).map(str::to_owned);
    let object = map
        .get("metadata")
        .and_then(Value::as_mapping)
        .and_then(|meta| {
            let name = meta.get("name")?.as_str()?;
            let namespace = match meta.get("namespace") {
                None | Some(Value::Null) => {
                    let cluster_scoped = kind.as_deref().is_some_and(|k| {
                        Resource::KINDS.contains(&k) && !Resource::kind_is_namespaced(k)
                    });
                    if cluster_scoped {
                        ""
                    } else {
                        DEFAULT_NAMESPACE
                    }
                }
                Some(v) => v.as_str()?,
            };
            Some(ObjectKey::new(namespace, name))
        });
    (kind, object)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
