//! End-user authentication with JWTs: the `jwtRules` of the RequestAuthentications that
//! apply to a workload, compiled once per config ([`JwtRules`]), find the token of a request
//! and verify it ([`JwtRules::authenticate`]). Pure: the caller passes the clock.
//!
//! Everything a request carries is untrusted: tokens are capped at [`MAX_TOKEN_BYTES`]
//! before anything is decoded, only the asymmetric algorithms of the issuer's key set are
//! accepted (never `none`, never HMAC, never a key the token brings along), and errors never
//! echo the token (their text goes into a response header).

pub(crate) mod jwks;
mod token;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::authz::{any_claim_text, claim};
use crate::request_auth::JwtRule;
use crate::route::{parse_query, RequestAttributes};
use jwks::{parse_jwks, VerificationKey};

pub use jwks::{MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use token::{CLOCK_SKEW_SECONDS, MAX_TOKEN_BYTES};

/// Why a request's token was refused. The text is safe for a header (`error_description`):
/// ASCII, no quotes, nothing from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    #[error("HMAC-signed tokens are not accepted")]
    Hmac,
    #[error("the token's signing algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("the token's type (typ) is not JWT")]
    WrongType,
    #[error("the request carries more than one token")]
    MultipleTokens,
    #[error("the token's issuer is not accepted here")]
    UnknownIssuer,
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
    #[error("the token's key id (kid) is not in the issuer's key set")]
    UnknownKeyId,
    #[error("no key of the issuer fits the token's algorithm")]
    NoKeyForAlgorithm,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has no exp claim")]
    MissingExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    BadAudience,
}

impl JwtError {
    /// The `WWW-Authenticate` value of the 401 answer (RFC 6750).
    pub fn www_authenticate(&self) -> String {
        format!("Bearer error=\"invalid_token\", error_description=\"{self}\"")
    }
}

/// Where a request's token was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenLocation {
    /// A header (lowercase name), after its prefix.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
}

/// A request whose token verified.
#[derive(Debug, Clone)]
pub struct Authenticated {
    principal: String,
    claims: Map<String, Value>,
    /// The token's payload as sent (base64url JSON).
    payload: String,
    locations: Vec<TokenLocation>,
    rule: Arc<CompiledRule>,
}

impl Authenticated {
    /// `<iss>/<sub>` (`<iss>/` when the token has no `sub`): what `requestPrincipals`
    /// match.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The verified claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub fn issuer(&self) -> &str {
        &self.rule.issuer
    }

    /// Where the token was (every place it was found); the proxy removes it there unless
    /// [`Authenticated::forward_original_token`].
    pub fn locations(&self) -> &[TokenLocation] {
        &self.locations
    }

    pub fn forward_original_token(&self) -> bool {
        self.rule.forward_original_token
    }

    /// Headers to set on the request for the app (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`), lowercase names. A claim that is missing, an object, or
    /// holds characters a header cannot carry is left out.
    pub fn output_headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(name) = &self.rule.output_payload_to_header {
            out.push((name.clone(), self.payload.clone()));
        }
        for (header, claim_name) in &self.rule.output_claims {
            let value = claim(&self.claims, std::slice::from_ref(claim_name)).and_then(header_text);
            if let Some(value) = value {
                out.push((header.clone(), value));
            }
        }
        out
    }
}

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
impl Authenticated {
    /// An identity with these claims as if its token had verified (principal `iss/sub`
    /// from them): for testing and fuzzing policy evaluation apart from signatures.
    pub fn assume_verified(claims: Map<String, Value>) -> Authenticated {
        let text = |name| claims.get(name).and_then(Value::as_str).unwrap_or_default();
        let rule = JwtRule {
            issuer: text("iss").to_owned(),
            ..JwtRule::default()
        };
        Authenticated {
            principal: format!("{}/{}", text("iss"), text("sub")),
            payload: String::new(),
            locations: Vec::new(),
            rule: Arc::new(CompiledRule::new(&rule)),
            claims,
        }
    }
}

/// A claim as header text: scalars as their text, lists of scalars comma-separated;
/// `None` for objects, nulls, and text a header cannot carry.
fn header_text(value: &Value) -> Option<String> {
    let mut parts = Vec::new();
    any_claim_text(value, &mut |text| {
        parts.push(text.to_owned());
        false
    });
    let whole = parts.join(",");
    let fits = whole.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    (!parts.is_empty() && fits).then_some(whole)
}

/// One `jwtRule`, ready to use.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    issuer: String,
    audiences: Vec<String>,
    /// Empty when the key set is still to be fetched (`jwksUri`) or does not parse.
    keys: Vec<VerificationKey>,
    locations: Vec<TokenLocation>,
    forward_original_token: bool,
    output_payload_to_header: Option<String>,
    /// (lowercase header, claim)
    output_claims: Vec<(String, String)>,
    /// Tokens these keys verified already.
    verified: token::VerifiedTokens,
}

impl CompiledRule {
    fn new(rule: &JwtRule) -> CompiledRule {
        let mut locations: Vec<TokenLocation> = rule
            .from_headers
            .iter()
            .map(|h| TokenLocation::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone(),
            })
            .chain(rule.from_params.iter().cloned().map(TokenLocation::Param))
            .collect();
        if locations.is_empty() {
            locations.push(TokenLocation::Header {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned(),
            });
        }
        CompiledRule {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys: rule
                .jwks
                .as_deref()
                .and_then(|j| parse_jwks(j).ok())
                .unwrap_or_default(),
            locations,
            forward_original_token: rule.forward_original_token,
            output_payload_to_header: rule
                .output_payload_to_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            output_claims: rule
                .output_claim_to_headers
                .iter()
                .map(|o| (o.header.to_ascii_lowercase(), o.claim.clone()))
                .collect(),
            verified: Default::default(),
        }
    }
}

/// The JWT rules that apply to one workload, compiled: keys parsed, token locations
/// resolved. Cheap to clone and to merge (the rules are shared).
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    rules: Vec<Arc<CompiledRule>>,
}

impl JwtRules {
    pub fn new<'r>(rules: impl IntoIterator<Item = &'r JwtRule>) -> JwtRules {
        JwtRules {
            rules: rules
                .into_iter()
                .map(|r| Arc::new(CompiledRule::new(r)))
                .collect(),
        }
    }

    /// No rules: requests are never authenticated (nor refused for a token).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn extend(&mut self, other: &JwtRules) {
        self.rules.extend(other.rules.iter().cloned());
    }

    /// Every header the rules may set for the app. The proxy removes these from every
    /// request first, token or not, so a client cannot pose as a verified one by sending
    /// them itself.
    pub fn output_header_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| {
                r.output_payload_to_header
                    .as_deref()
                    .into_iter()
                    .chain(r.output_claims.iter().map(|(h, _)| h.as_str()))
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every header (lowercase name) a token is read from. [`JwtRules::authenticate`] reads
    /// a header's first value only, so the proxy refuses a request that sends one of these
    /// twice: the app could read the other copy.
    pub fn token_headers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| &r.locations)
            .filter_map(|l| match l {
                TokenLocation::Header { name, .. } => Some(name.as_str()),
                TokenLocation::Param(_) => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Finds the request's token and verifies it, at `now` (seconds since the Unix epoch):
    /// `Ok(None)` when it carries none (unauthenticated, not refused), `Ok(Some(..))` when
    /// it verified, `Err` when it must be refused (401).
    ///
    /// The token is looked for in every location of every rule; two different tokens are
    /// refused. It is verified by the rules for its `iss` that read that location.
    pub fn authenticate(
        &self,
        request: &dyn RequestAttributes,
        now: u64,
    ) -> Result<Option<Authenticated>, JwtError> {
        let Some((token, locations)) = self.find_token(request)? else {
            return Ok(None);
        };
        let parsed = token::parse(&token)?;
        let issuer = match parsed.claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(JwtError::Malformed("iss is not a string")),
            None => return Err(JwtError::Malformed("the token has no iss claim")),
        };
        let mut candidates = self
            .rules
            .iter()
            .filter(|r| r.issuer == issuer && r.locations.iter().any(|l| locations.contains(l)))
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::UnknownIssuer);
        }
        let mut first_error = None;
        for rule in candidates {
            match token::verify(&parsed, rule, now) {
                Ok(principal) => {
                    return Ok(Some(Authenticated {
                        principal,
                        payload: parsed.payload.to_owned(),
                        claims: parsed.claims,
                        locations,
                        rule: rule.clone(),
                    }))
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(JwtError::UnknownIssuer))
    }

    /// The token, and every location it was found in, if the request has one.
    fn find_token<'q>(
        &self,
        request: &'q dyn RequestAttributes,
    ) -> Result<Option<FoundToken<'q>>, JwtError> {
        let query: OnceCell<BTreeMap<String, String>> = OnceCell::new();
        let mut found: Option<FoundToken<'q>> = None;
        for location in self.rules.iter().flat_map(|r| &r.locations) {
            let token = match location {
                TokenLocation::Header { name, prefix } => request
                    .header(name)
                    .and_then(|value| strip_prefix_ignoring_case(value, prefix))
                    .map(|t| Cow::Borrowed(t.trim())),
                TokenLocation::Param(name) => query
                    .get_or_init(|| request.query().map(parse_query).unwrap_or_default())
                    .get(name)
                    .map(|v| Cow::Owned(v.clone())),
            };
            let Some(token) = token else { continue };
            if token.is_empty() {
                return Err(JwtError::Malformed("the token is empty"));
            }
            match &mut found {
                Some((first, _)) if *first != token => return Err(JwtError::MultipleTokens),
                Some((_, locations)) => {
                    if !locations.contains(location) {
                        locations.push(location.clone());
                    }
                }
                None => found = Some((token, vec![location.clone()])),
            }
        }
        Ok(found)
    }
}

/// A request's token, and every location it was found in.
type FoundToken<'q> = (Cow<'q, str>, Vec<TokenLocation>);

/// `value` after `prefix`, compared without ASCII case (`bearer x` is fine); `None` when
/// the value does not start with it. Never slices inside a character.
fn strip_prefix_ignoring_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.as_bytes().get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix.as_bytes()) {
        return None;
    }
    value.get(prefix.len()..)
}
