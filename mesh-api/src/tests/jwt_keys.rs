//! Real keys and real signed tokens for tests: keys are generated per test run (ring for EC
//! and the Ed25519 seed, the RSA crate for RSA: ring cannot generate RSA keys), tokens signed by the
//! jsonwebtoken crate, public keys published as a JWKS the way an issuer does.

use std::sync::OnceLock;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Value};

/// The clock of every test: tokens are made relative to it.
pub(crate) const NOW: u64 = 1_800_000_000;

pub(crate) const ISSUER: &str = "https://issuer.example";

/// A signing key and its public JWK.
pub(crate) struct TestKey {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    encoding: EncodingKey,
    pub(crate) jwk: Value,
}

impl TestKey {
    fn new(alg: Algorithm, kid: &str, encoding: EncodingKey) -> TestKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public key of a test key");
        jwk.common.key_id = Some(kid.to_owned());
        TestKey {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    /// An RSA key (2048 bits) for `alg` (RS* or PS*). The private key is made once per test
    /// binary: generating RSA keys is slow.
    pub(crate) fn rsa(alg: Algorithm, kid: &str) -> TestKey {
        static DER: OnceLock<Vec<u8>> = OnceLock::new();
        let der = DER.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
            key.to_pkcs1_der().unwrap().as_bytes().to_vec()
        });
        TestKey::new(alg, kid, EncodingKey::from_rsa_der(der))
    }

    /// A fresh P-256 (ES256) or P-384 (ES384) key.
    pub(crate) fn ec(alg: Algorithm, kid: &str) -> TestKey {
        let curve = match alg {
            Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
            other => panic!("{other:?} is not an EC algorithm"),
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(curve, &SystemRandom::new()).unwrap();
        TestKey::new(alg, kid, EncodingKey::from_ec_der(pkcs8.as_ref()))
    }

    /// A fresh Ed25519 (EdDSA) key. As PKCS#8 v1 (RFC 8410: a fixed prefix, then the
    /// 32-byte seed): the crypto crate does not read ring's v2 documents.
    pub(crate) fn ed25519(kid: &str) -> TestKey {
        const V1_PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed).unwrap();
        let pkcs8 = [&V1_PREFIX[..], &seed].concat();
        TestKey::new(Algorithm::EdDSA, kid, EncodingKey::from_ed_der(&pkcs8))
    }

    /// A token with `claims`, header `{alg, kid, typ: JWT}`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    pub(crate) fn sign_with(&self, header: &Header, claims: &Value) -> String {
        encode(header, claims, &self.encoding).unwrap()
    }
}

/// `{"keys": [...]}` of the keys' public halves.
pub(crate) fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Claims valid at [`NOW`] for [`ISSUER`]: `sub: alice`, `aud: web`, an hour left.
pub(crate) fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": "web", "exp": NOW + 3600, "iat": NOW - 10})
}

/// `claims()` with `changes` merged in (a `null` removes the claim).
pub(crate) fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}
