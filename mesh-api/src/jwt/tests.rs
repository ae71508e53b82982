//! JWT verification with real keys and real signatures: every supported algorithm, the
//! claims checks, and the tokens an attacker would try.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::jwks::parse_jwks;
use super::*;
use crate::fuzzing::FuzzRequest;
use crate::request_auth::JwtHeader;
use crate::tests::jwt_keys::{claims, claims_with, jwks, TestKey, ISSUER, NOW};

fn rule(keys: &[&TestKey]) -> JwtRule {
    JwtRule {
        issuer: ISSUER.to_owned(),
        audiences: vec!["web".to_owned()],
        jwks: Some(jwks(keys)),
        ..JwtRule::default()
    }
}

/// Authenticates a request carrying `token` as `Authorization: Bearer`.
fn bearer(rules: &JwtRules, token: &str) -> Result<Option<Authenticated>, JwtError> {
    let text = format!("GET /\nauthorization: Bearer {token}");
    rules.authenticate(&FuzzRequest::from_text(&text), NOW)
}

fn check(rule: &JwtRule, token: &str) -> Result<String, JwtError> {
    bearer(&JwtRules::new([rule]), token).map(|a| a.expect("a token").principal().to_owned())
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

#[test]
fn every_supported_algorithm_verifies() {
    use Algorithm::*;
    let keys = [
        TestKey::rsa(RS256, "rs256"),
        TestKey::rsa(RS384, "rs384"),
        TestKey::rsa(RS512, "rs512"),
        TestKey::rsa(PS256, "ps256"),
        TestKey::ec(ES256, "es256"),
        TestKey::ec(ES384, "es384"),
        TestKey::ed25519("ed"),
    ];
    let rules = JwtRules::new([&rule(&keys.iter().collect::<Vec<_>>())]);
    for key in &keys {
        let auth = bearer(&rules, &key.sign(&claims()))
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.alg))
            .expect("authenticated");
        assert_eq!(auth.principal(), "https://issuer.example/alice");
        assert_eq!(auth.issuer(), ISSUER);
        assert_eq!(auth.claims()["aud"], "web");
    }
}

#[test]
fn exp_and_nbf_allow_a_minute_of_skew() {
    let key = TestKey::ec(Algorithm::ES256, "k");
    let r = rule(&[&key]);
    let with = |changes: Value| check(&r, &key.sign(&claims_with(changes)));
    assert!(with(json!({"exp": NOW - 59})).is_ok());
    assert_eq!(with(json!({"exp": NOW - 61})), Err(JwtError::Expired));
    assert!(with(json!({"nbf": NOW + 59})).is_ok());
    assert_eq!(with(json!({"nbf": NOW + 61})), Err(JwtError::NotYetValid));
    assert_eq!(with(json!({"exp": null})), Err(JwtError::MissingExpiry));
    // A time of the wrong JSON type is refused, never skipped.
    assert!(matches!(
        with(json!({"exp": "99999999999"})),
        Err(JwtError::Malformed(_))
    ));
    assert!(matches!(
        with(json!({"nbf": "99999999999"})),
        Err(JwtError::Malformed(_))
    ));
    assert!(with(json!({"exp": (NOW + 10) as f64 + 0.5})).is_ok());
}

/// A token verified once is not verified again by the same rules, yet its time claims are
/// checked on every use, and only those exact bytes are remembered.
#[test]
fn a_verified_token_is_remembered_but_still_expires() {
    let key = TestKey::ec(Algorithm::ES256, "k");
    let rules = JwtRules::new([&rule(&[&key])]);
    let token = key.sign(&claims_with(json!({"exp": NOW + 30})));
    assert!(bearer(&rules, &token).unwrap().is_some());
    assert!(rules.rules[0].verified.contains_for_test(&token));
    // Later than exp + skew: refused although its signature is remembered.
    let text = format!("GET /\nauthorization: Bearer {token}");
    let later = FuzzRequest::from_text(&text);
    assert_eq!(
        rules.authenticate(&later, NOW + 30 + 61).unwrap_err(),
        JwtError::Expired
    );
    // Another signature on the same header and payload is checked, not taken from memory.
    let (signed, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    assert_eq!(bearer(&rules, &forged).unwrap_err(), JwtError::BadSignature);
    // New keys (a new config) start with nothing remembered.
    let fresh = JwtRules::new([&rule(&[&key])]);
    assert!(!fresh.rules[0].verified.contains_for_test(&token));
}

#[test]
fn issuer_audience_and_subject() {
    let key = TestKey::ed25519("k");
    let r = rule(&[&key]);
    let with = |changes: Value| check(&r, &key.sign(&claims_with(changes)));
    assert_eq!(
        with(json!({"iss": "https://evil.example"})),
        Err(JwtError::UnknownIssuer)
    );
    assert!(matches!(
        with(json!({"iss": null})),
        Err(JwtError::Malformed(_))
    ));
    assert!(matches!(
        with(json!({"iss": 7})),
        Err(JwtError::Malformed(_))
    ));
    assert_eq!(with(json!({"aud": "api"})), Err(JwtError::BadAudience));
    assert_eq!(with(json!({"aud": null})), Err(JwtError::BadAudience));
    assert_eq!(
        with(json!({"aud": ["api", "web"]})),
        Ok(format!("{ISSUER}/alice"))
    );
    assert_eq!(with(json!({"aud": ["api"]})), Err(JwtError::BadAudience));
    assert_eq!(with(json!({"sub": null})), Ok(format!("{ISSUER}/")));
    assert!(matches!(
        with(json!({"sub": 5})),
        Err(JwtError::Malformed(_))
    ));
    // Without audiences configured, `aud` is not checked.
    let any_aud = JwtRule {
        audiences: Vec::new(),
        ..r.clone()
    };
    assert!(check(&any_aud, &key.sign(&claims_with(json!({"aud": "api"})))).is_ok());
}

#[test]
fn keys_are_chosen_by_kid_and_algorithm() {
    let good = TestKey::ec(Algorithm::ES256, "k1");
    let other = TestKey::ec(Algorithm::ES256, "k1");
    let r = rule(&[&good]);
    // Same kid, another key: the signature does not verify.
    assert_eq!(
        check(&r, &other.sign(&claims())),
        Err(JwtError::BadSignature)
    );
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k2".into());
    assert_eq!(
        check(&r, &good.sign_with(&header, &claims())),
        Err(JwtError::UnknownKeyId)
    );
    // No kid: every key of the algorithm is tried.
    let two = rule(&[&other, &good]);
    let no_kid = good.sign_with(&Header::new(Algorithm::ES256), &claims());
    assert!(check(&two, &no_kid).is_ok());
    assert_eq!(
        check(&rule(&[&other]), &no_kid),
        Err(JwtError::BadSignature)
    );
    // No key of that algorithm at all.
    let ed = TestKey::ed25519("k1");
    assert_eq!(
        check(&rule(&[&ed]), &no_kid),
        Err(JwtError::NoKeyForAlgorithm)
    );
    // A JWK pinned to RS256 does not check a PS256 token made with the same key.
    let rs = TestKey::rsa(Algorithm::RS256, "rsa");
    let mut pinned = rs.jwk.clone();
    pinned["alg"] = json!("RS256");
    let pinned_rule = JwtRule {
        jwks: Some(json!({"keys": [pinned]}).to_string()),
        ..rule(&[])
    };
    let ps = TestKey::rsa(Algorithm::PS256, "rsa");
    assert!(check(&pinned_rule, &rs.sign(&claims())).is_ok());
    assert_eq!(
        check(&pinned_rule, &ps.sign(&claims())),
        Err(JwtError::NoKeyForAlgorithm)
    );
}

#[test]
fn hostile_tokens_are_refused() {
    let key = TestKey::rsa(Algorithm::RS256, "k");
    let r = rule(&[&key]);
    let payload = b64(&claims());
    // Unsigned.
    let none = format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    assert_eq!(check(&r, &none), Err(JwtError::Unsigned));
    // HMAC keyed with the issuer's public key (the classic algorithm confusion).
    let n = URL_SAFE_NO_PAD
        .decode(key.jwk["n"].as_str().unwrap())
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k".into());
    let hmac = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&n)).unwrap();
    assert_eq!(check(&r, &hmac), Err(JwtError::Hmac));
    // A key the token brings along (header `jwk`) is ignored.
    let issuer_key = TestKey::ec(Algorithm::ES256, "k");
    let attacker = TestKey::ec(Algorithm::ES256, "k");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k".into());
    header.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
    assert_eq!(
        check(
            &rule(&[&issuer_key]),
            &attacker.sign_with(&header, &claims())
        ),
        Err(JwtError::BadSignature)
    );
    // An EC token for an issuer with only an RSA key.
    assert_eq!(
        check(&r, &attacker.sign(&claims())),
        Err(JwtError::NoKeyForAlgorithm)
    );
    // Types other than JWT.
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JOSE+JSON".into());
    assert_eq!(
        check(&r, &key.sign_with(&header, &claims())),
        Err(JwtError::WrongType)
    );
    header.typ = Some("at+JWT".into());
    assert!(check(&r, &key.sign_with(&header, &claims())).is_ok());
    // Size, shape and encoding.
    let valid = key.sign(&claims());
    let huge = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(check(&r, &huge), Err(JwtError::TooLarge));
    let (h, rest) = valid.split_once('.').unwrap();
    for bad in [
        format!("{h}.{rest}.x.y"),
        format!("!!.{rest}"),
        format!("{h}.%%%.{}", rest.split_once('.').unwrap().1),
        format!("{h}.{}.{}", b64(&json!(["not", "an", "object"])), "sig"),
        format!("{}.{rest}", b64(&json!({"alg": "RS256", "crit": ["b64"]}))),
        format!("{}.{rest}", b64(&json!({"typ": "JWT"}))),
        format!("{}.{rest}", b64(&json!({"alg": 256}))),
        "a.b".to_owned(),
    ] {
        assert!(
            matches!(check(&r, &bad), Err(JwtError::Malformed(_))),
            "{bad}: {:?}",
            check(&r, &bad)
        );
    }
    assert_eq!(
        check(&r, &format!("{}.{rest}", b64(&json!({"alg": "ES512"})))),
        Err(JwtError::UnsupportedAlgorithm)
    );
    // A changed payload or a mangled signature.
    let (signed, signature) = valid.rsplit_once('.').unwrap();
    let (header64, _) = signed.split_once('.').unwrap();
    let tampered = format!(
        "{header64}.{}.{signature}",
        b64(&claims_with(json!({"sub": "admin"})))
    );
    assert_eq!(check(&r, &tampered), Err(JwtError::BadSignature));
    assert_eq!(
        check(&r, &format!("{signed}.{signature}==")),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        check(&r, &format!("{signed}.")),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn tokens_are_found_where_the_rules_say() {
    let key = TestKey::ed25519("k");
    let token = key.sign(&claims());
    let default = JwtRules::new([&rule(&[&key])]);
    let auth =
        |rules: &JwtRules, text: &str| rules.authenticate(&FuzzRequest::from_text(text), NOW);
    let found = auth(&default, &format!("GET /\nAuthorization: bearer {token}"))
        .unwrap()
        .unwrap();
    assert_eq!(
        found.locations(),
        [TokenLocation::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into()
        }]
    );
    // Another scheme, or no header: no token, not an error.
    assert!(auth(&default, "GET /\nauthorization: Basic YTpi")
        .unwrap()
        .is_none());
    assert!(auth(&default, "GET /").unwrap().is_none());
    // HTTP strips trailing blanks: `Bearer ` arrives as `Bearer`, a scheme without a token.
    assert!(auth(&default, "GET /\nauthorization: Bearer ")
        .unwrap()
        .is_none());
    // Query parameters are not looked at unless configured.
    assert!(auth(&default, &format!("GET /?access_token={token}"))
        .unwrap()
        .is_none());
    let custom = JwtRules::new([&JwtRule {
        from_headers: vec![JwtHeader {
            name: "X-Token".into(),
            prefix: String::new(),
        }],
        from_params: vec!["access_token".into()],
        ..rule(&[&key])
    }]);
    assert!(auth(&custom, &format!("GET /\nx-token: {token}"))
        .unwrap()
        .is_some());
    assert!(matches!(
        auth(&custom, "GET /\nx-token: "),
        Err(JwtError::Malformed("the token is empty"))
    ));
    let by_param = auth(&custom, &format!("GET /a?x=1&access_token={token}"))
        .unwrap()
        .unwrap();
    assert_eq!(
        by_param.locations(),
        [TokenLocation::Param("access_token".into())]
    );
    assert!(
        auth(&custom, &format!("GET /\nauthorization: Bearer {token}"))
            .unwrap()
            .is_none()
    );
    // The same token twice is one token; two different ones are refused.
    assert_eq!(
        auth(
            &custom,
            &format!("GET /?access_token={token}\nx-token: {token}")
        )
        .unwrap()
        .unwrap()
        .locations()
        .len(),
        2
    );
    let other = key.sign(&claims_with(json!({"sub": "bob"})));
    assert_eq!(
        auth(
            &custom,
            &format!("GET /?access_token={other}\nx-token: {token}")
        )
        .unwrap_err(),
        JwtError::MultipleTokens
    );
}

#[test]
fn the_rules_of_the_tokens_issuer_decide() {
    let a = TestKey::ec(Algorithm::ES384, "a");
    let b = TestKey::ec(Algorithm::ES384, "b");
    let other_issuer = JwtRule {
        issuer: "https://other.example".into(),
        ..rule(&[&b])
    };
    // Two rules for one issuer (say from two RequestAuthentications): either may verify.
    let rules = JwtRules::new([&rule(&[&b]), &other_issuer, &rule(&[&a])]);
    assert!(bearer(&rules, &a.sign(&claims())).unwrap().is_some());
    let by_other = b.sign(&claims_with(json!({"iss": "https://other.example"})));
    assert_eq!(
        bearer(&rules, &by_other).unwrap().unwrap().principal(),
        "https://other.example/alice"
    );
    // A rule whose keys are still to be fetched (jwksUri) refuses its issuer's tokens.
    let unfetched = JwtRule {
        jwks: None,
        jwks_uri: Some("https://issuer.example/jwks".into()),
        ..rule(&[])
    };
    assert_eq!(
        check(&unfetched, &a.sign(&claims())),
        Err(JwtError::KeysUnavailable)
    );
    assert!(JwtRules::default().is_empty());
    assert!(bearer(&JwtRules::default(), &a.sign(&claims()))
        .unwrap()
        .is_none());
}

#[test]
fn outputs_for_the_app() {
    let key = TestKey::ed25519("k");
    let r = JwtRule {
        output_payload_to_header: Some("X-JWT-Payload".into()),
        output_claim_to_headers: [
            ("x-sub", "sub"),
            ("x-groups", "groups"),
            ("x-level", "org.level"),
            ("x-bad", "bad"),
            ("x-object", "org"),
            ("x-missing", "nope"),
        ]
        .iter()
        .map(|(header, claim)| crate::request_auth::ClaimToHeader {
            header: header.to_string(),
            claim: claim.to_string(),
        })
        .collect(),
        ..rule(&[&key])
    };
    let rules = JwtRules::new([&r]);
    let claims = claims_with(json!({
        "groups": ["dev", "ops"], "org": {"level": 3}, "bad": "a\r\nx-admin: 1"
    }));
    let token = key.sign(&claims);
    let auth = bearer(&rules, &token).unwrap().unwrap();
    let payload = token.split('.').nth(1).unwrap().to_owned();
    assert_eq!(
        auth.output_headers(),
        [
            ("x-jwt-payload".to_owned(), payload),
            ("x-sub".to_owned(), "alice".to_owned()),
            ("x-groups".to_owned(), "dev,ops".to_owned()),
            ("x-level".to_owned(), "3".to_owned()),
        ]
    );
    assert!(!auth.forward_original_token());
    assert_eq!(
        rules.output_header_names(),
        [
            "x-bad",
            "x-groups",
            "x-jwt-payload",
            "x-level",
            "x-missing",
            "x-object",
            "x-sub"
        ]
    );
}

#[test]
fn errors_read_as_a_www_authenticate_header() {
    assert_eq!(
        JwtError::Expired.www_authenticate(),
        "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
    );
    for e in [
        JwtError::TooLarge,
        JwtError::Malformed("x"),
        JwtError::UnknownKeyId,
    ] {
        let text = e.www_authenticate();
        assert!(
            text.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{text}"
        );
        assert_eq!(text.matches('"').count(), 4, "{text}");
    }
}

#[test]
fn key_sets_are_read_strictly() {
    let rsa = TestKey::rsa(Algorithm::RS256, "r");
    let ec = TestKey::ec(Algorithm::ES384, "e");
    let ed = TestKey::ed25519("d");
    assert_eq!(parse_jwks(&jwks(&[&rsa, &ec, &ed])).unwrap().len(), 3);
    let with = |change: &dyn Fn(&mut Value), base: &TestKey| {
        let mut jwk = base.jwk.clone();
        change(&mut jwk);
        parse_jwks(&json!({"keys": [jwk]}).to_string()).unwrap_err()
    };
    let msg = |change: &dyn Fn(&mut Value), base| with(change, base);
    assert_eq!(
        msg(&|k| k["d"] = json!("AAAA"), &ec),
        "keys[0].d: the key set holds private key material; publish only public keys"
    );
    assert!(msg(&|k| k["kty"] = json!("oct"), &ec).contains("symmetric keys"));
    assert!(msg(&|k| k["crv"] = json!("P-521"), &ec).contains("not supported"));
    assert!(msg(&|k| k["crv"] = json!("X25519"), &ed).contains("not supported"));
    assert!(msg(&|k| k["use"] = json!("enc"), &ed).contains("signature keys"));
    assert!(msg(&|k| k["alg"] = json!("HS256"), &rsa).contains("not supported"));
    assert_eq!(
        msg(&|k| k["alg"] = json!("ES256"), &ec),
        "keys[0].alg: ES256 does not fit a P-384 key"
    );
    assert!(msg(&|k| k["x"] = json!("AAAA"), &ec).contains("48 bytes"));
    assert!(msg(&|k| k["x"] = json!("AAAA"), &ed).contains("32 bytes"));
    assert!(msg(&|k| k["x"] = json!("not base64!"), &ed).contains("not base64url"));
    // Coordinates of the right size that are no point of the curve.
    let off_curve = URL_SAFE_NO_PAD.encode([7u8; 48]);
    assert!(msg(&|k| k["y"] = json!(off_curve.clone()), &ec).contains("valid point"));
    let short_modulus = URL_SAFE_NO_PAD.encode([0xff; 128]);
    assert!(msg(&|k| k["n"] = json!(short_modulus.clone()), &rsa).contains("1024 bits"));
    assert!(msg(&|k| k["e"] = json!("AQ"), &rsa).contains("exponent"));
    assert!(msg(&|k| k["kid"] = json!(5), &rsa).contains("must be a string"));
    assert!(msg(&|k| drop(k.as_object_mut().unwrap().remove("n")), &rsa).contains("n: missing"));
    for bad in ["", "[]", "{}", r#"{"keys": []}"#, r#"{"keys": [1]}"#] {
        assert!(parse_jwks(bad).is_err(), "{bad}");
    }
    let many = json!({"keys": vec![ed.jwk.clone(); MAX_JWKS_KEYS + 1]}).to_string();
    assert!(parse_jwks(&many).unwrap_err().contains("at most 32"));
    let huge = format!(
        "{{\"keys\": [], \"x\": \"{}\"}}",
        "a".repeat(MAX_JWKS_BYTES)
    );
    assert!(parse_jwks(&huge).unwrap_err().contains("at most"));
}
