//! Where things live in the store.
//!
//! - `/mesh/v1/<Kind>/<namespace>/<name>`: resources (JSON), what agents receive.
//! - `/mesh/health/<namespace>/<workload>`: endpoint health reported by agents.
//! - `/mesh/jwks/<hex of the URI>`: the last good JSON Web Key Set fetched from a
//!   RequestAuthentication's `jwksUri` (`server/jwks/`), pushed inline to agents.
//! - `/mesh/agents/<node>`: the state of each agent's config stream (for `meshctl status`).
//! - `/mesh/admin/token`: the admin token, shared by all replicas.
//! - `/mesh/ca/state`: the CA (roots, signing key, rotation phase; `server/ca.rs`).
//! - `/mesh/tokens/<id>`: node join tokens (hash of the secret, node, expiry;
//!   `server/tokens.rs`).

use mesh_proto::v1::ResourceRef;

pub const RESOURCES: &str = "/mesh/v1/";
pub const HEALTH: &str = "/mesh/health/";
pub const AGENTS: &str = "/mesh/agents/";
pub const JWKS: &str = "/mesh/jwks/";
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

/// Where the key set fetched from `uri` is kept: the URI's bytes in hex, so any URI makes
/// one key segment of only safe characters.
pub fn jwks(uri: &str) -> String {
    use std::fmt::Write;
    let mut key = String::with_capacity(JWKS.len() + 2 * uri.len());
    key.push_str(JWKS);
    for byte in uri.bytes() {
        let _ = write!(key, "{byte:02x}");
    }
    key
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

    #[test]
    fn jwks_keys_are_one_segment_per_uri() {
        let a = jwks("https://issuer.example/keys?x=/y");
        let b = jwks("https://issuer.example/keys?x=/z");
        assert!(a.starts_with(JWKS));
        assert!(!a[JWKS.len()..].contains('/'), "{a}");
        assert_ne!(a, b);
    }
}
