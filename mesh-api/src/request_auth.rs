//! `kind: RequestAuthentication`: which JWTs the workloads it selects accept from end users.
//! A valid token gives the request a principal (`<iss>/<sub>`) and claims that
//! AuthorizationPolicy can require; an invalid one is refused (401); a request without one
//! is simply unauthenticated. Verification is in [`crate::jwt`].

use serde::{Deserialize, Serialize};

use crate::authz::in_scope;
use crate::jwt::jwks::parse_jwks;
use crate::meta::{Labels, ObjectMeta};
use crate::resource::Kind;
use crate::route::is_token;
use crate::validate::{check_meta, check_selector, Checker};
use crate::workload::Workload;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    pub spec: RequestAuthenticationSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads (by `spec.labels`) it applies to, scoped like an AuthorizationPolicy's:
    /// omitted, every workload of its namespace (of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Labels>,
    /// The issuers accepted. Several RequestAuthentications selecting one workload add up.
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss` must equal this.
    pub issuer: String,
    /// The token's `aud` must name one of these; empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's public keys, a JSON Web Key Set as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the issuer publishes its key set (https only), when `jwks` is not given. The
    /// control plane fetches it and fills in `jwks` in the copy it pushes to agents (which
    /// make no outbound calls); until a fetch succeeds, tokens of this issuer are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Headers the token may come in; with `fromParams`, both empty: `Authorization` with
    /// the `Bearer ` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Pass the token on to the app; by default it is removed once verified.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// Header to give the app the verified payload in (base64url JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Headers to give the app single claims in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A header a token comes in, after `prefix` (matched without ASCII case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `{header, claim}`: the verified claim's value is set as the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// Headers the proxy sets itself or that frame the message: never outputs of a rule.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "authorization",
];

impl JwtRule {
    /// The URI the control plane fetches this rule's key set from: `jwksUri` when no inline
    /// `jwks` is given (inline keys win, as written).
    pub fn uri_to_fetch(&self) -> Option<&str> {
        match (&self.jwks, &self.jwks_uri) {
            (None, Some(uri)) => Some(uri),
            _ => None,
        }
    }
}

/// Checks a JSON Web Key Set as `jwks` is checked at apply: what the control plane requires
/// of a set it fetched before pushing it, so agents never receive one they would reject.
pub fn check_jwks(text: &str) -> Result<(), String> {
    parse_jwks(text).map(|_| ())
}

impl RequestAuthentication {
    /// Whether it governs requests to `workload`, given the mesh's root namespace.
    pub fn applies_to(&self, workload: &Workload, root_namespace: &str) -> bool {
        in_scope(
            &self.metadata,
            self.spec.selector.as_ref(),
            workload,
            root_namespace,
        )
    }
}

fn has_blank(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_rule(c: &mut Checker<'_>, f: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() {
        c.fail(format!("{f}.issuer"), "must not be empty");
    } else if has_blank(&rule.issuer) {
        c.fail(
            format!("{f}.issuer"),
            format!("{:?} must not contain whitespace", rule.issuer),
        );
    }
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() || has_blank(aud) {
            c.fail(
                format!("{f}.audiences[{i}]"),
                format!("{aud:?} must be non-empty, without whitespace"),
            );
        }
    }
    match (&rule.jwks, &rule.jwks_uri) {
        (None, None) => c.fail(
            f,
            "needs jwks (the issuer's JSON Web Key Set) or jwksUri (where it is published)",
        ),
        (Some(jwks), _) => {
            if let Err(problem) = parse_jwks(jwks) {
                c.fail(format!("{f}.jwks"), problem);
            }
        }
        (None, Some(_)) => {}
    }
    if let Some(uri) = &rule.jwks_uri {
        let host = uri.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || has_blank(uri) {
            c.fail(
                format!("{f}.jwksUri"),
                format!("{uri:?} must be an https:// URL"),
            );
        }
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        if !is_token(&header.name) {
            c.fail(
                format!("{f}.fromHeaders[{i}].name"),
                format!("{:?} is not a header name", header.name),
            );
        }
        if !header
            .prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            c.fail(
                format!("{f}.fromHeaders[{i}].prefix"),
                format!("{:?} must be visible ASCII and spaces", header.prefix),
            );
        }
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() || has_blank(param) || param.contains(['&', '=', '#']) {
            c.fail(
                format!("{f}.fromParams[{i}]"),
                format!("{param:?} is not a query parameter name"),
            );
        }
    }
    if let Some(header) = &rule.output_payload_to_header {
        check_output_header(c, &format!("{f}.outputPayloadToHeader"), header);
    }
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        let g = format!("{f}.outputClaimToHeaders[{i}]");
        check_output_header(c, &format!("{g}.header"), &output.header);
        if output.claim.is_empty() || has_blank(&output.claim) {
            c.fail(
                format!("{g}.claim"),
                format!("{:?} is not a claim name", output.claim),
            );
        }
    }
}

fn check_output_header(c: &mut Checker<'_>, field: &str, name: &str) {
    if !is_token(name) {
        c.fail(field, format!("{name:?} is not a header name"));
    } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        c.fail(
            field,
            format!("{name:?} is managed by the proxy or carries tokens; pick another header"),
        );
    }
}

impl Kind for RequestAuthentication {
    const KIND: &'static str = "RequestAuthentication";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        check_selector(c, "spec.selector", self.spec.selector.as_ref());
        let rules = &self.spec.jwt_rules;
        if rules.is_empty() {
            c.fail("spec.jwtRules", "needs at least one rule");
        }
        for (i, rule) in rules.iter().enumerate() {
            let f = format!("spec.jwtRules[{i}]");
            check_rule(c, &f, rule);
            if let Some(j) = rules[..i].iter().position(|r| r.issuer == rule.issuer) {
                c.fail(
                    format!("{f}.issuer"),
                    format!(
                        "{:?} already has a rule (spec.jwtRules[{j}]); one rule per issuer",
                        rule.issuer
                    ),
                );
            }
        }
    }
}
