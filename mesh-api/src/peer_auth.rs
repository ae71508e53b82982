//! `kind: PeerAuthentication`: whether workloads accept plaintext inbound traffic (mTLS mode),
//! per namespace, per workload and per port. See [`crate::Snapshot::mtls_mode_for`] for how
//! policies at different levels combine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{Labels, ObjectMeta};
use crate::resource::Kind;
use crate::validate::{check_meta, check_selector, selector_matches, Checker};
use crate::workload::Workload;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads in the policy's namespace (by `spec.labels`). Omitted: the whole namespace,
    /// or the whole mesh for a policy in the root namespace. Unlike AuthorizationPolicy, a
    /// selector in the root namespace selects only that namespace's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    /// Overrides per workload port (the port the workload listens on); needs a selector.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "port_keys::deserialize"
    )]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

/// `STRICT`, `PERMISSIVE` or `DISABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only HBONE (mTLS) inbound; plaintext is refused.
    Strict,
    /// HBONE and plaintext inbound both accepted.
    #[default]
    Permissive,
    /// Plaintext only: peers send plaintext to this workload.
    Disable,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        })
    }
}

impl PeerAuthentication {
    /// Whether this policy has a selector that picks `workload` (same namespace only).
    pub fn selects(&self, workload: &Workload) -> bool {
        self.metadata.namespace == workload.metadata.namespace
            && self
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, &workload.spec.labels))
    }

    /// The mode for `port` on a workload this policy applies to.
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.spec
            .port_level_mtls
            .get(&port)
            .copied()
            .unwrap_or(self.spec.mode)
    }
}

impl Kind for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;
        check_selector(c, "spec.selector", spec.selector.as_ref());
        if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
            c.fail(
                "spec.portLevelMtls",
                "needs spec.selector: ports belong to workloads, not namespaces",
            );
        }
        if spec.port_level_mtls.contains_key(&0) {
            c.fail("spec.portLevelMtls.0", "must be between 1 and 65535, got 0");
        }
    }
}

/// Port-keyed maps. YAML writes the keys as integers; JSON can only write them as strings, so
/// both are accepted (a resource must survive a trip through the store). Duplicates, such as
/// `8080` and `"8080"`, are refused.
mod port_keys {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};

    struct Port(u16);

    impl<'de> Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(PortVisitor)
        }
    }

    struct PortVisitor;

    impl Visitor<'_> for PortVisitor {
        type Value = Port;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Port, E> {
            u16::try_from(v)
                .map(Port)
                .map_err(|_| E::custom(format!("port {v} is out of range 1..=65535")))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Port, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("port {v} is out of range 1..=65535")))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Port, E> {
            if !v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit()) {
                self.visit_u64(v.parse().expect("at most 5 digits"))
            } else {
                Err(E::custom(format!("{v:?} is not a port number")))
            }
        }
    }

    struct MapVisitor<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
        type Value = BTreeMap<u16, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from port numbers")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(Port(port)) = map.next_key()? {
                let value = map.next_value()?;
                if out.insert(port, value).is_some() {
                    return Err(A::Error::custom(format!("duplicate port {port}")));
                }
            }
            Ok(out)
        }
    }

    pub(super) fn deserialize<'de, D, V>(d: D) -> Result<BTreeMap<u16, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        d.deserialize_map(MapVisitor(PhantomData))
    }
}
