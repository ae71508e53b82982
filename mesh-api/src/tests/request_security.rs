//! Request-level security through a snapshot: the new AuthorizationPolicy fields and
//! RequestAuthentication as `meshctl apply` validates them, the per-request decision, a real
//! token's claims in `when`, and which workloads need the per-request path at all.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::jwt_keys::{claims, claims_with, jwks, TestKey, ISSUER, NOW};
use super::{doc, load_err, snapshot};
use crate::fuzzing::FuzzRequest;
use crate::*;

const WORKLOADS: &str = "apiVersion: mesh/v1
kind: Workload
metadata: {name: web, namespace: prod}
spec: {uid: web, ips: [10.0.0.6], node: n1, serviceAccount: web, labels: {app: web}}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: db, namespace: prod}
spec: {uid: db, ips: [10.0.0.5], node: n1, serviceAccount: db, labels: {app: db}}
";

fn authz(name: &str, spec: &str) -> String {
    doc(
        "AuthorizationPolicy",
        &format!("{{name: {name}, namespace: prod}}"),
        spec,
    )
}

fn request_auth(name: &str, spec: &str) -> String {
    doc(
        "RequestAuthentication",
        &format!("{{name: {name}, namespace: prod}}"),
        spec,
    )
}

fn with_workloads(docs: &[String]) -> Snapshot {
    let mut text = WORKLOADS.to_owned();
    for d in docs {
        text.push_str("---\n");
        text.push_str(d);
    }
    snapshot(&text)
}

fn peer() -> Peer<'static> {
    Peer {
        principal: Some("spiffe://cluster.local/ns/prod/sa/frontend"),
        ip: "10.0.0.9".parse().unwrap(),
    }
}

/// The decision for request `text` to `web` port 8080, as `(allowed, deciding policy)`.
fn decide(snap: &Snapshot, text: &str, auth: Option<&jwt::Authenticated>) -> (bool, String) {
    let web = snap.workload("prod", "web").unwrap();
    let request = FuzzRequest::from_text(text);
    let http = HttpRequest {
        attributes: &request,
        host: "web.prod",
        auth,
    };
    let d = snap.authorize_request(web, &peer(), 8080, &http);
    let by = match d.reason {
        AuthzReason::Denied(p) | AuthzReason::Allowed(p) => p.metadata.name.clone(),
        AuthzReason::NoAllowMatched => "no allow matched".into(),
        AuthzReason::Default(_) => "default".into(),
    };
    (d.allowed, by)
}

#[test]
fn http_fields_are_checked_naming_the_field() {
    let text = authz(
        "p",
        r#"  action: ALLOW
  rules:
  - from: {requestPrincipals: ["alice", "https://i/*"]}
    to: {methods: ["", get], paths: ["/api/*/v1", "/a/./b", "api"], hosts: ["http://web"]}
    when:
    - {key: "request.auth.claims[groups]"}
    - {key: source.ip, values: ["10.0.0.0/33"]}
    - {key: destination.port, values: ["http"]}
"#,
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].from.requestPrincipals[0]: \"alice\" must be <issuer>/<subject> (the JWT's iss and sub), optionally with '*' at the start or end",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.hosts[0]: \"http://web\" must be a host, optionally with a port (no scheme or path)",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.methods[0]: must not be empty",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.methods[1]: \"get\": methods are case-sensitive; write \"GET\"",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.paths[0]: \"/api/*/v1\" may have one '*', only at the start or the end",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.paths[1]: \"/a/./b\" never matches: requests are matched by their normalised path; write \"/a/b\"",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].to.paths[2]: \"api\" must start with '/' (or be '*' or '*suffix')",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[0]: needs values or notValues",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[1].values[0]: \"10.0.0.0/33\": prefix length must be at most 32",
            "config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[2].values[0]: \"http\" is not a port number (1-65535)",
        ]
    );
}

#[test]
fn unknown_when_keys_and_bad_header_names_are_refused() {
    let with_key = |key: &str| {
        load_err(&authz(
            "p",
            &format!("  action: DENY\n  rules: [{{when: [{{key: \"{key}\", values: [x]}}]}}]\n"),
        ))
    };
    assert_eq!(
        with_key("request.method"),
        ["config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[0].key: unknown condition key \"request.method\"; known keys: request.headers[NAME], request.auth.claims[NAME], request.auth.principal, request.auth.audiences, request.auth.presenter, source.principal, source.namespace, source.ip, destination.port"]
    );
    assert_eq!(
        with_key("request.headers[x tenant]"),
        ["config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[0].key: \"request.headers[x tenant]\" must name one header: request.headers[NAME]"]
    );
    assert_eq!(
        with_key("request.headers[x/tenant]"),
        ["config.yaml: AuthorizationPolicy prod/p: spec.rules[0].when[0].key: \"request.headers[x/tenant]\": \"x/tenant\" is not a header name (letters, digits and !#$%&'*+-.^_`|~)"]
    );
}

#[test]
fn request_authentication_fields_are_checked_naming_the_field() {
    let text = request_auth(
        "jwt",
        &format!(
            r#"  selector: {{app: web}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{{"keys": [{{"kty": "oct", "k": "c2VjcmV0"}}]}}'
    fromHeaders: [{{name: "x token"}}, {{name: x-token, prefix: "Bearer\t"}}]
    fromParams: ["a=b"]
    outputPayloadToHeader: host
    outputClaimToHeaders: [{{header: "x:sub", claim: sub}}]
  - issuer: {ISSUER}
    jwksUri: http://issuer.example/keys
  - issuer: https://other.example
  - issuer: https://third.example
    jwks: '{{}}'
"#
        ),
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].jwks: keys[0].kty: \"oct\": symmetric keys are not accepted (HMAC tokens would need the secret on every node)",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].fromHeaders[0].name: \"x token\" is not a header name",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].fromHeaders[1].prefix: \"Bearer\\t\" must be visible ASCII and spaces",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].fromParams[0]: \"a=b\" is not a query parameter name",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].outputPayloadToHeader: \"host\" is managed by the proxy or carries tokens; pick another header",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].outputClaimToHeaders[0].header: \"x:sub\" is not a header name",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[1].jwksUri: \"http://issuer.example/keys\" must be an https:// URL",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[1].issuer: \"https://issuer.example\" already has a rule (spec.jwtRules[0]); one rule per issuer",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[2]: needs jwks (the issuer's JSON Web Key Set) or jwksUri (where it is published)",
            "config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[3].jwks: must be a JSON Web Key Set: {\"keys\": [...]}",
        ]
    );
    assert_eq!(
        load_err(&request_auth("jwt", "  jwtRules: []\n")),
        ["config.yaml: RequestAuthentication prod/jwt: spec.jwtRules: needs at least one rule"]
    );
    let unsupported = request_auth(
        "jwt",
        &format!(
            "  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n",
            json!({"keys": [{"kty": "RSA", "alg": "RS1", "n": "AQ", "e": "AQAB"}]})
        ),
    );
    assert_eq!(
        load_err(&unsupported),
        ["config.yaml: RequestAuthentication prod/jwt: spec.jwtRules[0].jwks: keys[0].alg: \"RS1\" is not supported; supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"]
    );
}

#[test]
fn request_authentication_is_a_kind_like_the_others() {
    let key = TestKey::ec(Algorithm::ES256, "k");
    let text = request_auth(
        "jwt",
        &format!(
            "  jwtRules:\n  - {{issuer: {ISSUER}, audiences: [web], jwks: '{}', fromHeaders: [{{name: authorization, prefix: \"Bearer \"}}], forwardOriginalToken: true}}\n",
            jwks(&[&key])
        ),
    );
    let resources = load_str("ra.yaml", &text).unwrap();
    let r = &resources[0];
    assert_eq!(r.kind(), "RequestAuthentication");
    assert_eq!(
        Resource::kind_named("requestauthentication"),
        Some("RequestAuthentication")
    );
    assert_eq!(r.storage_key(), "/mesh/v1/RequestAuthentication/prod/jwt");
    assert_eq!(
        ResourceKey::from_storage_key(&r.storage_key()),
        Some(r.resource_key())
    );
    assert_eq!(&Resource::from_json(r.to_json().as_bytes()).unwrap(), r);
    let yaml = serde_yaml_ng::to_string(r).unwrap();
    assert_eq!(&serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(), r);
    let snap = Snapshot::from_resources(resources.clone()).unwrap();
    assert_eq!(snap.resources(), resources);
    assert!(snap.request_authentication("prod", "jwt").is_some());
    assert_eq!(snap.request_authentications().len(), 1);
    // No cross-resource rules: a change is proved valid without the full check.
    let mut index = ConfigIndex::default();
    index.mark_validated(index.generation());
    assert_eq!(index.check(Change::Put(r)), Verdict::Valid);
    index.put(Arc::new(r.clone()));
    assert!(index.is_validated());
}

#[test]
fn deny_beats_allow_per_request() {
    let snap = with_workloads(&[
        authz(
            "readers",
            "  selector: {app: web}\n  action: ALLOW\n  rules: [{to: {methods: [GET], paths: [\"/api/*\"]}}]\n",
        ),
        authz(
            "no-admin",
            "  action: DENY\n  rules: [{to: {paths: [\"/api/admin*\"]}}]\n",
        ),
        authz(
            "audit-posts",
            "  action: AUDIT\n  rules: [{to: {methods: [POST]}}]\n",
        ),
    ]);
    assert_eq!(
        decide(&snap, "GET /api/users", None),
        (true, "readers".into())
    );
    assert_eq!(
        decide(&snap, "GET /api/admin/x", None),
        (false, "no-admin".into())
    );
    assert_eq!(
        decide(&snap, "GET /api/x/../admin", None),
        (false, "no-admin".into())
    );
    assert_eq!(
        decide(&snap, "POST /api/users", None),
        (false, "no allow matched".into())
    );
    let web = snap.workload("prod", "web").unwrap();
    let post = FuzzRequest::from_text("POST /api/users");
    let http = HttpRequest {
        attributes: &post,
        host: "web",
        auth: None,
    };
    let d = snap.authorize_request(web, &peer(), 8080, &http);
    assert_eq!(
        d.audit.map(|p| p.metadata.name.as_str()),
        Some("audit-posts")
    );
    // On a TCP port of the same workload: the ALLOW needs the request, so it never matches;
    // the DENY, judged without one, denies.
    let tcp = snap.authorize(web, &peer(), 5432);
    assert!(!tcp.allowed);
    assert!(matches!(tcp.reason, AuthzReason::Denied(p) if p.metadata.name == "no-admin"));
}

#[test]
fn a_verified_token_is_usable_in_policies() {
    let key = TestKey::rsa(Algorithm::PS256, "k");
    let snap = with_workloads(&[
        request_auth(
            "jwt",
            &format!(
                "  selector: {{app: web}}\n  jwtRules:\n  - issuer: {ISSUER}\n    audiences: [web]\n    jwks: '{}'\n",
                jwks(&[&key])
            ),
        ),
        authz(
            "admins",
            &format!(
                "  selector: {{app: web}}\n  action: ALLOW\n  rules:\n  - from: {{requestPrincipals: [\"{ISSUER}/*\"]}}\n    when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]\n"
            ),
        ),
    ]);
    let web = snap.workload("prod", "web").unwrap();
    let send = |token: &str| {
        let text = format!("GET /x\nauthorization: Bearer {token}");
        let request = FuzzRequest::from_text(&text);
        let auth = snap.authenticate_request(web, &request, NOW)?;
        Ok::<_, jwt::JwtError>(decide(&snap, &text, auth.as_ref()))
    };
    let admin = key.sign(&claims_with(json!({"groups": ["dev", "admins"]})));
    assert_eq!(send(&admin), Ok((true, "admins".into())));
    // Valid, but not in the group: 403, not 401.
    assert_eq!(
        send(&key.sign(&claims())),
        Ok((false, "no allow matched".into()))
    );
    // No token: unauthenticated, and the policy requires a request principal.
    assert_eq!(
        decide(&snap, "GET /x", None),
        (false, "no allow matched".into())
    );
    // Invalid tokens are refused before any policy (401).
    let expired = key.sign(&claims_with(
        json!({"exp": NOW - 3600, "groups": ["admins"]}),
    ));
    assert_eq!(send(&expired), Err(jwt::JwtError::Expired));
    // The workload the RequestAuthentication does not select ignores tokens.
    let db = snap.workload("prod", "db").unwrap();
    let text = format!("GET /\nauthorization: Bearer {expired}");
    let request = FuzzRequest::from_text(&text);
    assert!(snap
        .authenticate_request(db, &request, NOW)
        .unwrap()
        .is_none());
    assert!(snap.jwt_rules_for(db).is_empty());
}

#[test]
fn only_http_policies_and_jwt_rules_need_the_request_path() {
    let key = TestKey::ed25519("k");
    let l4_only = with_workloads(&[authz(
        "l4",
        "  action: ALLOW\n  rules: [{from: {namespaces: [prod]}, when: [{key: source.ip, values: [10.0.0.0/8]}]}]\n",
    )]);
    let web = l4_only.workload("prod", "web").unwrap();
    assert!(!l4_only.needs_request_security(web, 8080));

    let http_on_8080 = with_workloads(&[authz(
        "get-only",
        "  selector: {app: web}\n  action: ALLOW\n  rules: [{to: {ports: [8080], methods: [GET]}}]\n",
    )]);
    let web = http_on_8080.workload("prod", "web").unwrap();
    let db = http_on_8080.workload("prod", "db").unwrap();
    assert!(http_on_8080.needs_request_security(web, 8080));
    assert!(!http_on_8080.needs_request_security(web, 5432));
    assert!(!http_on_8080.needs_request_security(db, 8080));

    // A RequestAuthentication in the root namespace covers every workload, every port.
    let mesh_wide = snapshot(&format!(
        "{WORKLOADS}---\n{}",
        doc(
            "RequestAuthentication",
            "{name: jwt, namespace: mesh-system}",
            &format!(
                "  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n",
                jwks(&[&key])
            ),
        )
    ));
    for name in ["web", "db"] {
        let w = mesh_wide.workload("prod", name).unwrap();
        assert!(mesh_wide.needs_request_security(w, 1));
        assert_eq!(mesh_wide.request_authentications_for(w).len(), 1);
    }
}
