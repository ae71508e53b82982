//! Connections already open when config changes: each next request on them is judged by the
//! new config, including connections opened before the pod needed any request-level
//! security (relayed as bytes until then).

use mesh_tests::jwt::{claims, merged, now};
use mesh_tests::require_root;
use serde_json::{json, Value};

use super::support::*;

/// Requests the app in web served on `path`.
fn served(bed: &Bed, path: &str) -> u64 {
    served_on(&bed.web, path)
}

/// On one keep-alive connection per way in: a request allowed, then after a policy change
/// the next request on the same connection refused (403, the connection stays open), the
/// one after refused again on its own, and after the policy is changed back the last one
/// allowed. All four requests of each client share its connection (the client fails if it
/// cannot send the next one).
#[test]
fn policy_changes_apply_to_the_next_request_on_an_open_connection() {
    require_root();
    let allow_kept = web_policy("web-http", "ALLOW", "  - to: {paths: [\"/kept\"]}\n");
    let allow_other = web_policy("web-http", "ALLOW", "  - to: {paths: [\"/other\"]}\n");
    let mut bed = Bed::new(&allow_kept);
    let to_pod = format!("http://{}:{APP_PORT}/kept", bed.web.ip());
    let mut clients = KeepAliveClients::start(
        4,
        &[
            (
                "same node via the Service",
                &bed.client,
                format!("http://{VIP}/kept"),
                &[],
            ),
            ("same node to the pod", &bed.client, to_pod.clone(), &[]),
            ("plaintext", &bed.outsider, to_pod, &[]),
        ],
    );
    let all = |status: u64, flags: Value| {
        [
            "same node via the Service",
            "same node to the pod",
            "plaintext",
        ]
        .map(|way| (way, status, flags.clone()))
        .to_vec()
    };
    let (allowed, refused) = (all(200, Value::Null), all(403, Value::from("RBAC")));

    assert_eq!(clients.statuses(1), allowed);
    bed.set_policies(&allow_other);
    clients.release();
    assert_eq!(clients.statuses(2), refused);
    clients.release();
    assert_eq!(clients.statuses(3), refused);
    bed.set_policies(&allow_kept);
    clients.release();
    assert_eq!(clients.statuses(4), allowed);
    clients.finish();
    assert_eq!(served(&bed, "/kept"), 2 * WAYS);
}

/// Connections opened while web has no request-level security (relayed as bytes), each
/// sending an expired token: once a RequestAuthentication applies to web, the next request
/// on each is refused with 401 (a plaintext connection may instead be closed: an L4 relay
/// cannot answer one request), never served; a new connection's request gets 401 too.
#[test]
fn authentication_added_later_judges_requests_on_connections_already_open() {
    require_root();
    let issuer = Issuer::generate();
    let mut bed = Bed::new("");
    let expired = bearer(&issuer.ec.sign(&merged(
        &claims(ISSUER, "alice", AUDIENCE),
        &json!({"exp": now() - 3600}),
    )));
    let token: &[&str] = &["-H", &expired];
    let to_pod = format!("http://{}:{APP_PORT}/late", bed.web.ip());
    let mut clients = KeepAliveClients::start(
        2,
        &[
            (
                "same node via the Service",
                &bed.client,
                format!("http://{VIP}/late"),
                token,
            ),
            ("same node to the pod", &bed.client, to_pod.clone(), token),
            ("plaintext", &bed.outsider, to_pod, token),
        ],
    );
    for (way, status, _) in clients.statuses(1) {
        assert_eq!(status, 200, "{way}: no RequestAuthentication yet");
    }
    bed.set_policies(&issuer.request_authentication("web-jwt", ""));
    clients.release();
    for (way, answer) in clients.nth(2) {
        match answer {
            Some(a) => {
                assert_eq!(a["status"], 401, "{way}: {a}");
                assert_eq!(a["headers"]["x-mesh-response-flags"], "JWT", "{way}: {a}");
            }
            None if way == "plaintext" => {}
            None => panic!("{way}: the connection closed: {}", clients.errors()),
        }
    }
    for (way, r) in bed.every_way("GET", "/late", token) {
        assert_jwt_refused(&r, &format!("new connection, {way}"));
    }
    assert_eq!(
        served(&bed, "/late"),
        WAYS,
        "only the requests before the change"
    );
}

/// An app that closes its connection after each response (`Connection: close`, as after an
/// idle timeout or from a server without keep-alive): the client's keep-alive connection
/// through a judged port goes on, each request on a new app connection (found by review:
/// every request after the first was answered 502 for the rest of the client connection).
#[test]
fn an_app_closing_its_connection_does_not_break_the_clients() {
    require_root();
    let bed = Bed::new(&web_policy(
        "web-get",
        "ALLOW",
        "  - to: {methods: [GET]}\n",
    ));
    let to_pod = format!("http://{}:{APP_PORT}/close", bed.web.ip());
    let mut clients = KeepAliveClients::start(
        3,
        &[
            ("same node to the pod", &bed.client, to_pod.clone(), &[]),
            ("plaintext", &bed.outsider, to_pod, &[]),
        ],
    );
    for n in 1..=3 {
        for (way, status, _) in clients.statuses(n) {
            assert_eq!(status, 200, "request {n}, {way}: {}", clients.errors());
        }
        clients.release();
    }
    clients.finish();
    assert_eq!(served(&bed, "/close"), 6);
}
