//! One token: split and decoded ([`parse`]), then checked against one rule ([`verify`]):
//! signature by the issuer's keys, then `exp`, `nbf` and `aud`. Claims are checked here,
//! with their JSON types enforced, rather than by the crypto crate (whose older versions
//! skipped a check when a claim had the wrong type).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::supported_algorithm;
use super::{CompiledRule, JwtError};

/// The longest token accepted, in bytes (checked before anything is decoded).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How far `exp` and `nbf` may be off the proxy's clock.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Token types (`typ`) accepted, without ASCII case: plain JWTs and OAuth access tokens
/// (RFC 9068).
const TYPES: [&str; 4] = ["JWT", "at+jwt", "application/jwt", "application/at+jwt"];

/// A token split and decoded; its signature is not checked yet.
pub(super) struct Parsed<'t> {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signing_input: &'t str,
    /// The whole token, as the key of the verified-signature cache.
    whole: &'t str,
    signature: &'t str,
    /// The payload as sent (base64url).
    pub(super) payload: &'t str,
    pub(super) claims: Map<String, Value>,
}

/// The header members that matter; others (`jku`, `jwk`, `x5u`...) are ignored: keys come
/// only from the issuer's configured set.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

pub(super) fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header64, payload, signature] = parts[..] else {
        return Err(JwtError::Malformed(if parts.len() == 5 {
            "encrypted tokens (JWE) are not supported"
        } else {
            "a JWT has three dot-separated parts"
        }));
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(header64)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(JwtError::Malformed(
            "the header is not base64url JSON with an alg",
        ))?;
    let alg = match header.alg.as_str() {
        none if none.eq_ignore_ascii_case("none") => return Err(JwtError::Unsigned),
        "HS256" | "HS384" | "HS512" => return Err(JwtError::Hmac),
        name => supported_algorithm(name).ok_or(JwtError::UnsupportedAlgorithm)?,
    };
    if header
        .typ
        .as_deref()
        .is_some_and(|typ| !TYPES.iter().any(|t| t.eq_ignore_ascii_case(typ)))
    {
        return Err(JwtError::WrongType);
    }
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "critical header parameters (crit) are not supported",
        ));
    }
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(JwtError::Malformed(
            "the payload is not a base64url JSON object",
        ))?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signing_input: &token[..header64.len() + 1 + payload.len()],
        whole: token,
        signature,
        payload,
        claims,
    })
}

/// Checks `token` against `rule` at `now`; the request principal when it holds.
pub(super) fn verify(
    token: &Parsed<'_>,
    rule: &CompiledRule,
    now: u64,
) -> Result<String, JwtError> {
    check_signature(token, rule)?;
    let claims = &token.claims;
    match number(claims, "exp")? {
        None => return Err(JwtError::MissingExpiry),
        Some(exp) if now as f64 > exp + CLOCK_SKEW_SECONDS as f64 => return Err(JwtError::Expired),
        Some(_) => {}
    }
    if number(claims, "nbf")?.is_some_and(|nbf| nbf > (now + CLOCK_SKEW_SECONDS) as f64) {
        return Err(JwtError::NotYetValid);
    }
    if !rule.audiences.is_empty() {
        let accepted = |aud: &Value| {
            aud.as_str()
                .is_some_and(|a| rule.audiences.iter().any(|want| want == a))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(auds)) => auds.iter().any(accepted),
            Some(aud) => accepted(aud),
            None => false,
        };
        if !ok {
            return Err(JwtError::BadAudience);
        }
    }
    let subject = match claims.get("sub") {
        None => "",
        Some(Value::String(sub)) => sub,
        Some(_) => return Err(JwtError::Malformed("sub is not a string")),
    };
    Ok(format!("{}/{subject}", rule.issuer))
}

/// The keys the token names (by `kid`), or all of its algorithm; one must verify it. A
/// token whose signature these keys verified before is not verified again (see
/// [`VerifiedTokens`]): clients send the same token with many requests, and one ES256
/// check costs a few hundred microseconds.
fn check_signature(token: &Parsed<'_>, rule: &CompiledRule) -> Result<(), JwtError> {
    if rule.keys.is_empty() {
        return Err(JwtError::KeysUnavailable);
    }
    if rule.verified.contains(token.whole) {
        return Ok(());
    }
    let named: Vec<_> = match &token.kid {
        Some(kid) => {
            let named: Vec<_> = rule
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(JwtError::UnknownKeyId);
            }
            named
        }
        None => rule.keys.iter().collect(),
    };
    let mut usable = named
        .into_iter()
        .filter(|k| k.accepts(token.alg))
        .peekable();
    if usable.peek().is_none() {
        return Err(JwtError::NoKeyForAlgorithm);
    }
    let verified = usable.any(|k| {
        jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            &k.key,
            token.alg,
        )
        .unwrap_or(false)
    });
    if verified {
        rule.verified.insert(token.whole);
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// A NumericDate claim: absent, or a JSON number.
fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or(JwtError::Malformed("a time claim is not a number")),
        Some(_) => Err(JwtError::Malformed(match name {
            "exp" => "exp is not a number",
            _ => "nbf is not a number",
        })),
    }
}

/// Tokens whose signature a rule's keys verified, byte for byte. Owned by one compiled rule
/// (so by one key set: new keys come with a new, empty set). Only successes are kept, so a
/// client cannot fill it with garbage; bounded by count and bytes, and simply emptied when
/// full. Everything but the signature (`exp`, `nbf`, `aud`) is still checked per request.
#[derive(Debug, Default)]
pub(super) struct VerifiedTokens(std::sync::Mutex<(std::collections::HashSet<Box<str>>, usize)>);

impl VerifiedTokens {
    const MAX_TOKENS: usize = 4096;
    const MAX_BYTES: usize = 4 * 1024 * 1024;

    fn contains(&self, token: &str) -> bool {
        self.0.lock().is_ok_and(|held| held.0.contains(token))
    }

    #[cfg(test)]
    pub(super) fn contains_for_test(&self, token: &str) -> bool {
        self.contains(token)
    }

    fn insert(&self, token: &str) {
        let Ok(mut held) = self.0.lock() else { return };
        let (tokens, bytes) = &mut *held;
        if tokens.len() >= Self::MAX_TOKENS || *bytes + token.len() > Self::MAX_BYTES {
            tokens.clear();
            *bytes = 0;
        }
        if tokens.insert(token.into()) {
            *bytes += token.len();
        }
    }
}
