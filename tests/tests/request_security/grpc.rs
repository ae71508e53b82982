//! Refusals of gRPC requests are gRPC statuses in a trailers-only response, on the
//! same-node and the plaintext path, and the client's one HTTP/2 connection carries on.

use mesh_tests::jwt::{claims, merged, now};
use mesh_tests::require_root;
use serde_json::json;

use super::support::*;

/// Only callers with a valid token may call `/podtool.Echo/Call`: without one each call
/// gets PERMISSION_DENIED (7), with an expired one UNAUTHENTICATED (16), with a valid one
/// the app's answer; three calls on one channel each, so a refusal leaves the connection
/// usable for the next call.
#[test]
fn grpc_calls_are_refused_with_permission_denied_or_unauthenticated() {
    require_root();
    let issuer = Issuer::generate();
    let rules = format!(
        "  - from: {{requestPrincipals: [\"{ISSUER}/*\"]}}\n    to: {{paths: [\"/podtool.Echo/Call\"]}}\n"
    );
    let bed = Bed::new(
        &(issuer.request_authentication("web-jwt", "") + &web_policy("web-grpc", "ALLOW", &rules)),
    );
    let valid = bearer(&issuer.token("alice", &json!({})));
    let expired = bearer(&issuer.ec.sign(&merged(
        &claims(ISSUER, "alice", AUDIENCE),
        &json!({"exp": now() - 3600}),
    )));
    let via_mesh = format!("{VIP}:{GRPC_PORT}");
    let to_pod = format!("{}:{GRPC_PORT}", bed.web.ip());
    for (way, pod, addr) in [
        ("same node via the Service", &bed.client, &via_mesh),
        ("same node to the pod", &bed.client, &to_pod),
        ("plaintext", &bed.outsider, &to_pod),
    ] {
        let none = bed.grpc_call(pod, addr, 3, &[]);
        assert_eq!(
            none["codes"],
            json!({"PERMISSION_DENIED": 3}),
            "{way}: {none}"
        );
        let bad = bed.grpc_call(pod, addr, 3, &["-H", &expired]);
        assert_eq!(bad["codes"], json!({"UNAUTHENTICATED": 3}), "{way}: {bad}");
        let good = bed.grpc_call(pod, addr, 3, &["-H", &valid]);
        assert_eq!(good["codes"], json!({"OK": 3}), "{way}: {good}");
        assert_eq!(good["served_by"], json!({"web": 3}), "{way}: {good}");
    }
}
