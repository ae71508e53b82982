//! Tests of the CA (`ca.rs`): root rotation, signed leaves, operator roots, what the store keeps.

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn rotation_keeps_both_roots_trusted_until_finish() {
    let first = generate_root_authority("td").unwrap();
    let second = generate_root_authority("td").unwrap();
    let steady = CaState {
        active: first.clone(),
        next: None,
        previous_root_pem: None,
    };
    assert_eq!(steady.phase(), "steady");
    assert!(steady.rotate(Phase::Activate, None).is_err());
    assert!(steady.rotate(Phase::Finish, None).is_err());
    let prepared = steady.rotate(Phase::Prepare, Some(second.clone())).unwrap();
    assert_eq!(prepared.phase(), "prepared");
    assert_eq!(prepared.active, first);
    assert_eq!(prepared.trusted_roots().len(), 2);
    assert!(prepared.rotate(Phase::Finish, None).is_err());
    let activated = prepared.rotate(Phase::Activate, None).unwrap();
    assert_eq!(activated.phase(), "activated");
    assert_eq!(activated.active, second);
    assert_eq!(
        activated.trusted_roots(),
        vec![second.root_pem.as_str(), first.root_pem.as_str()],
        "the signing root comes first"
    );
    assert!(activated
        .rotate(Phase::Prepare, Some(generate_root_authority("td").unwrap()))
        .is_err());
    let done = activated.rotate(Phase::Finish, None).unwrap();
    assert_eq!(done.phase(), "steady");
    assert_eq!(done.trusted_roots(), vec![second.root_pem.as_str()]);
}

/// A fresh key and a one-minute certificate for `wanted`: `(key PEM, chain PEM)`.
fn sign_for_a_minute(loaded: &Loaded, wanted: &SpiffeId) -> (String, String) {
    let (key_pem, csr_pem) = mesh_identity::new_csr(wanted).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
    let chain = loaded
        .sign(&csr.public_key, wanted, Duration::from_secs(60), Vec::new())
        .unwrap();
    (key_pem, chain)
}

#[test]
fn signed_leaves_verify_against_the_bundle() {
    let state = CaState {
        active: generate_root_authority("td").unwrap(),
        next: None,
        previous_root_pem: None,
    };
    let loaded = Loaded::new(state, 1).unwrap();
    let wanted = id("spiffe://td/ns/default/sa/web");
    let (key_pem, chain) = sign_for_a_minute(&loaded, &wanted);
    let credential = mesh_identity::Credential::from_pem(&chain, &key_pem).unwrap();
    assert_eq!(credential.id(), &wanted);
    let life = credential
        .not_after()
        .duration_since(credential.not_before())
        .unwrap();
    assert!(life <= Duration::from_secs(60) + BACKDATE, "{life:?}");
    // A TLS server with it is accepted by a client trusting the bundle.
    let bundle = mesh_identity::TrustBundle::from_pem(&loaded.bundle_pem).unwrap();
    mesh_identity::tls::server_config(
        &credential,
        &bundle,
        mesh_identity::tls::ClientAuth::Optional,
    )
    .unwrap();
}

#[test]
fn operator_roots_sign_through_an_intermediate() {
    let operator = generate_root_authority("op").unwrap();
    let root = OperatorRoot {
        cert_pem: operator.root_pem.clone(),
        key_pem: operator.issuer_key_pem.clone(),
    };
    let authority = intermediate_authority(&root, "td").unwrap();
    assert!(authority.operator_supplied);
    assert_eq!(
        pem_to_der(&authority.root_pem).unwrap(),
        pem_to_der(&operator.root_pem).unwrap()
    );
    assert_ne!(authority.issuer_pem, authority.root_pem);
    let loaded = Loaded::new(
        CaState {
            active: authority,
            next: None,
            previous_root_pem: None,
        },
        1,
    )
    .unwrap();
    let wanted = id("spiffe://td/mesh/node/n1");
    let (_, chain) = sign_for_a_minute(&loaded, &wanted);
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");

    // A key of another certificate, or a leaf as "root", is refused.
    let other = generate_root_authority("x").unwrap();
    let mismatched = OperatorRoot {
        cert_pem: operator.root_pem.clone(),
        key_pem: other.issuer_key_pem,
    };
    let e = intermediate_authority(&mismatched, "td").unwrap_err();
    assert!(format!("{e:#}").contains("does not belong"), "{e:#}");
    let leaf = OperatorRoot {
        cert_pem: chain.clone(),
        key_pem: operator.issuer_key_pem,
    };
    assert!(intermediate_authority(&leaf, "td").is_err());
}

fn store() -> (tempfile::TempDir, SharedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore =
        Arc::new(crate::store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    (dir, store)
}

#[tokio::test]
async fn the_first_versions_root_is_adopted() {
    let (_dir, store) = store();
    let legacy = generate_root_authority("td").unwrap();
    let json = serde_json::json!({"certPem": legacy.root_pem, "keyPem": legacy.issuer_key_pem});
    store
        .put(LEGACY_ROOT_KEY, serde_json::to_vec(&json).unwrap())
        .await
        .unwrap();
    let ca = Ca::start(store.clone(), None, "td").await.unwrap();
    assert_eq!(ca.trust_bundle_pem(), legacy.root_pem);
    // Restarts read the same CA.
    let again = Ca::start(store, None, "td").await.unwrap();
    assert_eq!(again.current().state, ca.current().state);
}

#[tokio::test]
async fn another_operator_root_is_refused_and_rotation_spreads() {
    let (_dir, store) = store();
    let operator = generate_root_authority("op").unwrap();
    let root = || OperatorRoot {
        cert_pem: operator.root_pem.clone(),
        key_pem: operator.issuer_key_pem.clone(),
    };
    let ca = Ca::start(store.clone(), Some(root()), "td").await.unwrap();
    assert!(ca.current().state.active.operator_supplied);
    // The same root again is fine; another one is refused, saying how to move.
    Ca::start(store.clone(), Some(root()), "td").await.unwrap();
    let other = generate_root_authority("x").unwrap();
    let e = Ca::start(
        store.clone(),
        Some(OperatorRoot {
            cert_pem: other.root_pem,
            key_pem: other.issuer_key_pem,
        }),
        "td",
    )
    .await
    .err()
    .unwrap();
    assert!(
        format!("{e:#}").contains("meshctl ca rotate prepare"),
        "{e:#}"
    );

    // A rotation through one replica reaches the other.
    let replica = Ca::start(store.clone(), None, "td").await.unwrap();
    let mut changes = replica.subscribe();
    ca.rotate(Phase::Prepare, None, "td").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replica.current().state.phase(), "prepared");
    assert_eq!(certificates(&replica.trust_bundle_pem()), 2);
    let e = replica
        .rotate(Phase::Finish, None, "td")
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("activate"), "{e:#}");
}

fn certificates(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

#[test]
fn base64_matches_known_vectors() {
    assert_eq!(base64_encode(b""), "");
    assert_eq!(base64_encode(b"f"), "Zg==");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_encode(b"foo"), "Zm9v");
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
}
