//! What request-level security does with one fuzz input: JWT extraction and verification,
//! request policy evaluation, path normalisation, `when` keys and key sets, all on
//! arbitrary text. The property tests (src/tests/fuzz.rs) and the `request_security`
//! cargo-fuzz target share it.
//!
//! Input: a request as [`FuzzRequest`] reads it (`METHOD TARGET` line, `name: value`
//! headers, `host` among them), then optionally a blank line and a JSON object of claims
//! (judged as if verified, so claim conditions see arbitrary shapes). [`SAMPLE_TOKENS`] are
//! valid at [`NOW`] for [`SAMPLE_JWKS`], so inputs built on them reach every check after
//! the signature.

use std::net::IpAddr;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::FuzzRequest;
use crate::jwt::jwks::parse_jwks;
use crate::jwt::Authenticated;
use crate::{load_str, normalize_path, ConditionKey, HttpRequest, Peer, RequestAttributes};
use crate::{Snapshot, Workload};

/// The clock the fuzzed requests are judged at.
pub const NOW: u64 = 1_800_000_000;

/// Public keys (P-256 `ec`, Ed25519 `ed`, RSA 2048 `rsa`) of the sample issuer
/// `https://issuer.example`, generated for these samples.
pub const SAMPLE_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec", "x": "kmIexQN7LxZSmpRDe607io7-5i604kIjZXCU74xXSeo", "y": "CS-FZUfG-l-gCN78jJxi8jsv-zVV7MoEU5AaLM7NmqE"}, {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "wnjORpCJGnYJvMMZ-dF49b7ng4ILrYRw1WXr9L9gRP0"}, {"kty": "RSA", "kid": "rsa", "n": "wZgediRpkD8GKuBt73vag1tom15TSxBjRmmb77yKBZZKAF7mLg4YHMG4mBgFJfqUpKDfhOajneleXoi-OoesD4v6huRih5V4kaU0IhsiafKcSgFkou6uUeVaUi1c19t6KKk7Pvk1S3YvkVALo5h-w9Ub8Y-zde4N2h9UAFWbW1lijBJzsUxEsQLdStd1G4PlJLb4zu5R2H6vLA5wY6YDHEd137eg10DimkhajMeeLmSVjb7BgND9LEjVRN97H_x5PiC7yu40bB_qlimj52BGGhrXRQRNFHTuChTkzM8MClTh_G3mjrRa5I7LvrMA9MrJrjryfAegA-u_wY7pyIb8BQ", "e": "AQAB"}]}"#;

/// Tokens by the sample issuer (ES256, EdDSA, PS256, RS512), valid at [`NOW`] (`exp`
/// 1900000000), `sub: alice`, `aud: [web, api]`, `groups: [admins, dev]`,
/// `org: {level: 2, name: acme}`, `azp: cli`.
pub const SAMPLE_TOKENS: [&str; 4] = [
    "eyJhbGciOiAiRVMyNTYiLCAia2lkIjogImVjIiwgInR5cCI6ICJKV1QifQ.eyJpc3MiOiAiaHR0cHM6Ly9pc3N1ZXIuZXhhbXBsZSIsICJzdWIiOiAiYWxpY2UiLCAiYXVkIjogWyJ3ZWIiLCAiYXBpIl0sICJleHAiOiAxOTAwMDAwMDAwLCAibmJmIjogMTc5OTk5OTAwMCwgImdyb3VwcyI6IFsiYWRtaW5zIiwgImRldiJdLCAib3JnIjogeyJsZXZlbCI6IDIsICJuYW1lIjogImFjbWUifSwgImF6cCI6ICJjbGkifQ.mlHVT9JD1aqmKYCp7bHMfukA2OgwFEgHfjkTW0lqNSta50aIAKoVj9b8RdAKzBP4zuprh1suuaOk5WMTk4tTVQ",
    "eyJhbGciOiAiRWREU0EiLCAia2lkIjogImVkIiwgInR5cCI6ICJKV1QifQ.eyJpc3MiOiAiaHR0cHM6Ly9pc3N1ZXIuZXhhbXBsZSIsICJzdWIiOiAiYWxpY2UiLCAiYXVkIjogWyJ3ZWIiLCAiYXBpIl0sICJleHAiOiAxOTAwMDAwMDAwLCAibmJmIjogMTc5OTk5OTAwMCwgImdyb3VwcyI6IFsiYWRtaW5zIiwgImRldiJdLCAib3JnIjogeyJsZXZlbCI6IDIsICJuYW1lIjogImFjbWUifSwgImF6cCI6ICJjbGkifQ._cGIFe01gDpoYgu3Qor9x3UNywfJOMyJsC3nIfeTqK_7mabNpNHebLydSeK5wS7KQUKPLDBrH5cUEXWhopFDCQ",
    "eyJhbGciOiAiUFMyNTYiLCAia2lkIjogInJzYSIsICJ0eXAiOiAiSldUIn0.eyJpc3MiOiAiaHR0cHM6Ly9pc3N1ZXIuZXhhbXBsZSIsICJzdWIiOiAiYWxpY2UiLCAiYXVkIjogWyJ3ZWIiLCAiYXBpIl0sICJleHAiOiAxOTAwMDAwMDAwLCAibmJmIjogMTc5OTk5OTAwMCwgImdyb3VwcyI6IFsiYWRtaW5zIiwgImRldiJdLCAib3JnIjogeyJsZXZlbCI6IDIsICJuYW1lIjogImFjbWUifSwgImF6cCI6ICJjbGkifQ.ouiYNaCZz74mb7fTdG_HHZ9RoiZaUlCTumRaWalu69MI8Oa_YVXiH08mhRbr7_tciM_qESKgB4CeMThN4lo29w_MiofcB8kcnWCZpYiPm_ZE8hjn3OZwkkNuYtH9AR76rVMBOF_PglfiWkW-G58oSI7Q8l375qS4jgznYzleai0Io0Gn8pYYiXbE0XU85vqzOGRvWK2Nx9Kt-WfdpbmuC0KbU3UVTKjJIQkvY4XGIBABhD43FqLE3ANmTFqENIKUoqqW_jOK6r8rgMsuU6GnZ51tKxtZrhDngMPTT_gbi8DIqcTHaCF5F_htXZhJHred-Nv6PCtsBq_VN4aUbrzh1Q",
    "eyJhbGciOiAiUlM1MTIiLCAia2lkIjogInJzYSIsICJ0eXAiOiAiSldUIn0.eyJpc3MiOiAiaHR0cHM6Ly9pc3N1ZXIuZXhhbXBsZSIsICJzdWIiOiAiYWxpY2UiLCAiYXVkIjogWyJ3ZWIiLCAiYXBpIl0sICJleHAiOiAxOTAwMDAwMDAwLCAibmJmIjogMTc5OTk5OTAwMCwgImdyb3VwcyI6IFsiYWRtaW5zIiwgImRldiJdLCAib3JnIjogeyJsZXZlbCI6IDIsICJuYW1lIjogImFjbWUifSwgImF6cCI6ICJjbGkifQ.eKXWisVbvGNxsjBo4YK2KHhdRYjfQyG9SePtnGnVRGpQahd8fjSxIQOLmoe8EqjbZdAraK9S1-E2UnSLtcp4xHiuPJ5_RyMwYuvtE8KvgzYB6IMKmD3cbJoDS8x05CkZgOGuLQjIBVENgXOFYjejvE1baFY0qYmgjsmWvxvx8Wb9GYlOgUCdIDz_8t78zXldKDWfyceOi-iSIIZ1H5yblIl45tutnW2xrmlqhIqSJvjfbR7byN2ZMZ4iGhoA_eKVKRiH0EASy6ziha0QXL248Ij8hqmrXdIzPwZ1sZiWS0mjREa86-73Qd_mWYq-WL4yGezbcqRTiE_vPizkIZuD6Q",
];

/// Two workloads, a RequestAuthentication reading every kind of location with outputs,
/// and policies using every request field, `not*` form and `when` key.
fn sample_config() -> String {
    format!(
        r#"apiVersion: mesh/v1
kind: Workload
metadata: {{name: web, namespace: prod}}
spec: {{uid: web, ips: [10.0.0.6], node: n1, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: mesh/v1
kind: Workload
metadata: {{name: db, namespace: prod}}
spec: {{uid: db, ips: [10.0.0.5], node: n1, serviceAccount: db, labels: {{app: db}}}}
---
apiVersion: mesh/v1
kind: RequestAuthentication
metadata: {{name: users, namespace: prod}}
spec:
  selector: {{app: web}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [web]
    jwks: '{SAMPLE_JWKS}'
    fromHeaders: [{{name: authorization, prefix: "Bearer "}}, {{name: x-token}}]
    fromParams: [access_token]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-groups, claim: groups}}, {{header: x-level, claim: org.level}}]
  - issuer: https://later.example
    jwksUri: https://later.example/keys
---
apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: prod}}
spec:
  selector: {{app: web}}
  action: ALLOW
  rules:
  - from: {{requestPrincipals: ["https://issuer.example/*"], notRequestPrincipals: ["*/mallory"]}}
    to: {{ports: [8080], methods: [GET, "P*"], paths: ["/api/*", "*.png", /health], hosts: ["web.prod", "*.example"]}}
    when:
    - {{key: "request.auth.claims[groups]", values: [admins]}}
    - {{key: "request.auth.claims[org][level]", notValues: ["0"]}}
    - {{key: "request.auth.claims[org.name]", values: ["ac*"]}}
    - {{key: request.auth.audiences, values: [web]}}
    - {{key: request.auth.presenter, notValues: [evil]}}
    - {{key: request.auth.principal, values: ["*/alice"]}}
  - to: {{notMethods: [DELETE], notPaths: ["/admin*"], notHosts: ["*.internal"]}}
    when:
    - {{key: "request.headers[x-tenant]", values: [acme, "beta-*"]}}
    - {{key: source.ip, values: [10.0.0.0/8, "fd00::/8"]}}
    - {{key: source.namespace, notValues: [test]}}
    - {{key: source.principal, values: ["*/sa/frontend"]}}
    - {{key: destination.port, values: ["8080"]}}
---
apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: prod}}
spec:
  action: DENY
  rules:
  - to: {{paths: ["/api/admin*"]}}
  - from: {{notRequestPrincipals: ["*"]}}
    to: {{ports: [9090]}}
---
apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {{name: audit, namespace: prod}}
spec:
  action: AUDIT
  rules: [{{to: {{methods: [POST]}}}}]
"#
    )
}

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let resources = load_str("sample.yaml", &sample_config()).expect("sample config is valid");
        Snapshot::from_resources(resources).expect("sample config is consistent")
    })
}

/// Runs one input through everything request-level security does with network input.
pub fn exercise_request_security(text: &str) {
    let (request_text, claims_text) = text.split_once("\n\n").unwrap_or((text, ""));
    let request = FuzzRequest::from_text(request_text);
    let _ = request_text
        .lines()
        .next()
        .unwrap_or_default()
        .parse::<ConditionKey>();
    let _ = parse_jwks(text);
    check_normalisation(request.path());
    let assumed = serde_json::from_str::<Map<String, Value>>(claims_text)
        .ok()
        .map(Authenticated::assume_verified);
    let snap = snapshot();
    for workload in snap.workloads() {
        let verified = verify(snap, workload, &request);
        let auth = verified.as_ref().or(assumed.as_ref());
        judge(snap, workload, &request, auth);
    }
}

/// Normalising twice changes nothing, and leaves no empty or dot segment.
fn check_normalisation(path: &str) {
    let once = normalize_path(path);
    assert_eq!(normalize_path(&once), once, "{path:?}");
    if let Some(rest) = once.strip_prefix('/') {
        let segments: Vec<&str> = rest.split('/').collect();
        let inner = &segments[..segments.len().saturating_sub(1)];
        assert!(
            inner.iter().all(|s| !matches!(*s, "" | "." | "..")),
            "{path:?} -> {once:?}"
        );
        assert!(!matches!(segments.last(), Some(&"." | &"..")), "{once:?}");
    }
}

/// The request's token verified for `workload`; refusals must read as a header.
fn verify(
    snap: &Snapshot,
    workload: &Workload,
    request: &FuzzRequest<'_>,
) -> Option<Authenticated> {
    match snap.authenticate_request(workload, request, NOW) {
        Ok(Some(auth)) => {
            for (name, value) in auth.output_headers() {
                assert!(!name.is_empty());
                assert!(header_safe(&value), "{value:?}");
            }
            assert!(!auth.locations().is_empty());
            Some(auth)
        }
        Ok(None) => None,
        Err(e) => {
            assert!(header_safe(&e.www_authenticate()), "{e}");
            None
        }
    }
}

fn header_safe(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// Every decision the inbound proxy asks for, on an HTTP port and two others.
fn judge(
    snap: &Snapshot,
    workload: &Workload,
    request: &FuzzRequest<'_>,
    auth: Option<&Authenticated>,
) {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let peers = [
        Peer {
            principal: None,
            ip,
        },
        Peer {
            principal: Some("spiffe://cluster.local/ns/prod/sa/frontend"),
            ip,
        },
    ];
    let http = HttpRequest {
        attributes: request,
        host: request.header("host").unwrap_or("web.prod"),
        auth,
    };
    for port in [8080, 9090, 5432] {
        let _ = snap.needs_request_security(workload, port);
        for peer in &peers {
            let _ = snap.authorize(workload, peer, port);
            let decision = snap.authorize_request(workload, peer, port, &http);
            if decision.allowed {
                assert!(!matches!(decision.reason, crate::AuthzReason::Denied(_)));
            }
        }
    }
}

/// A request carrying sample token `i` the way the seeds do.
pub fn sample_request(i: usize) -> String {
    format!(
        "GET /api/x?q=1\nhost: web.prod:8080\nauthorization: Bearer {}\nx-tenant: acme",
        SAMPLE_TOKENS[i % SAMPLE_TOKENS.len()]
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The samples reach past the signature into claims and policies: each verifies, and
    /// the ALLOW policy's request rule lets the admin in.
    #[test]
    fn samples_verify_and_pass_the_policy() {
        let snap = snapshot();
        let web = snap.workload("prod", "web").unwrap();
        for i in 0..SAMPLE_TOKENS.len() {
            let text = sample_request(i);
            let request = FuzzRequest::from_text(&text);
            let auth = snap
                .authenticate_request(web, &request, NOW)
                .unwrap_or_else(|e| panic!("sample {i}: {e}"))
                .expect("a token");
            assert_eq!(auth.principal(), "https://issuer.example/alice");
            let http = HttpRequest {
                attributes: &request,
                host: "web.prod:8080",
                auth: Some(&auth),
            };
            let peer = Peer {
                principal: None,
                ip: "10.0.0.9".parse().unwrap(),
            };
            let decision = snap.authorize_request(web, &peer, 8080, &http);
            assert!(decision.allowed, "sample {i}: {:?}", decision.reason);
            exercise_request_security(&text);
        }
    }

    proptest! {
        /// Mangled sample requests (token bytes, headers, path) never panic.
        #[test]
        fn mangled_samples_never_panic(
            which in 0usize..4,
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0usize..4, prop::sample::select(vec![
                    "", ".", "..", "/", "%", "%2e", "A", "_", "-", "=", "\n", ":", " ", "{", "}",
                    "\"", "eyJhbGciOiJub25lIn0", "eyJ9", "/../", "//", "*", "é",
                ])),
                1..5,
            ),
            claims in prop::option::of("\\{(\"[a-z.]{1,6}\": (\\[\"[a-z]{0,4}\"\\]|[0-9]{1,3}|\"[a-z*]{0,5}\"|\\{\\})(, )?){0,4}\\}"),
        ) {
            let mut text = sample_request(which);
            for (at, delete, insert) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let mut end = (i + delete).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(i..end, insert);
            }
            if let Some(claims) = claims {
                text.push_str("\n\n");
                text.push_str(&claims);
            }
            exercise_request_security(&text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            exercise_request_security(&text);
        }
    }
}
