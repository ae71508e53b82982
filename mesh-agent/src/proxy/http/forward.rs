//! One request, from the app to an upstream and back: the route's rule, faults, header
//! rules, tries with timeouts and retries, and the telemetry of how it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::request::Parts;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_api::{Protocol, Service, Snapshot};

use super::body::ReplayBody;
use super::errors::{ProxyBody, ProxyError};
use super::pool::{SendError, Target};
use super::record::Pending;
use super::retry::{self, TryOutcome};
use super::routing::{choose, Destination, Plan};
use super::{headers, upgrade, Downstream};
use crate::balance::Outcome;
use crate::metrics::Failure;
use crate::proxy::circuit::Limit;
use crate::proxy::dial::Security;
use crate::proxy::policy::PeerInfo;
use crate::proxy::request_security;

/// Largest request head (request line and headers) the proxy takes, like Envoy's 60 KiB
/// default. hyper's own HTTP/1 bound is its read buffer (~400 KiB), which a large read can
/// overshoot, so without this check whether a 500 KiB head passed depended on timing.
/// (HTTP/2 heads are bounded tighter by hyper's 16 KiB header list size.)
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Other endpoints tried when connecting to one fails, before any retry of the route's:
/// three tries in all, like a TCP connection gets.
const CONNECT_RETRIES: u32 = 2;

pub async fn handle(conn: Arc<Downstream>, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let started_at = SystemTime::now();
    let context = &conn.context;
    let snapshot = context.registry.snapshot();
    let mesh = snapshot.mesh_config();
    let tracing = mesh
        .observability
        .tracing
        .enabled
        .then(|| mesh.observability.tracing.sampling_percent.fraction());
    let grpc = is_grpc(&request);
    let client_upgrade = headers::is_upgrade(request.version(), request.headers())
        .then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let (request_id, trace_id) = headers::ensure_ids(&mut parts.headers, tracing);
    let body = ReplayBody::new(body);
    let mut record = Pending {
        start,
        started_at,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        grpc,
        request_id,
        trace_id,
        request_bytes: body.counter(),
        route: None,
        rule: None,
        flags: Vec::new(),
        upstream: None,
        attempts: 0,
        authz_policy: None,
    };
    if head_size(&parts) > MAX_REQUEST_HEAD {
        let mut response = record.error(&conn, &snapshot, ProxyError::HeadTooLarge);
        if parts.version < Version::HTTP_2 {
            // Like hyper's own 431: the connection ends (its body, if any, is never read).
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        return response;
    }
    let key = &conn.target.service;
    let Some(host) = snapshot.service(&key.namespace, &key.name) else {
        // The service was deleted since this connection opened.
        return record.error(&conn, &snapshot, ProxyError::NoHealthyEndpoint);
    };
    let plan = Plan::new(&snapshot, &context.shared.http.routes, host, &parts);
    if let Some(route) = plan.route {
        context
            .shared
            .http
            .rule_requests
            .count(route, plan.rule_index);
    }
    record.route = plan.route.map(|r| r.metadata.name.clone());
    record.rule = plan.rule_name().map(str::to_owned);

    if let Some(fault) = plan.rule.and_then(|r| r.fault.as_ref()) {
        if let Some(delay) = fault.delay.as_ref().filter(|d| fires(d.percent.fraction())) {
            tokio::time::sleep(std::time::Duration::from_millis(delay.ms)).await;
            record.flags.push("DI");
        }
        if let Some(abort) = fault.abort.as_ref().filter(|a| fires(a.percent.fraction())) {
            return record.error(&conn, &snapshot, ProxyError::FaultAbort(abort.status));
        }
    }
    let rule_headers = plan.rule.and_then(|r| r.headers.as_ref());
    if let Some(ops) = rule_headers.and_then(|h| h.request.as_ref()) {
        headers::apply_ops(&mut parts.headers, ops);
    }

    let outcome = match client_upgrade {
        Some(client_upgrade) => {
            upgrade::forward(
                &conn,
                &snapshot,
                &plan,
                parts,
                body,
                client_upgrade,
                &mut record,
            )
            .await
        }
        None => send_with_retries(&conn, &snapshot, &plan, parts, body, &mut record).await,
    };
    match outcome {
        Ok((mut response, destination)) => {
            if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                headers::strip_hop_by_hop(response.headers_mut());
            }
            if let Some(ops) = rule_headers.and_then(|h| h.response.as_ref()) {
                headers::apply_ops(response.headers_mut(), ops);
            }
            record.finish(&conn, &snapshot, response, Some(destination))
        }
        Err(e) => record.error(&conn, &snapshot, e),
    }
}

/// What a try reached, for telemetry.
pub struct Reached<'s> {
    pub service: &'s Service,
    pub endpoint: SocketAddr,
    pub security: Security,
}

/// Sends the request, trying again (on another endpoint where there is one) while the
/// route's retry conditions, attempts, body and budget allow, within the route's timeout.
async fn send_with_retries<'s>(
    conn: &Downstream,
    snapshot: &'s Arc<Snapshot>,
    plan: &Plan<'s>,
    mut parts: Parts,
    body: ReplayBody,
    record: &mut Pending,
) -> Result<(Response<ProxyBody>, Reached<'s>), ProxyError> {
    let context = &conn.context;
    let http = &context.shared.http;
    headers::strip_hop_by_hop(&mut parts.headers);
    let version = upstream_version(conn.target.protocol, parts.version);
    let fallback_authority = conn.target.dialled.to_string();
    headers::fit_request_target(
        &mut parts.uri,
        &mut parts.headers,
        version,
        &fallback_authority,
    );
    parts.version = version;
    let budget_key = plan.host.metadata.key();
    http.budgets.request(&budget_key);
    let deadline = plan.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut retries_done = 0;
    let mut connect_retries = 0;
    let mut _retry_slot = None;
    // After a connect failure: the next endpoint of the same pick.
    let mut next: Option<Destination<'s>> = None;
    loop {
        let mut destination = match (next.take(), conn.target.fixed) {
            (Some(destination), _) => destination,
            (None, Some(endpoint)) => Destination {
                service: plan.host,
                endpoint,
                load: None,
                outliers: None,
                picked: None,
            },
            (None, None) => choose(snapshot, plan, conn, &parts.headers, &tried)?,
        };
        let (service, endpoint) = (destination.service, destination.endpoint);
        tried.push(endpoint);
        record.attempts = retries_done + 1;
        record.upstream = Some(endpoint);
        let Some(try_body) = body.replay() else {
            // Only reachable for a retry, which checks replayability first.
            return Err(ProxyError::UpstreamReset);
        };
        let request = judge_same_node(conn, snapshot, endpoint, rebuild(&parts, try_body), record)?;
        // Counts under the service's `maxRequests` until the response head.
        let _in_flight = context
            .shared
            .circuits
            .acquire(service, Limit::max_requests)
            .map_err(|_| ProxyError::Overflow)?;
        let target = Target {
            context,
            endpoint,
            app: conn.app,
            service,
        };
        let send = context.http_pool.send(target, version, request);
        let try_deadline = match (plan.per_try_timeout, deadline) {
            (Some(t), Some(d)) => Some(d.min(tokio::time::Instant::now() + t)),
            (Some(t), None) => Some(tokio::time::Instant::now() + t),
            (None, d) => d,
        };
        let result = match try_deadline {
            Some(at) => tokio::time::timeout_at(at, send).await.ok(),
            None => Some(send.await),
        };
        if let Some(load) = destination.load.take() {
            // The response head (or the failure) ends the request's outstanding count.
            match &result {
                Some(Ok(_)) => load.succeeded(),
                _ => load.failed(),
            }
        }
        if let (Some(outliers), Some(outcome)) = (&destination.outliers, try_outcome(&result)) {
            if outliers.report(endpoint, outcome) {
                let circuits = &context.shared.circuits;
                circuits.opened(outliers.service(), Limit::outlier_ejection);
            }
        }
        let overall_expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let outcome = match &result {
            None if overall_expired => TryOutcome::Failed(ProxyError::Timeout),
            None => TryOutcome::TryTimeout,
            Some(Ok((response, _))) => TryOutcome::Response(response),
            Some(Err(e)) => TryOutcome::Failed(send_error(e)),
        };
        let unsent = matches!(outcome, TryOutcome::Failed(ProxyError::ConnectFailure));
        // Nothing of the request left the proxy: try another endpoint at once, whatever the
        // route's retry settings (as the L4 path does), and without taking from the budget.
        if unsent && connect_retries < CONNECT_RETRIES && !overall_expired {
            connect_retries += 1;
            next = destination.next_of_pick(&tried);
            continue;
        }
        let wants_retry = retries_done < plan.attempts()
            && !overall_expired
            && body.can_resend(unsent)
            && retry::should_retry(plan.retries, &outcome);
        // The budget is only asked when a retry would happen, so it counts real retries.
        let over_budget = wants_retry && !http.budgets.try_retry(&budget_key);
        if over_budget {
            http.retries_over_budget.inc();
        }
        // A slot under the service's `maxRetries`, held through the retry's try (`None`: at
        // the limit, so no retry). The previous retry's slot goes first: one request holds
        // one slot at most.
        drop(_retry_slot.take());
        let retry_slot = (wants_retry && !over_budget)
            .then(|| {
                context
                    .shared
                    .circuits
                    .acquire(service, Limit::max_retries)
                    .ok()
            })
            .flatten();
        if retry_slot.is_none() {
            if retry::should_retry(plan.retries, &outcome) && (retries_done > 0 || wants_retry) {
                record.flags.push("URX");
            }
            return match result {
                Some(Ok((response, security))) => Ok((
                    response.map(|b| b.map_err(Into::into).boxed_unsync()),
                    Reached {
                        service,
                        endpoint,
                        security,
                    },
                )),
                Some(Err(e)) => Err(send_error(&e)),
                None => Err(ProxyError::Timeout),
            };
        }
        drop(result);
        _retry_slot = retry_slot;
        retries_done += 1;
        let wait = retry::backoff(retries_done);
        match deadline {
            Some(d) => tokio::time::sleep_until(d.min(tokio::time::Instant::now() + wait)).await,
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// A request to a pod of this node is judged by that pod's request-level policy here, with
/// this pod's identity: the request never passes another proxy. Requests to other nodes
/// are judged by their destination's agent.
pub fn judge_same_node<B>(
    conn: &Downstream,
    snapshot: &Arc<Snapshot>,
    endpoint: SocketAddr,
    request: Request<B>,
    record: &mut Pending,
) -> Result<Request<B>, ProxyError> {
    let context = &conn.context;
    let Some(destination) = context.local_pods.get(endpoint.ip()) else {
        return Ok(request);
    };
    let peer = PeerInfo {
        principal: Some(context.identity.to_string()),
        ip: context
            .address_towards(endpoint.ip())
            .unwrap_or(conn.app.ip()),
    };
    let (mut parts, body) = request.into_parts();
    match request_security::judge(&destination, snapshot, &peer, endpoint.port(), &mut parts) {
        Ok(()) => Ok(Request::from_parts(parts, body)),
        Err(refusal) => {
            // Nothing went upstream.
            record.upstream = None;
            record.authz_policy = refusal.policy;
            Err(refusal.error)
        }
    }
}

/// How a try went, for outlier detection: a 5xx answer, a reset, a timeout or a failed
/// connection count against the endpoint; a refusal by the destination's policy or this
/// node's circuit breaker says nothing about it.
fn try_outcome<B>(result: &Option<Result<(Response<B>, Security), SendError>>) -> Option<Outcome> {
    match result {
        Some(Err(SendError::Connect(Failure::AuthzDenied) | SendError::Overflow(_))) => None,
        Some(Ok((response, _))) if !response.status().is_server_error() => Some(Outcome::Success),
        _ => Some(Outcome::Failure),
    }
}

fn send_error(e: &SendError) -> ProxyError {
    match e {
        SendError::Overflow(_) => ProxyError::Overflow,
        SendError::Connect(Failure::AuthzDenied) => ProxyError::Denied,
        SendError::Connect(_) => ProxyError::ConnectFailure,
        SendError::Upstream(_) => ProxyError::UpstreamReset,
    }
}

/// HTTP/2 and gRPC ports speak HTTP/2 upstream; `http` (and `auto`) ports speak what the
/// client spoke.
pub(crate) fn upstream_version(protocol: Protocol, client: Version) -> Version {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => Version::HTTP_2,
        _ if client == Version::HTTP_2 => Version::HTTP_2,
        _ => Version::HTTP_11,
    }
}

/// A request with `parts`' head and `body` (Parts can't be cloned: extensions).
pub fn rebuild(parts: &Parts, body: ReplayBody) -> Request<ReplayBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// The size of a request head as HTTP/1.1 writes it: request line, then `name: value\r\n`
/// per header, then the blank line.
fn head_size(parts: &Parts) -> usize {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    let line = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers + 2
}

pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn fires(fraction: f64) -> bool {
    fraction >= 1.0 || rand::random::<f64>() < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn head_size_counts_the_request_line_and_headers_as_written() {
        let get = parts(
            Request::get("/a?b=c")
                .header("host", "web")
                .body(())
                .unwrap(),
        );
        let written = "GET /a?b=c HTTP/1.1\r\nhost: web\r\n\r\n";
        assert_eq!(head_size(&get), written.len());

        let at_limit = "x".repeat(MAX_REQUEST_HEAD - head_size(&get) - "x-big: \r\n".len());
        let mut big = Request::get("/a?b=c").header("host", "web");
        big = big.header("x-big", at_limit.as_str());
        let big = parts(big.body(()).unwrap());
        assert_eq!(head_size(&big), MAX_REQUEST_HEAD);
        let over = parts(
            Request::get("/a?b=c")
                .header("host", "web")
                .header("x-big", format!("{at_limit}x"))
                .body(())
                .unwrap(),
        );
        assert!(head_size(&over) > MAX_REQUEST_HEAD);
    }
}
