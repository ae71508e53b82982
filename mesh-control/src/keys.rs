//! Where things live in the store.
//!
//! - `/mesh/v1/<Kind>/<namespace>/<name>`: resources (JSON), what agents receive.
//! - `/mesh/health/<namespace>/<workload>`: endpoint health reported by agents.
//! - `/mesh/agents/<node>`: the state of each agent's config stream (for `meshctl status`).
//! - `/mesh/admin/token`: the admin token, shared by all replicas.
//! - `/mesh/ca/state`: the CA (roots, signing key, rotation phase; `server/ca.rs`).
//! - `/mesh/tokens/<id>`: node join tokens (hash of the secret, node, expiry;
//!   `server/tokens.rs`).

use mesh_proto::v1::ResourceRef;

pub const RESOURCES: &str = "/mesh/v1/";
pub const HEALTH: &str = "/mesh/health/";
pub const AGENTS: &str = "/mesh/agents/";
pub const ADMIN_TOKEN: &str = "/mesh/admin/token";
/// Everything a replica's cache follows.
pub const WATCHED: &str = "/mesh/";

pub fn resource(kind: &str, namespace: &str, name: &str) -> String {
    format!("{RESOURCES}{kind}/{namespace}/{name}")
}

pub fn resource_of_ref(r: &ResourceRef) -> String {
    resource(&r.kind, &r.namespace, &r.name)
}

/// The (kind, namespace, name) of a resource key.
pub fn parse_resource(key: &str) -> Option<ResourceRef> {
    let mut parts = key.strip_prefix(RESOURCES)?.splitn(3, '/');
    let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some(ResourceRef {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

pub fn health(namespace: &str, workload: &str) -> String {
    format!("{HEALTH}{namespace}/{workload}")
}

pub fn agent(node: &str) -> String {
    format!("{AGENTS}{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_round_trip() {
        let key = resource("Service", "default", "web");
        assert_eq!(key, "/mesh/v1/Service/default/web");
        let r = parse_resource(&key).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()),
            ("Service", "default", "web")
        );
        assert_eq!(resource_of_ref(&r), key);
        // Cluster-scoped kinds have an empty namespace.
        assert_eq!(
            parse_resource("/mesh/v1/MeshConfig//mesh")
                .unwrap()
                .namespace,
            ""
        );
        assert!(parse_resource("/mesh/health/default/web").is_none());
    }
}
