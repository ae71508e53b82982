//! A request's telemetry while it is under way, turned into Istio metrics and an access log
//! line when its response body ends (or the client goes away).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::Response;
use http_body_util::BodyExt;
use mesh_api::Snapshot;

use super::body::{Observed, RequestBytes};
use super::errors::{ProxyBody, ProxyError};
use super::forward::Reached;
use super::Downstream;
use crate::proxy::telemetry::{RequestLabels, RequestRecord};

/// What is known about a request while it is under way.
pub struct Pending {
    pub start: Instant,
    pub started_at: SystemTime,
    pub method: String,
    pub path: String,
    pub grpc: bool,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub request_bytes: RequestBytes,
    pub route: Option<String>,
    pub rule: Option<String>,
    /// Envoy response flags so far (DI, URX, ...); the error's own is added at the end.
    pub flags: Vec<&'static str>,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    /// The destination's policy that refused the request (same node), for the log.
    pub authz_policy: Option<String>,
}

impl Pending {
    /// The proxy's own answer for `error`, recorded like any response.
    pub fn error(
        mut self,
        conn: &Downstream,
        snapshot: &Arc<Snapshot>,
        error: ProxyError,
    ) -> Response<ProxyBody> {
        self.flags.push(error.flag());
        let response = error.response(self.grpc);
        self.finish(conn, snapshot, response, None)
    }

    /// Wraps the response so that its end records the request.
    pub fn finish(
        self,
        conn: &Downstream,
        snapshot: &Arc<Snapshot>,
        response: Response<ProxyBody>,
        reached: Option<Reached<'_>>,
    ) -> Response<ProxyBody> {
        let mesh = snapshot.mesh_config();
        let observability = &mesh.observability;
        let log_path = observability
            .access_log
            .enabled
            .then(|| observability.access_log.path.clone());
        if !observability.metrics && log_path.is_none() {
            return response;
        }
        let context = &conn.context;
        let service = reached.as_ref().map(|r| r.service).or_else(|| {
            let key = &conn.target.service;
            snapshot.service(&key.namespace, &key.name)
        });
        // A try that timed out or failed still names the endpoint it went to (as Envoy's
        // upstream host does): a dashboard shows which workload is slow, not "unknown".
        let endpoint = reached.as_ref().map(|r| r.endpoint).or(self.upstream);
        let security = reached.as_ref().map(|r| r.security);
        let peers = conn.peer_labels(snapshot, service, endpoint, security);
        let status = response.status().as_u16();
        let header_grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        // Owned copies only for an access log line; metrics share the labels.
        let (source_principal, destination_principal, destination_service) = match log_path {
            Some(_) => {
                let p = &peers.0;
                (
                    p.source_principal.clone(),
                    p.destination_principal.clone(),
                    p.destination_service.clone(),
                )
            }
            None => Default::default(),
        };
        let labels = RequestLabels {
            peers,
            request_protocol: if self.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: String::new(),
            response_flags: if self.flags.is_empty() {
                "-".into()
            } else {
                self.flags.join(",")
            },
        };
        let telemetry = context.shared.http.telemetry.clone();
        let metrics = observability.metrics;
        let record_when_done = move |bytes_sent: u64, trailer_grpc_status: Option<u32>| {
            let mut labels = labels;
            if self.grpc {
                labels.grpc_response_status = header_grpc_status
                    .or(trailer_grpc_status)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
            }
            let record = RequestRecord {
                start_time: self.started_at,
                method: self.method,
                path: self.path,
                protocol: labels.request_protocol,
                response_code: status,
                response_flags: labels.response_flags.clone(),
                bytes_received: self.request_bytes.get(),
                bytes_sent,
                duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
                upstream_host: self.upstream.map(|u| u.to_string()),
                route_name: self.route,
                rule_name: self.rule,
                source_principal,
                destination_principal,
                destination_service,
                request_id: self.request_id,
                trace_id: self.trace_id,
                attempts: self.attempts,
                authz_policy: self.authz_policy,
                labels: Some(labels),
            };
            telemetry.record(record, metrics, log_path.as_deref());
        };
        response.map(|body| Observed::new(body, record_when_done).boxed_unsync())
    }
}
