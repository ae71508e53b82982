//! The cache's side of fetched key sets, through a real store and its watch: what agents are
//! pushed, what `meshctl get` keeps seeing, and which stored sets are refused.

use std::sync::Arc;

use mesh_api::Resource;

use super::StoredJwks;
use crate::keys;
use crate::server::cache::{resource_ref, ConfigCache};
use crate::store::{EmbeddedStore, SharedStore};

const URI: &str = "https://issuer.example/jwks";

/// An Ed25519 public key (RFC 8037's example) as a key set; `n` varies its key id.
fn key_set(n: u32) -> String {
    format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k{n}","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}]}}"#
    )
}

fn resource(yaml: &str) -> Resource {
    mesh_api::load_str("test.yaml", yaml).unwrap().remove(0)
}

fn key(r: &Resource) -> String {
    keys::resource_of_ref(&resource_ref(r))
}

async fn put_jwks(store: &SharedStore, cache: &ConfigCache, uri: &str, jwks: &str) -> u64 {
    let stored = StoredJwks {
        uri: uri.to_owned(),
        jwks: jwks.to_owned(),
    };
    let revision = store
        .put(&keys::jwks(uri), serde_json::to_vec(&stored).unwrap())
        .await
        .unwrap();
    cache.wait_for(revision).await;
    revision
}

/// The rules of the RequestAuthentication `name` in a push, as agents read them.
fn pushed_rules(push: &mesh_proto::v1::ConfigPush, name: &str) -> Option<Vec<mesh_api::JwtRule>> {
    push.upserts.iter().find_map(|r| {
        let resource = Resource::from_json(&r.json).unwrap();
        resource.validate().expect("agents accept what is pushed");
        match resource {
            Resource::RequestAuthentication(a) if a.metadata.name == name => Some(a.spec.jwt_rules),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn fetched_key_sets_are_pushed_inline_and_stored_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let by_uri = resource(&format!(
        "apiVersion: mesh/v1\nkind: RequestAuthentication\nmetadata: {{name: by-uri, namespace: a}}\n\
         spec: {{jwtRules: [{{issuer: https://issuer.example, jwksUri: '{URI}'}}]}}\n"
    ));
    // Inline keys win over the URI: nothing to fetch, nothing filled in.
    let inline = resource(&format!(
        "apiVersion: mesh/v1\nkind: RequestAuthentication\nmetadata: {{name: inline, namespace: a}}\n\
         spec: {{jwtRules: [{{issuer: https://other.example, jwks: '{}', jwksUri: '{URI}x'}}]}}\n",
        key_set(9)
    ));
    for r in [&by_uri, &inline] {
        store
            .put(&key(r), serde_json::to_vec(r).unwrap())
            .await
            .unwrap();
    }
    let cache = ConfigCache::start(store.clone()).await.unwrap();
    assert_eq!(
        cache.jwks_uris_to_fetch().into_iter().collect::<Vec<_>>(),
        [URI]
    );
    let rules = pushed_rules(&cache.push_from(0), "by-uri").unwrap();
    assert_eq!(rules[0].jwks, None, "nothing fetched yet");

    // A fetched set: a diff pushes the RequestAuthentication again, keys inline, URI kept.
    let before = cache.version();
    let revision = put_jwks(&store, &cache, URI, &key_set(1)).await;
    assert_eq!(cache.version(), revision);
    let diff = cache.push_from(before);
    assert_eq!(diff.upserts.len(), 1, "only the resource naming the URI");
    let rules = pushed_rules(&diff, "by-uri").unwrap();
    assert_eq!(rules[0].jwks.as_deref(), Some(key_set(1).as_str()));
    assert_eq!(rules[0].jwks_uri.as_deref(), Some(URI));
    let full = cache.push_from(0);
    assert_eq!(
        pushed_rules(&full, "by-uri").unwrap()[0].jwks,
        Some(key_set(1))
    );
    assert_eq!(
        pushed_rules(&full, "inline").unwrap()[0].jwks,
        Some(key_set(9))
    );
    // What meshctl get shows is what the user wrote.
    let stored = cache.resource(&key(&by_uri)).unwrap();
    assert_eq!(*stored.resource, by_uri);

    // A stored set agents would reject (or one under another URI's key) is ignored: the last
    // good one stays.
    put_jwks(&store, &cache, URI, r#"{"keys": []}"#).await;
    let misplaced = StoredJwks {
        uri: format!("{URI}/other"),
        jwks: key_set(2),
    };
    let revision = store
        .put(&keys::jwks(URI), serde_json::to_vec(&misplaced).unwrap())
        .await
        .unwrap();
    cache.wait_for(revision).await;
    assert_eq!(cache.jwks(URI).as_deref(), Some(key_set(1).as_str()));

    // Rotated, then forgotten.
    let before = cache.version();
    put_jwks(&store, &cache, URI, &key_set(3)).await;
    let rules = pushed_rules(&cache.push_from(before), "by-uri").unwrap();
    assert_eq!(rules[0].jwks, Some(key_set(3)));
    assert_eq!(cache.stored_jwks_uris(), [URI]);
    let before = cache.version();
    let revision = store.delete(&keys::jwks(URI)).await.unwrap().unwrap();
    cache.wait_for(revision).await;
    let rules = pushed_rules(&cache.push_from(before), "by-uri").unwrap();
    assert_eq!(rules[0].jwks, None);
    assert!(cache.stored_jwks_uris().is_empty());
}
