//! RequestAuthentication end to end: tokens signed by a real issuer key (EC and RSA), checked
//! by the destination's agent on the same-node and the plaintext path.

use mesh_tests::jwt::{
    claims, corrupt_signature, hmac_with_public_key, malformed, merged, now, unsigned, SigningKey,
};
use mesh_tests::{require_root, wait_until};
use serde_json::{json, Value};

use super::support::*;

/// Valid tokens (ES256 and RS256) give the request its principal and claims: policies match
/// `requestPrincipals` (`<iss>/*` and an exact `<iss>/<sub>`), a list claim by any element
/// and a nested claim by its dotted path; tokens whose principal or claims do not match are
/// refused with 403. A request without a token is refused (403) only where a policy
/// requires a request principal and allowed (200) where none does.
#[test]
fn valid_tokens_are_accepted_and_their_claims_usable_in_when() {
    require_root();
    let issuer = Issuer::generate();
    let rules = format!(
        "  - from: {{requestPrincipals: [\"{ISSUER}/*\"]}}\n    to: {{paths: [\"/admin/*\"]}}\n    when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]\n  - from: {{requestPrincipals: [\"*\"]}}\n    to: {{paths: [\"/team/*\"]}}\n    when: [{{key: \"request.auth.claims[org.team]\", values: [payments]}}]\n  - from: {{requestPrincipals: [\"{ISSUER}/alice\"]}}\n    to: {{paths: [\"/alice/*\"]}}\n  - to: {{paths: [\"/public/*\"]}}\n"
    );
    let bed = Bed::new(
        &(issuer.request_authentication("web-jwt", "") + &web_policy("web-users", "ALLOW", &rules)),
    );

    let admin = issuer.token("alice", &json!({"groups": ["dev", "admins"]}));
    let admin_rsa = issuer.rsa.sign(&merged(
        &claims(ISSUER, "alice", AUDIENCE),
        &json!({"groups": ["admins"]}),
    ));
    let dev = issuer.token("bob", &json!({"groups": ["dev"]}));
    let payments = issuer.token("carol", &json!({"org": {"team": "payments"}}));
    let sales = issuer.token("dave", &json!({"org": {"team": "sales"}}));
    // (path, token, allowed)
    let cases: [(&str, Option<&str>, bool); 11] = [
        ("/admin/a", Some(&admin), true),
        ("/admin/a", Some(&admin_rsa), true),
        ("/admin/a", Some(&dev), false),
        ("/admin/a", None, false),
        ("/team/a", Some(&payments), true),
        ("/team/a", Some(&sales), false),
        ("/alice/a", Some(&admin), true),
        ("/alice/a", Some(&dev), false),
        ("/alice/a", None, false),
        ("/public/a", None, true),
        ("/public/a", Some(&dev), true),
    ];
    for (i, (path, token, allowed)) in cases.into_iter().enumerate() {
        let header = token.map(bearer);
        let extra: Vec<&str> = header.iter().flat_map(|h| ["-H", h.as_str()]).collect();
        for (way, r) in bed.every_way("GET", path, &extra) {
            let what = format!("case {i}: GET {path} ({way})");
            if allowed {
                assert_served(&r, &what);
            } else {
                assert_rbac_denied(&r, &what);
            }
        }
    }
    assert_eq!(served_on(&bed.web, "/admin/a"), 2 * WAYS);
    assert_eq!(served_on(&bed.web, "/team/a"), WAYS);
    assert_eq!(served_on(&bed.web, "/alice/a"), WAYS);
    assert_eq!(served_on(&bed.web, "/public/a"), 2 * WAYS);
}

/// With a RequestAuthentication and no policy: requests without a token and with a valid one
/// are served; every kind of invalid token is refused with 401, `WWW-Authenticate: Bearer
/// error="invalid_token"` naming what was wrong and flag `JWT`, before the app sees it, and
/// logged with flag `JWT`.
#[test]
fn invalid_tokens_are_refused_with_401_and_a_missing_one_is_not() {
    require_root();
    let issuer = Issuer::generate();
    let bed = Bed::new(&issuer.request_authentication("web-jwt", ""));
    let valid = claims(ISSUER, "alice", AUDIENCE);
    let key = &issuer.ec;
    let header = |typ: &str, kid: &str| json!({"alg": "ES256", "kid": kid, "typ": typ});
    // Same kid as the published EC key, another private key.
    let impostor = SigningKey::es256("ec-1");
    let other_token = issuer.token("bob", &json!({}));
    let good = key.sign(&valid);
    let with = |changes: Value| key.sign(&merged(&valid, &changes));
    // (what, token headers, expected part of error_description)
    let tokens: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "expired",
            vec![bearer(&with(json!({"exp": now() - 3600})))],
            "expired",
        ),
        (
            "not yet valid",
            vec![bearer(&with(json!({"nbf": now() + 3600})))],
            "not valid yet",
        ),
        (
            "wrong issuer",
            vec![bearer(&with(json!({"iss": "https://other.example"})))],
            "issuer",
        ),
        (
            "wrong audience",
            vec![bearer(&with(json!({"aud": "other"})))],
            "audience",
        ),
        (
            "bad signature",
            vec![bearer(&corrupt_signature(&good))],
            "signature",
        ),
        (
            "unpublished key",
            vec![bearer(&impostor.sign(&valid))],
            "signature",
        ),
        ("alg none", vec![bearer(&unsigned(&valid))], "alg none"),
        (
            "HMAC with the public key",
            vec![bearer(&hmac_with_public_key(key, &valid))],
            "HMAC",
        ),
        (
            "unknown kid",
            vec![bearer(
                &key.sign_with_header(&header("JWT", "ec-9"), &valid),
            )],
            "kid",
        ),
        (
            "wrong typ",
            vec![bearer(
                &key.sign_with_header(&header("secevent+jwt", "ec-1"), &valid),
            )],
            "typ",
        ),
        ("malformed", vec![bearer(&malformed())], "malformed"),
        ("oversized", vec![bearer(&"a".repeat(9000))], "longer"),
        (
            "two tokens",
            vec![bearer(&good), bearer(&other_token)],
            "more than one",
        ),
        ("the header twice", vec![bearer(&good), bearer(&good)], ""),
    ];
    for (what, headers, description) in &tokens {
        let extra: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
        for (way, r) in bed.every_way("GET", "/jwt", &extra) {
            let said = assert_jwt_refused(&r, &format!("{what} ({way})"));
            assert!(said.contains(description), "{what} ({way}): {said:?}");
        }
    }
    assert_eq!(
        served_on(&bed.web, "/jwt"),
        0,
        "the app saw a refused request"
    );

    for (way, r) in bed.every_way("GET", "/jwt", &[]) {
        assert_served(&r, &format!("no token ({way})"));
    }
    for (way, r) in bed.every_way("GET", "/jwt", &["-H", &bearer(&good)]) {
        assert_served(&r, &format!("valid token ({way})"));
    }
    assert_eq!(served_on(&bed.web, "/jwt"), 2 * WAYS);

    let refused = WAYS as usize * tokens.len();
    let jwt_lines = || {
        bed.access_log()
            .into_iter()
            .filter(|l| l["response_flags"] == "JWT")
            .collect::<Vec<_>>()
    };
    wait_until(T, || jwt_lines().len() >= refused);
    let lines = jwt_lines();
    assert_eq!(
        lines.len(),
        refused,
        "one line per refused request: {lines:#?}"
    );
    for line in &lines {
        assert_eq!(
            (&line["response_code"], &line["path"]),
            (&json!(401), &json!("/jwt")),
            "{line}"
        );
    }
}

/// What the app's `/headers` saw of one request.
fn seen_by_app(r: &Shown, what: &str) -> Value {
    assert_served(r, what);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: /headers JSON ({e}): {r:?}"))
}

/// By default the verified token is removed before the request reaches the app, which gets
/// the payload (`outputPayloadToHeader`) and claims (`outputClaimToHeaders`, a list claim
/// comma-separated) instead; copies of those headers sent by the client are removed, with
/// or without a token. With `forwardOriginalToken: true` the app gets the token as sent.
#[test]
fn tokens_reach_the_app_only_as_configured() {
    require_root();
    let issuer = Issuer::generate();
    let outputs = "      outputPayloadToHeader: x-jwt-payload\n      outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}, {header: x-jwt-groups, claim: groups}]\n";
    let mut bed = Bed::new(&issuer.request_authentication("web-jwt", outputs));
    let token = issuer.token("alice", &json!({"groups": ["dev", "admins"]}));
    let payload = token.split('.').nth(1).unwrap();
    let auth = bearer(&token);
    let forged = [
        "-H",
        "x-jwt-sub: mallory",
        "-H",
        "x-jwt-payload: forged",
        "-H",
        "x-jwt-groups: admins",
    ];

    for (way, r) in bed.every_way("GET", "/headers", &["-H", &auth]) {
        let seen = seen_by_app(&r, way);
        assert_eq!(
            seen.get("authorization"),
            None,
            "{way}: token forwarded: {seen}"
        );
        assert_eq!(seen["x-jwt-payload"], payload, "{way}: {seen}");
        assert_eq!(seen["x-jwt-sub"], "alice", "{way}: {seen}");
        assert_eq!(seen["x-jwt-groups"], "dev,admins", "{way}: {seen}");
    }
    let with_forged = [&["-H", auth.as_str()][..], &forged].concat();
    for (way, r) in bed.every_way("GET", "/headers", &with_forged) {
        let seen = seen_by_app(&r, way);
        assert_eq!(seen["x-jwt-payload"], payload, "{way}: {seen}");
        assert_eq!(seen["x-jwt-sub"], "alice", "{way}: {seen}");
        assert_eq!(seen["x-jwt-groups"], "dev,admins", "{way}: {seen}");
    }
    for (way, r) in bed.every_way("GET", "/headers", &forged) {
        let seen = seen_by_app(&r, way);
        for name in ["x-jwt-payload", "x-jwt-sub", "x-jwt-groups"] {
            assert_eq!(
                seen.get(name),
                None,
                "{way}: the client's {name} reached the app: {seen}"
            );
        }
    }

    bed.set_policies(
        &issuer.request_authentication("web-jwt", "      forwardOriginalToken: true\n"),
    );
    for (way, r) in bed.every_way("GET", "/headers", &["-H", &auth]) {
        let seen = seen_by_app(&r, way);
        assert_eq!(
            seen["authorization"],
            auth["authorization: ".len()..],
            "{way}: {seen}"
        );
    }
}
