//! Rule matching: connection fields, request fields, `when` conditions, and what rules that
//! need the request mean on a connection without one.

use serde_json::json;

use super::*;
use crate::fuzzing::FuzzRequest;
use crate::jwt::Authenticated;
use crate::resource::Resource;

fn peer(principal: Option<&'static str>, ip: &str) -> Peer<'static> {
    Peer {
        principal,
        ip: ip.parse().unwrap(),
    }
}

const FRONTEND: Option<&str> = Some("spiffe://td/ns/default/sa/frontend");

/// A policy with `action` and one rule, written as YAML (a flow mapping).
fn policy(action: &str, rule: &str) -> AuthorizationPolicy {
    let text = format!(
        "apiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: {action}\n  rules: [{rule}]\n"
    );
    match crate::load_str("p.yaml", &text).unwrap().remove(0) {
        Resource::AuthorizationPolicy(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Whether `p` matches the request `text` (see [`FuzzRequest`]) sent to `host`, from
/// `peer` to port 8080.
fn on_request(p: &AuthorizationPolicy, peer: &Peer<'_>, text: &str, host: &str) -> bool {
    on_request_as(p, peer, text, host, None)
}

fn on_request_as(
    p: &AuthorizationPolicy,
    peer: &Peer<'_>,
    text: &str,
    host: &str,
    auth: Option<&Authenticated>,
) -> bool {
    let request = FuzzRequest::from_text(text);
    let http = HttpRequest {
        attributes: &request,
        host,
        auth,
    };
    p.matches_request(peer, 8080, Some(&http))
}

#[test]
fn peer_namespace_comes_from_the_spiffe_id() {
    let ns = |p: &'static str| peer(Some(p), "10.0.0.1").namespace();
    assert_eq!(
        ns("spiffe://cluster.local/ns/default/sa/web"),
        Some("default")
    );
    assert_eq!(ns("spiffe://cluster.local/ns//sa/web"), None);
    assert_eq!(ns("spiffe://cluster.local/ns/a/sa/web/extra"), None);
    assert_eq!(ns("spiffe://cluster.local/x/a/sa/web"), None);
    assert_eq!(ns("https://cluster.local/ns/a/sa/web"), None);
    assert_eq!(peer(None, "10.0.0.1").namespace(), None);
}

#[test]
fn source_lists_and_across_kinds_or_within() {
    let p = policy(
        "ALLOW",
        r#"{from: {principals: ["spiffe://td/ns/default/sa/frontend", "spiffe://td/ns/admin/*"],
            ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16]}}"#,
    );
    assert!(p.matches(&peer(FRONTEND, "10.1.0.1"), 1));
    assert!(p.matches(&peer(Some("spiffe://td/ns/admin/sa/ops"), "10.1.0.1"), 1));
    assert!(!p.matches(
        &peer(Some("spiffe://td/ns/default/sa/other"), "10.1.0.1"),
        1
    ));
    assert!(!p.matches(&peer(FRONTEND, "11.0.0.1"), 1));
    assert!(!p.matches(&peer(FRONTEND, "10.9.0.1"), 1));
    assert!(!p.matches(&peer(None, "10.1.0.1"), 1));
    assert!(policy("ALLOW", "{}").matches(&peer(None, "10.1.0.1"), 1));
}

#[test]
fn plaintext_peers_satisfy_negative_identity_lists() {
    let not_any = policy("DENY", r#"{from: {notPrincipals: ["*"]}}"#);
    assert!(not_any.matches(&peer(None, "10.0.0.1"), 1));
    assert!(!not_any.matches(&peer(Some("spiffe://td/ns/a/sa/b"), "10.0.0.1"), 1));
    let ns = policy(
        "ALLOW",
        r#"{from: {namespaces: ["prod-*"], notNamespaces: [prod-eu]}}"#,
    );
    assert!(ns.matches(&peer(Some("spiffe://td/ns/prod-us/sa/b"), "10.0.0.1"), 1));
    assert!(!ns.matches(&peer(Some("spiffe://td/ns/prod-eu/sa/b"), "10.0.0.1"), 1));
    assert!(!ns.matches(&peer(None, "10.0.0.1"), 1));
}

#[test]
fn rules_need_from_and_to() {
    let p = policy(
        "ALLOW",
        "{from: {namespaces: [default]}, to: {ports: [8080]}}",
    );
    let frontend = peer(FRONTEND, "10.0.0.1");
    assert!(p.matches(&frontend, 8080));
    assert!(!p.matches(&frontend, 9090));
}

#[test]
fn methods_paths_and_hosts() {
    let p = policy(
        "ALLOW",
        r#"{to: {methods: [GET, HEAD], paths: ["/api/*", "/health", "*.png"], hosts: ["web.default"]}}"#,
    );
    let anyone = peer(None, "10.0.0.1");
    let req = |text: &str, host: &str| on_request(&p, &anyone, text, host);
    assert!(req("GET /api/v1/users?x=1", "web.default"));
    assert!(req("HEAD /health", "WEB.default:8080"));
    assert!(req("GET /img/a.png", "web.default"));
    assert!(!req("POST /api/v1", "web.default"));
    assert!(!req("get /api/v1", "web.default"));
    assert!(!req("GET /healthz", "web.default"));
    assert!(!req("GET /api", "web.default"));
    assert!(!req("GET /api/v1", "other.default"));
    // The normalised path is matched: no spelling gets around it.
    assert!(req("GET /img/../api/v1", "web.default"));
    let deny = policy("DENY", r#"{to: {paths: ["/admin*"]}}"#);
    for spelling in ["/admin", "//admin/x", "/a/../admin", "/%61dmin", "/./admin"] {
        assert!(
            on_request(&deny, &anyone, &format!("GET {spelling}"), "w"),
            "{spelling}"
        );
    }
    assert!(!on_request(&deny, &anyone, "GET /public", "w"));
}

#[test]
fn negative_request_lists() {
    let p = policy(
        "DENY",
        r#"{to: {notMethods: [GET], notPaths: ["/public/*"], notHosts: ["*.internal"]}}"#,
    );
    let anyone = peer(None, "10.0.0.1");
    assert!(on_request(&p, &anyone, "POST /private", "web"));
    assert!(!on_request(&p, &anyone, "GET /private", "web"));
    assert!(!on_request(&p, &anyone, "POST /public/x", "web"));
    assert!(!on_request(&p, &anyone, "POST /private", "db.internal:80"));
}

#[test]
fn header_and_claim_conditions() {
    let p = policy(
        "ALLOW",
        r#"{when: [{key: "request.headers[X-Tenant]", values: [acme, "beta-*"]},
                   {key: "request.auth.claims[groups]", values: [admins]},
                   {key: "request.auth.claims[org.level]", notValues: ["0"]}]}"#,
    );
    let anyone = peer(None, "10.0.0.1");
    let admin = Authenticated::assume_verified(
        json!({"iss": "https://i", "sub": "a", "groups": ["dev", "admins"], "org": {"level": 2}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let dev = Authenticated::assume_verified(
        json!({"iss": "https://i", "sub": "b", "groups": "dev", "org": {"level": 2}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let level0 = Authenticated::assume_verified(
        json!({"iss": "https://i", "sub": "c", "groups": ["admins"], "org": {"level": 0}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let req =
        |headers: &str, auth| on_request_as(&p, &anyone, &format!("GET /\n{headers}"), "w", auth);
    assert!(req("x-tenant: acme", Some(&admin)));
    assert!(req("x-tenant: beta-2", Some(&admin)));
    assert!(!req("x-tenant: other", Some(&admin)));
    assert!(!req("", Some(&admin)));
    assert!(!req("x-tenant: acme", Some(&dev)));
    assert!(!req("x-tenant: acme", Some(&level0)));
    assert!(!req("x-tenant: acme", None));
}

#[test]
fn request_principals_need_a_token() {
    let p = policy(
        "ALLOW",
        r#"{from: {requestPrincipals: ["https://issuer.example/*"], notRequestPrincipals: ["*/mallory"]}}"#,
    );
    let anyone = peer(None, "10.0.0.1");
    let user = |sub: &str| {
        Authenticated::assume_verified(
            json!({"iss": "https://issuer.example", "sub": sub})
                .as_object()
                .unwrap()
                .clone(),
        )
    };
    assert!(on_request_as(
        &p,
        &anyone,
        "GET /",
        "w",
        Some(&user("alice"))
    ));
    assert!(!on_request_as(
        &p,
        &anyone,
        "GET /",
        "w",
        Some(&user("mallory"))
    ));
    assert!(!on_request_as(&p, &anyone, "GET /", "w", None));
    let deny_anonymous = policy("DENY", r#"{from: {notRequestPrincipals: ["*"]}}"#);
    assert!(on_request_as(&deny_anonymous, &anyone, "GET /", "w", None));
    assert!(!on_request_as(
        &deny_anonymous,
        &anyone,
        "GET /",
        "w",
        Some(&user("alice"))
    ));
}

#[test]
fn connection_conditions_in_when() {
    let p = policy(
        "ALLOW",
        r#"{when: [{key: source.ip, values: [10.0.0.0/8]}, {key: destination.port, values: ["8080"]},
                   {key: source.namespace, notValues: [test]}, {key: source.principal, values: ["*/sa/frontend"]}]}"#,
    );
    assert!(!p.spec.rules[0].needs_http());
    assert!(p.matches(&peer(FRONTEND, "10.1.2.3"), 8080));
    assert!(!p.matches(&peer(FRONTEND, "10.1.2.3"), 9090));
    assert!(!p.matches(&peer(FRONTEND, "192.168.0.1"), 8080));
    assert!(!p.matches(
        &peer(Some("spiffe://td/ns/test/sa/frontend"), "10.1.2.3"),
        8080
    ));
    assert!(!p.matches(&peer(None, "10.1.2.3"), 8080));
}

/// A rule that needs the request, judged on a connection without one: it never matches in
/// ALLOW (and AUDIT), and matches in DENY as far as its connection fields allow.
#[test]
fn request_fields_on_a_tcp_port() {
    let frontend = peer(FRONTEND, "10.0.0.1");
    for rule in [
        "{to: {methods: [GET]}}",
        "{to: {notPaths: [/x]}}",
        "{from: {requestPrincipals: [\"*\"]}}",
        "{when: [{key: \"request.headers[x-a]\", values: [b]}]}",
        "{when: [{key: \"request.auth.claims[c]\", notValues: [d]}]}",
    ] {
        assert!(policy("ALLOW", rule).spec.rules[0].needs_http(), "{rule}");
        assert!(!policy("ALLOW", rule).matches(&frontend, 8080), "{rule}");
        assert!(!policy("AUDIT", rule).matches(&frontend, 8080), "{rule}");
        assert!(policy("DENY", rule).matches(&frontend, 8080), "{rule}");
    }
    // The connection fields of a DENY rule still count.
    let deny = policy(
        "DENY",
        "{from: {namespaces: [default]}, to: {ports: [8080], methods: [DELETE]}}",
    );
    assert!(deny.matches(&frontend, 8080));
    assert!(!deny.matches(&frontend, 5432));
    assert!(!deny.matches(&peer(Some("spiffe://td/ns/other/sa/x"), "10.0.0.1"), 8080));
    assert!(deny.needs_http_on(8080));
    assert!(!deny.needs_http_on(5432));
    // And on a request, the same rule is judged by its method.
    assert!(on_request(&deny, &frontend, "DELETE /x", "w"));
    assert!(!on_request(&deny, &frontend, "GET /x", "w"));
}

#[test]
fn keys_round_trip_as_written() {
    let p = policy(
        "ALLOW",
        r#"{when: [{key: "request.auth.claims[a][b]", values: [x]}]}"#,
    );
    let yaml = serde_yaml_ng::to_string(&Resource::from(p.clone())).unwrap();
    assert!(yaml.contains("key: request.auth.claims[a][b]"), "{yaml}");
    assert_eq!(
        p.spec.rules[0].when[0].key.as_str(),
        "request.auth.claims[a][b]"
    );
}
