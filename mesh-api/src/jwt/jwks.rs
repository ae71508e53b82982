//! A JSON Web Key Set (RFC 7517) as a RequestAuthentication carries it: read strictly, so
//! every key the agent holds can verify a signature. The checks happen here, before any
//! byte reaches the crypto crate: it assumes well-sized input (an Ed25519 key shorter than
//! 32 bytes would panic it).

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// The largest inline key set, in bytes.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The most keys one set may hold: a token without `kid` is tried against each key of its
/// algorithm, so this bounds the work one request can cause.
pub const MAX_JWKS_KEYS: usize = 32;
/// RSA modulus sizes accepted, in bits: below 2048 is breakable, above 4096 the crypto
/// crate refuses.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;
/// The largest RSA public exponent the crypto crate takes (2^33 - 1).
const RSA_MAX_EXPONENT: u64 = (1 << 33) - 1;

/// The algorithms a token may be signed with, by `alg` name.
pub(crate) fn supported_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

pub(crate) const SUPPORTED_ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::P256 => "P-256",
            KeyType::P384 => "P-384",
            KeyType::Ed25519 => "Ed25519",
        }
    }
}

/// One public key, ready to verify.
#[derive(Debug, Clone)]
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    /// The JWK's `alg`: when set, only that algorithm may use the key.
    alg: Option<Algorithm>,
    key_type: KeyType,
    pub(crate) key: DecodingKey,
}

impl VerificationKey {
    /// Whether a token signed with `alg` may be checked with this key.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let type_fits = match self.key_type {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        };
        type_fits && self.alg.is_none_or(|a| a == alg)
    }
}

/// Base64url, with or without padding: key sets are configuration, read leniently in form
/// and strictly in content.
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads a key set; the error names the key and member, e.g. `keys[1].crv: ...`.
pub(crate) fn parse_jwks(text: &str) -> Result<Vec<VerificationKey>, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "is {} bytes; a key set may have at most {MAX_JWKS_BYTES}",
            text.len()
        ));
    }
    let set: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let Some(keys) = set.get("keys").and_then(Value::as_array) else {
        return Err(r#"must be a JSON Web Key Set: {"keys": [...]}"#.to_owned());
    };
    if keys.is_empty() {
        return Err("keys: must hold at least one key".to_owned());
    }
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "keys: has {} keys; at most {MAX_JWKS_KEYS} are allowed",
            keys.len()
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let key = key
                .as_object()
                .ok_or_else(|| "must be a JSON object".to_owned());
            key.and_then(parse_key).map_err(|e| format!("keys[{i}]{e}"))
        })
        .collect()
}

/// One JWK; errors start with `.member: ` (or `: `) to follow `keys[i]`.
fn parse_key(jwk: &Map<String, Value>) -> Result<VerificationKey, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!(".{name}: must be a string")),
        }
    };
    let required = |name: &str| text(name)?.ok_or_else(|| format!(".{name}: missing"));
    let bytes = |name: &str| {
        B64.decode(required(name)?)
            .map_err(|_| format!(".{name}: is not base64url"))
    };
    if jwk.contains_key("d") {
        return Err(
            ".d: the key set holds private key material; publish only public keys".to_owned(),
        );
    }
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(format!(
                ".use: {usage:?}: only signature keys (\"sig\") verify tokens"
            ));
        }
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => Some(supported_algorithm(name).ok_or_else(|| {
            format!(".alg: {name:?} is not supported; supported: {SUPPORTED_ALGORITHMS}")
        })?),
    };
    let kid = text("kid")?.map(str::to_owned);
    let (key_type, key) = match required("kty")? {
        "RSA" => (KeyType::Rsa, rsa_key(&bytes("n")?, &bytes("e")?)?),
        "EC" => {
            let (key_type, size) = match required("crv")? {
                "P-256" => (KeyType::P256, 32),
                "P-384" => (KeyType::P384, 48),
                other => {
                    return Err(format!(
                        ".crv: {other:?} is not supported; supported: P-256, P-384"
                    ))
                }
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != size || y.len() != size {
                return Err(format!(
                    ": x and y of a {} key must be {size} bytes each",
                    required("crv")?
                ));
            }
            let point = [&[0x04][..], &x, &y].concat();
            (key_type, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            let crv = required("crv")?;
            if crv != "Ed25519" {
                return Err(format!(
                    ".crv: {crv:?} is not supported; supported: Ed25519"
                ));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err(".x: an Ed25519 key must be 32 bytes".to_owned());
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => {
            return Err(
                ".kty: \"oct\": symmetric keys are not accepted (HMAC tokens would need the \
                 secret on every node)"
                    .to_owned(),
            )
        }
        other => {
            return Err(format!(
                ".kty: {other:?} is not supported; supported: RSA, EC, OKP"
            ))
        }
    };
    let key = VerificationKey {
        kid,
        alg,
        key_type,
        key,
    };
    let probe = probe_algorithm(key_type);
    if let Some(alg) = alg {
        if !key.accepts(alg) {
            return Err(format!(
                ".alg: {alg:?} does not fit a {} key",
                key_type.name()
            ));
        }
    }
    // Building a verifier decodes the point: refuses coordinates off the curve.
    if jsonwebtoken::crypto::verify("", b"", &key.key, probe).is_err() {
        return Err(": the public key is not a valid point of its curve".to_owned());
    }
    Ok(key)
}

fn probe_algorithm(key_type: KeyType) -> Algorithm {
    match key_type {
        KeyType::Rsa => Algorithm::RS256,
        KeyType::P256 => Algorithm::ES256,
        KeyType::P384 => Algorithm::ES384,
        KeyType::Ed25519 => Algorithm::EdDSA,
    }
}

/// An RSA key from its modulus and exponent, big-endian, checked for what the crypto crate
/// would otherwise refuse only when a token arrives.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            ".n: the modulus has {bits} bits; RSA keys must have 2048 to 4096"
        ));
    }
    if n.last().is_some_and(|b| b % 2 == 0) {
        return Err(".n: an RSA modulus is odd".to_owned());
    }
    let e = strip_leading_zeros(e);
    let exponent = (e.len() <= 8)
        .then(|| e.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
        .filter(|&e| e >= 3 && e % 2 == 1 && e <= RSA_MAX_EXPONENT);
    if exponent.is_none() {
        return Err(".e: the exponent must be odd, 3 or more, and below 2^33".to_owned());
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
