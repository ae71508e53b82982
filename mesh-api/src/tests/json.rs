//! JSON (the wire and store format) and store keys.

use super::{lines, MESH_FIXTURE};
use crate::*;

fn json_err(json: &str) -> Vec<String> {
    lines(Resource::from_json(json.as_bytes()).expect_err("should fail"))
}

#[test]
fn every_kind_round_trips_through_json() {
    let resources = load_str("mesh.yaml", MESH_FIXTURE).unwrap();
    let mut kinds: Vec<&str> = resources.iter().map(Resource::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), Resource::KINDS.len());
    for r in &resources {
        let json = r.to_json();
        assert!(!json.contains('\n'), "{json}");
        assert!(
            json.starts_with(r#"{"apiVersion":"mesh/v1","kind":""#),
            "{json}"
        );
        assert_eq!(&Resource::from_json(json.as_bytes()).unwrap(), r, "{json}");
    }
}

#[test]
fn json_shapes() {
    let mesh = Resource::from(MeshConfig::default());
    assert!(mesh
        .to_json()
        .starts_with(r#"{"apiVersion":"mesh/v1","kind":"MeshConfig","metadata":{"name":"mesh"},"spec":{"trustDomain":"cluster.local","#));
    let pa = Resource::from_json(
        br#"{"apiVersion":"mesh/v1","kind":"PeerAuthentication","metadata":{"name":"p","namespace":"prod"},
            "spec":{"selector":{"app":"a"},"mode":"STRICT","portLevelMtls":{"8080":"DISABLE"}}}"#,
    )
    .unwrap();
    assert_eq!(
        pa.to_json(),
        r#"{"apiVersion":"mesh/v1","kind":"PeerAuthentication","metadata":{"name":"p","namespace":"prod"},"spec":{"selector":{"app":"a"},"mode":"STRICT","portLevelMtls":{"8080":"DISABLE"}}}"#
    );
}

#[test]
fn from_json_reports_like_the_loader() {
    assert_eq!(
        json_err(
            r#"{"apiVersion":"mesh/v1","kind":"Route","metadata":{"name":"r","namespace":"prod"},"spec":{"service":"a","rules":[{"backends":[{"service":"b","wieght":2}]}]}}"#
        ),
        ["Route prod/r: spec.rules[0].backends[0].wieght: unknown field `wieght`, expected one of `service`, `subset`, `weight`, `port`"]
    );
    // Per-resource validation runs too.
    assert_eq!(
        json_err(
            r#"{"apiVersion":"mesh/v1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"a","rules":[]}}"#
        ),
        ["Route default/r: spec.rules: at least one rule is required"]
    );
    assert_eq!(
        json_err(r#"{"apiVersion":"mesh/v1","kind":"MeshConfig","metadata":{"name":"mesh","namespace":"x"}}"#),
        ["MeshConfig x/mesh: metadata.namespace: MeshConfig is cluster-scoped; omit the namespace (got \"x\")"]
    );
    assert_eq!(
        json_err(r#"{"apiVersion":"mesh/v1","kind":"Nope","metadata":{"name":"n"}}"#),
        ["Nope default/n: kind: unknown kind \"Nope\", expected one of: Service, Workload, Route, AuthorizationPolicy, PeerAuthentication, RequestAuthentication, MeshConfig"]
    );
    assert_eq!(
        json_err(r#"{"apiVersion":"mesh/v1","kind":"#),
        ["invalid JSON: EOF while parsing a value at line 1 column 31"]
    );
    assert_eq!(
        json_err("[]"),
        ["expected a mapping with apiVersion, kind, metadata and spec, found a sequence"]
    );
    assert_eq!(
        json_err(""),
        ["invalid JSON: EOF while parsing a value at line 1 column 0"]
    );
}

#[test]
fn storage_keys() {
    let resources = load_str("mesh.yaml", MESH_FIXTURE).unwrap();
    let keys: Vec<String> = resources.iter().map(Resource::storage_key).collect();
    assert_eq!(keys[0], "/mesh/v1/MeshConfig//mesh");
    assert_eq!(keys[1], "/mesh/v1/Service/bookinfo/productpage");
    assert!(keys.contains(&"/mesh/v1/Route/bookinfo/reviews-canary".to_owned()));
    for r in &resources {
        let key = r.resource_key();
        assert_eq!(
            ResourceKey::from_storage_key(&r.storage_key()),
            Some(key.clone())
        );
        assert_eq!(key.object_key(), r.key());
        assert!(r
            .storage_key()
            .starts_with(&ResourceKey::kind_prefix(r.kind())));
    }
    assert_eq!(
        resources[10].resource_key().to_string(),
        "Route bookinfo/reviews-canary"
    );
    assert_eq!(Resource::kind_named("route"), Some("Route"));
    assert_eq!(
        Resource::kind_named("AUTHORIZATIONPOLICY"),
        Some("AuthorizationPolicy")
    );
    assert_eq!(Resource::kind_named("routes"), None);
    assert!(Resource::kind_is_namespaced("Route"));
    assert!(!Resource::kind_is_namespaced("MeshConfig"));
}
