//! JSON Web Tokens for the request-security tests: an issuer's signing keys (EC P-256 and RSA
//! 2048, generated per test run), the key set (JWKS) it publishes, tokens with any claims and
//! header, and the hostile tokens an attacker would try (`alg: none`, HMAC keyed with the
//! public key, a key id not in the set, a corrupted signature, broken base64).
//!
//! Tokens are signed by the jsonwebtoken crate (the one the mesh verifies with) over a header
//! this module writes itself, so a test controls every header member (`alg`, `kid`, `typ`).
//! Times are the machine's clock: the agent checks `exp`/`nbf` against its own.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{crypto, Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One private key of an issuer, its key id and public JWK.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A fresh EC P-256 key for ES256.
    pub fn es256(kid: &str) -> SigningKey {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("generating a P-256 key");
        SigningKey::new(
            Algorithm::ES256,
            kid,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
    }

    /// An RSA 2048 key for RS256. Every RSA key of one test process is the same private key
    /// (generating one takes a while), so give each a distinct `kid`.
    pub fn rs256(kid: &str) -> SigningKey {
        static DER: OnceLock<Vec<u8>> = OnceLock::new();
        let der = DER.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .expect("generating an RSA key");
            key.to_pkcs1_der()
                .expect("encoding the RSA key")
                .as_bytes()
                .to_vec()
        });
        SigningKey::new(Algorithm::RS256, kid, EncodingKey::from_rsa_der(der))
    }

    fn new(alg: Algorithm, kid: &str, encoding: EncodingKey) -> SigningKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("the public half of a key");
        jwk.common.key_id = Some(kid.to_owned());
        SigningKey {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk: serde_json::to_value(jwk).expect("a JWK as JSON"),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK: `kid`, `alg`, `kty` and `crv`/`x`/`y` or `n`/`e`.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token with `claims` and the header `{alg, kid, typ: JWT}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"});
        self.sign_with_header(&header, claims)
    }

    /// A token with this header (as given: any `alg`, `kid`, `typ`, or none of them), signed
    /// by this key with its own algorithm.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let signature =
            crypto::sign(input.as_bytes(), &self.encoding, self.alg).expect("signing a token");
        format!("{input}.{signature}")
    }

    /// The bytes of the public key (EC: the SEC1 uncompressed point; RSA: the modulus), as a
    /// verifier that mixes up key types would take them for an HMAC secret.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        let jwk: Jwk = serde_json::from_value(self.jwk.clone()).expect("our own JWK");
        let decode = |b64: &str| URL_SAFE_NO_PAD.decode(b64).expect("base64url in our JWK");
        match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => {
                [&[0x04][..], &decode(&ec.x), &decode(&ec.y)].concat()
            }
            AlgorithmParameters::RSA(rsa) => decode(&rsa.n),
            other => panic!("not a key of this module: {other:?}"),
        }
    }
}

/// `{"keys": [...]}` of the keys' public halves, as an issuer publishes them.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Claims valid for an hour from now: `iss`, `sub`, `aud`, `iat`, `exp`.
pub fn claims(issuer: &str, subject: &str, audience: &str) -> Value {
    let now = now();
    json!({"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 3600})
}

/// `base` with the members of `changes` set (a `null` removes the claim).
pub fn merged(base: &Value, changes: &Value) -> Value {
    let mut out = base.clone();
    let object = out.as_object_mut().expect("claims are a JSON object");
    for (name, value) in changes.as_object().expect("changes are a JSON object") {
        if value.is_null() {
            object.remove(name);
        } else {
            object.insert(name.clone(), value.clone());
        }
    }
    out
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!("{}.", signing_input(&header, claims))
}

/// An HS256 token whose secret is `key`'s public key bytes: accepted by a verifier that
/// takes the algorithm from the token and the key bytes from its key set.
pub fn hmac_with_public_key(key: &SigningKey, claims: &Value) -> String {
    let header = json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"});
    let input = signing_input(&header, claims);
    let secret = EncodingKey::from_secret(&key.public_key_bytes());
    let signature = crypto::sign(input.as_bytes(), &secret, Algorithm::HS256).expect("HMAC");
    format!("{input}.{signature}")
}

/// `token` with one bit of its signature flipped (still valid base64url).
pub fn corrupt_signature(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').expect("a token with a signature");
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("a base64url signature");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Three dot-separated parts that are not base64url.
pub fn malformed() -> String {
    "eyJ!not*base64.%%%.@@@".to_owned()
}

/// `base64url(header).base64url(claims)`: what a signature covers.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        other => panic!("no key of this module uses {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    const ISSUER: &str = "https://issuer.test";

    /// Verifies `token` as a careful relying party does: the key by `kid` from `set`, the
    /// algorithm from that key (never from the token), issuer, audience and expiry checked.
    fn verify(set: &str, token: &str) -> Result<Value, String> {
        let set: JwkSet = serde_json::from_str(set).map_err(|e| e.to_string())?;
        let header = decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("no kid")?;
        let jwk = set
            .find(&kid)
            .ok_or(format!("kid {kid:?} not in the set"))?;
        let alg = serde_json::to_value(jwk).map_err(|e| e.to_string())?["alg"]
            .as_str()
            .ok_or("no alg in the JWK")?
            .parse::<Algorithm>()
            .map_err(|e| e.to_string())?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&["web"]);
        decode::<Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn minted_tokens_verify_against_the_published_key_set() {
        let (ec, rsa) = (SigningKey::es256("ec-1"), SigningKey::rs256("rsa-1"));
        let set = jwks(&[&ec, &rsa]);
        let published: Value = serde_json::from_str(&set).unwrap();
        let [ec_jwk, rsa_jwk] = &published["keys"].as_array().unwrap()[..] else {
            panic!("two keys: {published}");
        };
        for (jwk, kty, alg) in [(ec_jwk, "EC", "ES256"), (rsa_jwk, "RSA", "RS256")] {
            assert_eq!(
                (jwk["kty"].as_str(), jwk["alg"].as_str()),
                (Some(kty), Some(alg))
            );
        }
        assert_eq!(ec_jwk["kid"], "ec-1");
        assert_eq!(ec_jwk["crv"], "P-256");
        assert!(
            ec_jwk["x"].is_string() && ec_jwk["y"].is_string(),
            "{ec_jwk}"
        );
        assert!(
            rsa_jwk["n"].is_string() && rsa_jwk["e"].is_string(),
            "{rsa_jwk}"
        );

        let claims = merged(
            &claims(ISSUER, "alice", "web"),
            &json!({"groups": ["admins"], "org": {"team": "payments"}}),
        );
        for key in [&ec, &rsa] {
            let verified = verify(&set, &key.sign(&claims)).unwrap();
            assert_eq!(verified, claims);
        }
        // A header written by hand, e.g. another `typ`, still carries a valid signature.
        let header = json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"});
        assert_eq!(
            verify(&set, &ec.sign_with_header(&header, &claims)),
            Ok(claims)
        );
    }

    #[test]
    fn hostile_tokens_do_not_verify() {
        let key = SigningKey::es256("ec-1");
        let set = jwks(&[&key]);
        let claims = claims(ISSUER, "mallory", "web");
        let good = key.sign(&claims);
        assert!(verify(&set, &good).is_ok());

        let unsigned = unsigned(&claims);
        assert!(unsigned.ends_with('.'), "{unsigned}");
        assert!(verify(&set, &unsigned).is_err());

        let hmac = hmac_with_public_key(&key, &claims);
        let header = decode_header(&hmac).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert!(verify(&set, &hmac).is_err());
        // It is a real HMAC under the public key bytes: what a confused verifier accepts.
        let mut hs = Validation::new(Algorithm::HS256);
        hs.set_audience(&["web"]);
        let secret = DecodingKey::from_secret(&key.public_key_bytes());
        assert!(decode::<Value>(&hmac, &secret, &hs).is_ok());

        let header = json!({"alg": "ES256", "kid": "not-in-the-set", "typ": "JWT"});
        let unknown_kid = key.sign_with_header(&header, &claims);
        let err = verify(&set, &unknown_kid).unwrap_err();
        assert!(err.contains("not in the set"), "{err}");

        let corrupted = corrupt_signature(&good);
        assert_ne!(corrupted, good);
        assert_eq!(corrupted.len(), good.len());
        assert!(verify(&set, &corrupted).is_err());

        assert!(verify(&set, &malformed()).is_err());
        assert!(URL_SAFE_NO_PAD
            .decode(malformed().split('.').next().unwrap())
            .is_err());

        let expired = key.sign(&merged(&claims, &json!({"exp": now() - 3600})));
        assert!(verify(&set, &expired).unwrap_err().contains("Expired"));
    }

    #[test]
    fn merged_sets_and_removes_claims() {
        let base = json!({"iss": "i", "sub": "s", "exp": 1});
        let out = merged(&base, &json!({"sub": "t", "exp": null, "nbf": 2}));
        assert_eq!(out, json!({"iss": "i", "sub": "t", "nbf": 2}));
    }
}
