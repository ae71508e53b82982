//! Request-level security, enforced by the destination's agent: the AuthorizationPolicy
//! fields that need the HTTP request (methods, paths, hosts, request principals, request
//! `when` keys) and end-user authentication with JWTs (RequestAuthentication). See
//! docs/ARCHITECTURE.md, "Request-level security".
//!
//! Every path into a pod goes through [`judge`]: HBONE and plaintext connections to a port
//! that needs it are served by [`serve::serve_inbound`] (an HTTP server in front of one
//! connection to the app); same-node requests are judged by the source's HTTP proxy just
//! before they go out, since it already parsed them. A pod without such policy or JWT
//! rules keeps the plain L4 relay: nothing is parsed.
//!
//! - `serve`: the inbound HTTP server for HBONE and plaintext connections.
//! - `counters`: decisions per policy, for metrics and status; the refusal log line.

pub mod counters;
pub mod serve;

use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::Uri;
use mesh_api::jwt::{Authenticated, JwtError, JwtRules, TokenLocation};
use mesh_api::{AuthzReason, HttpRequest, ObjectKey, Peer, Protocol, Snapshot};
use parking_lot::Mutex;

use super::http::errors::ProxyError;
use super::http::Attributes;
use super::policy::PeerInfo;
use super::PodContext;
use counters::Decision;

/// What one pod's config asks of its requests, for one config snapshot: built on the first
/// request after a change, then shared (JWT rules compile keys once, not per request).
pub struct PodSecurity {
    snapshot: Weak<Snapshot>,
    jwt: JwtRules,
    /// Headers tokens are read from: sent twice, the request is refused.
    token_headers: Vec<HeaderName>,
    /// Headers the JWT rules set for the app: removed from every request first, so a
    /// client cannot pose as a verified one by sending them itself.
    output_headers: Vec<HeaderName>,
    /// Whether requests to a port are judged one by one, per port asked so far.
    ports: Mutex<Vec<(u16, bool)>>,
}

impl PodSecurity {
    fn new(snapshot: &Arc<Snapshot>, workload: &ObjectKey) -> PodSecurity {
        let jwt = snapshot
            .workload(&workload.namespace, &workload.name)
            .map(|w| snapshot.jwt_rules_for(w))
            .unwrap_or_default();
        let names = |list: Vec<&str>| {
            list.into_iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        PodSecurity {
            snapshot: Arc::downgrade(snapshot),
            token_headers: names(jwt.token_headers()),
            output_headers: names(jwt.output_header_names()),
            jwt,
            ports: Mutex::new(Vec::new()),
        }
    }

    /// Whether requests to `port` of the pod are judged one by one
    /// ([`Snapshot::needs_request_security`]); remembered per port.
    pub fn judges(&self, snapshot: &Snapshot, workload: &ObjectKey, port: u16) -> bool {
        let mut ports = self.ports.lock();
        if let Some((_, judged)) = ports.iter().find(|(p, _)| *p == port) {
            return *judged;
        }
        let judged = snapshot
            .workload(&workload.namespace, &workload.name)
            .is_some_and(|w| snapshot.needs_request_security(w, port));
        ports.push((port, judged));
        judged
    }
}

/// A pod's [`PodSecurity`] for the current snapshot.
#[derive(Default)]
pub struct SecurityCache(Mutex<Option<Arc<PodSecurity>>>);

impl SecurityCache {
    pub fn current(&self, snapshot: &Arc<Snapshot>, workload: &ObjectKey) -> Arc<PodSecurity> {
        let mut cached = self.0.lock();
        match cached.as_ref() {
            Some(c) if Weak::ptr_eq(&c.snapshot, &Arc::downgrade(snapshot)) => c.clone(),
            _ => {
                let fresh = Arc::new(PodSecurity::new(snapshot, workload));
                *cached = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// The port's protocol when connections to it are served as HTTP and judged per request:
/// it may be HTTP (a Service port targeting it says `http`, `http2`, `grpc` or `auto`) and
/// the pod's policies or JWT rules need the request. `None`: the L4 relay serves it.
pub fn inbound_http(snapshot: &Arc<Snapshot>, pod: &PodContext, port: u16) -> Option<Protocol> {
    // The cached answer first: a pod without request-level policy (most) pays no Service scan.
    let judged =
        pod.security
            .current(snapshot, &pod.workload)
            .judges(snapshot, &pod.workload, port);
    if !judged {
        return None;
    }
    let workload = snapshot.workload(&pod.workload.namespace, &pod.workload.name)?;
    let (_, protocol) = crate::registry::http_service_of(snapshot, workload, port)?;
    Some(protocol)
}

/// Whether connections to `port` of `workload` are served as HTTP and judged per request
/// under `snapshot` (as [`inbound_http`], without the pod's cache): a connection relayed as
/// bytes there must be closed, so that it comes back and is judged.
pub fn judged_per_request(snapshot: &Snapshot, workload: &ObjectKey, port: u16) -> bool {
    snapshot
        .workload(&workload.namespace, &workload.name)
        .is_some_and(|w| {
            snapshot.needs_request_security(w, port)
                && crate::registry::http_service_of(snapshot, w, port).is_some()
        })
}

/// Why a request was refused, and by which policy (for the log and counters).
#[derive(Debug)]
pub struct Refusal {
    pub error: ProxyError,
    pub policy: Option<String>,
}

/// Judges one request to `port` of the pod `destination` from `peer`: authenticates its
/// token (if JWT rules apply) and applies the AuthorizationPolicies with the request in
/// view. When it may pass, its headers are made ready for the app: tokens removed (unless
/// `forwardOriginalToken`), the rules' output headers set and client-sent copies removed.
/// A port that needs no per-request judgement passes untouched.
pub fn judge(
    destination: &PodContext,
    snapshot: &Arc<Snapshot>,
    peer: &PeerInfo,
    port: u16,
    parts: &mut Parts,
) -> Result<(), Refusal> {
    let workload_key = &destination.workload;
    let security = destination.security.current(snapshot, workload_key);
    if !security.judges(snapshot, workload_key, port) {
        return Ok(());
    }
    let Some(workload) = snapshot.workload(&workload_key.namespace, &workload_key.name) else {
        // Vanished from the config: the connection-level check (mesh defaults) decided.
        return Ok(());
    };
    let counters = &destination.shared.http.telemetry.authz;
    let refuse = |error, policy: Option<String>, decision| {
        counters.count(workload_key, policy.as_deref(), decision);
        Err(Refusal { error, policy })
    };
    if !settle_host(parts) {
        return refuse(ProxyError::Ambiguous, None, Decision::Deny);
    }
    let auth = match authenticate(&security, parts) {
        Ok(auth) => auth,
        Err(e) => {
            return refuse(
                ProxyError::Unauthenticated(e),
                None,
                Decision::Unauthenticated,
            )
        }
    };
    let host = request_host(parts);
    let decision = snapshot.authorize_request(
        workload,
        &Peer {
            principal: peer.principal.as_deref(),
            ip: peer.ip,
        },
        port,
        &HttpRequest {
            attributes: &Attributes(parts),
            host: &host,
            auth: auth.as_ref(),
        },
    );
    if let Some(audit) = decision.audit {
        let name = audit.metadata.key().to_string();
        tracing::info!(audit_policy = %name, workload = %workload_key, principal = ?peer.principal, ip = %peer.ip, port, method = %parts.method, path = parts.uri.path(), allowed = decision.allowed, "audited request");
        counters.count(workload_key, Some(&name), Decision::Audit);
    }
    let policy = match decision.reason {
        AuthzReason::Denied(p) | AuthzReason::Allowed(p) => Some(p.metadata.key().to_string()),
        AuthzReason::NoAllowMatched | AuthzReason::Default(_) => None,
    };
    if !decision.allowed {
        return refuse(ProxyError::Denied, policy, Decision::Deny);
    }
    counters.count(workload_key, policy.as_deref(), Decision::Allow);
    prepare_for_app(&security, parts, auth.as_ref());
    Ok(())
}

/// The request's verified token, if it carries one.
fn authenticate(security: &PodSecurity, parts: &Parts) -> Result<Option<Authenticated>, JwtError> {
    if security.jwt.is_empty() {
        return Ok(None);
    }
    let repeated = security
        .token_headers
        .iter()
        .any(|name| parts.headers.get_all(name).iter().nth(1).is_some());
    if repeated {
        return Err(JwtError::MultipleTokens);
    }
    security.jwt.authenticate(&Attributes(parts), unix_now())
}

/// Makes the request name one host, the one the app will route by, before `hosts` rules
/// judge it: a request with two `Host` headers is refused (false); an absolute-form target
/// or HTTP/2 `:authority` wins over `Host` (RFC 9112 3.2.2), so `Host` is set to it (an
/// HTTP/1 app would otherwise route by a `Host` the policy never saw).
fn settle_host(parts: &mut Parts) -> bool {
    if parts
        .headers
        .get_all(http::header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return false;
    }
    if let Some(authority) = parts.uri.authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(http::header::HOST, value);
        }
    }
    true
}

/// The authority the request names: `:authority` (HTTP/2, absolute form), else `Host`.
fn request_host(parts: &Parts) -> String {
    match parts.uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

fn prepare_for_app(security: &PodSecurity, parts: &mut Parts, auth: Option<&Authenticated>) {
    for name in &security.output_headers {
        parts.headers.remove(name);
    }
    let Some(auth) = auth else { return };
    if !auth.forward_original_token() {
        for location in auth.locations() {
            match location {
                TokenLocation::Header { name, .. } => {
                    parts.headers.remove(name.as_str());
                }
                TokenLocation::Param(name) => remove_query_param(&mut parts.uri, name),
            }
        }
    }
    for (name, value) in auth.output_headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            parts.headers.insert(name, value);
        }
    }
}

/// Removes every `name=...` from the query (names compared decoded, as the token was read).
fn remove_query_param(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|piece| !mesh_api::parse_query(piece).contains_key(name))
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(rewritten) = Uri::from_parts(parts) {
        *uri = rewritten;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_judged_is_the_host_the_app_routes_by() {
        let parts = |request: http::request::Builder| request.body(()).unwrap().into_parts().0;
        let mut absolute = parts(
            http::Request::get("http://public.example/secret").header("host", "admin.example"),
        );
        assert!(settle_host(&mut absolute));
        assert_eq!(absolute.headers["host"], "public.example");
        assert_eq!(request_host(&absolute), "public.example");
        let mut twice = parts(
            http::Request::get("/")
                .header("host", "public.example")
                .header("host", "admin.example"),
        );
        assert!(!settle_host(&mut twice));
        let mut plain = parts(http::Request::get("/").header("host", "web:8080"));
        assert!(settle_host(&mut plain));
        assert_eq!(request_host(&plain), "web:8080");
    }

    #[test]
    fn a_token_parameter_is_removed_and_the_rest_of_the_query_kept() {
        let mut uri: Uri = "http://web:8080/api?a=1&access_token=xyz&b=2"
            .parse()
            .unwrap();
        remove_query_param(&mut uri, "access_token");
        assert_eq!(uri.to_string(), "http://web:8080/api?a=1&b=2");
        let mut uri: Uri = "/api?access%5Ftoken=xyz".parse().unwrap();
        remove_query_param(&mut uri, "access_token");
        assert_eq!(uri.to_string(), "/api");
        let mut uri: Uri = "/api?other=1".parse().unwrap();
        remove_query_param(&mut uri, "access_token");
        assert_eq!(uri.to_string(), "/api?other=1");
    }
}
