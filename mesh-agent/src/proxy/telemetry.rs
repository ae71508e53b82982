//! Istio's standard metrics (same names and labels, so its dashboards work unchanged) for
//! every proxied connection (`istio_tcp_*`) and HTTP request (`istio_request*`), and the
//! access log. Label values are bounded: workload and service names, identities, codes and
//! flags; never paths or addresses.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::{Service, Snapshot, Workload};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::dial::Security;
use super::request_security::counters::{AuthzCounters, RefusedRequest};
use super::PodContext;

/// Istio's labels for who talks to whom (`reporter="source"`: the client's node reports).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `mutual_tls` (HBONE), `none` (plaintext), `local` (same node: never left the node,
    /// no TLS), `unknown` (no connection was made).
    pub connection_security_policy: &'static str,
}

impl PeerLabels {
    /// Labels for traffic of `context`'s pod to `service`, reaching `endpoint` (when one was
    /// reached) over a connection secured as `security`.
    pub fn new(
        snapshot: &Snapshot,
        context: &PodContext,
        service: Option<&Service>,
        endpoint: Option<std::net::SocketAddr>,
        security: Option<Security>,
    ) -> PeerLabels {
        let mesh = snapshot.mesh_config();
        let source = snapshot.workload(&context.workload.namespace, &context.workload.name);
        let destination = endpoint.and_then(|e| snapshot.workload_by_ip(e.ip()));
        let destination_principal = match (destination, security) {
            (Some(w), Some(Security::MutualTls | Security::Local)) => mesh.identity_of(w),
            _ => "unknown".to_owned(),
        };
        let (service_name, service_namespace) = service.map_or_else(
            || ("unknown".to_owned(), "unknown".to_owned()),
            |s| (s.metadata.name.clone(), s.metadata.namespace.clone()),
        );
        PeerLabels {
            reporter: "source",
            source_workload: workload_name(source),
            source_workload_namespace: context.workload.namespace.clone(),
            source_principal: context.identity.to_string(),
            destination_workload: workload_name(destination),
            destination_workload_namespace: destination
                .map_or_else(|| "unknown".into(), |w| w.metadata.namespace.clone()),
            destination_principal,
            destination_service: format!(
                "{service_name}.{service_namespace}.svc.{}",
                mesh.trust_domain
            ),
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            connection_security_policy: match security {
                Some(Security::MutualTls) => "mutual_tls",
                Some(Security::Local) => "local",
                Some(Security::None) => "none",
                None => "unknown",
            },
        }
    }
}

/// Istio's workload name: the `app` label (what a Deployment's pods share), else the
/// workload's own name.
fn workload_name(workload: Option<&Workload>) -> String {
    workload.map_or_else(
        || "unknown".into(),
        |w| {
            w.spec
                .labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| w.metadata.name.clone())
        },
    )
}

/// Istio's labels for request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    /// Last: the derive hands its encoder to a flattened field.
    #[prometheus(flatten)]
    pub peers: SharedPeerLabels,
}

/// [`PeerLabels`] shared by the requests of a connection to one endpoint: built once, not
/// per request (they are a dozen strings).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SharedPeerLabels(pub Arc<PeerLabels>);

impl EncodeLabelSet for SharedPeerLabels {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// The series of one request label set, shared with the families that export them.
#[derive(Clone)]
struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

pub struct Telemetry {
    registry: Mutex<Registry>,
    handles: parking_lot::RwLock<rustc_hash::FxHashMap<RequestLabels, RequestHandles>>,
    tcp_opened: Family<PeerLabels, Counter>,
    tcp_closed: Family<PeerLabels, Counter>,
    tcp_sent: Family<PeerLabels, Counter>,
    tcp_received: Family<PeerLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    access_log: Mutex<Option<(String, Box<dyn Write + Send>)>>,
    /// Requests judged by request-level policy at their destination.
    pub authz: AuthzCounters,
}

/// Istio's request duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

impl Default for Telemetry {
    fn default() -> Telemetry {
        let telemetry = Telemetry {
            registry: Mutex::new(Registry::default()),
            handles: Default::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            access_log: Mutex::new(None),
            authz: AuthzCounters::default(),
        };
        {
            let mut r = telemetry.registry.lock();
            // prometheus-client appends `_total` to counters.
            r.register(
                "istio_tcp_connections_opened",
                "Proxied connections opened",
                telemetry.tcp_opened.clone(),
            );
            r.register(
                "istio_tcp_connections_closed",
                "Proxied connections closed",
                telemetry.tcp_closed.clone(),
            );
            r.register(
                "istio_tcp_sent_bytes",
                "Bytes sent by the source side of proxied connections",
                telemetry.tcp_sent.clone(),
            );
            r.register(
                "istio_tcp_received_bytes",
                "Bytes received by the source side of proxied connections",
                telemetry.tcp_received.clone(),
            );
            r.register(
                "istio_requests",
                "Requests through the mesh",
                telemetry.requests.clone(),
            );
            r.register(
                "istio_request_duration_milliseconds",
                "Request duration, until the response ended",
                telemetry.duration.clone(),
            );
            r.register(
                "istio_request_bytes",
                "Request body sizes",
                telemetry.request_bytes.clone(),
            );
            r.register(
                "istio_response_bytes",
                "Response body sizes",
                telemetry.response_bytes.clone(),
            );
            r.register(
                "mesh_request_authz",
                "Requests judged by request-level policy at their destination",
                telemetry.authz.family.clone(),
            );
        }
        telemetry
    }
}

fn bytes_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9])
}

/// One finished request, for the metrics and the access log line.
#[derive(Serialize)]
pub struct RequestRecord {
    #[serde(serialize_with = "serialize_rfc3339")]
    pub start_time: SystemTime,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: f64,
    pub upstream_host: Option<String>,
    pub route_name: Option<String>,
    pub rule_name: Option<String>,
    pub source_principal: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub attempts: u32,
    /// The destination's policy that refused the request, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz_policy: Option<String>,
    #[serde(skip)]
    pub labels: Option<RequestLabels>,
}

/// One finished L4 connection, for the access log.
#[derive(Serialize)]
pub struct ConnectionRecord {
    #[serde(serialize_with = "serialize_rfc3339")]
    pub start_time: SystemTime,
    pub protocol: &'static str,
    pub duration_ms: f64,
    /// Bytes from the source app, and to it.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub upstream_host: String,
    pub source_principal: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub connection_security_policy: &'static str,
}

impl Telemetry {
    /// Writes `record` to the access log at `path` (see [`Telemetry::record`]).
    pub fn log_connection(&self, path: &str, record: &ConnectionRecord) {
        self.log(path, record);
    }

    /// Adds a metric kept elsewhere to what `/metrics` shows with these.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Writes the line of a request the destination refused to the access log at `path`.
    pub fn log_refused(&self, path: &str, record: &RefusedRequest<'_>) {
        self.log(path, record);
    }

    pub fn tcp_opened(&self, labels: &PeerLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A connection closed after `sent` bytes from the source and `received` to it.
    pub fn tcp_closed(&self, labels: &PeerLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    pub fn record(&self, mut record: RequestRecord, metrics: bool, log: Option<&str>) {
        if let (true, Some(labels)) = (metrics, record.labels.take()) {
            let handles = self.request_handles(labels);
            handles.requests.inc();
            handles.duration.observe(record.duration_ms);
            handles.request_bytes.observe(record.bytes_received as f64);
            handles.response_bytes.observe(record.bytes_sent as f64);
        }
        if let Some(path) = log {
            self.log(path, &record);
        }
    }

    /// The four request series of `labels`, looked up once (with a fast hash) rather than
    /// once per family: this runs for every request.
    fn request_handles(&self, labels: RequestLabels) -> RequestHandles {
        if let Some(handles) = self.handles.read().get(&labels) {
            return handles.clone();
        }
        let handles = RequestHandles {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        };
        self.handles.write().insert(labels, handles.clone());
        handles
    }

    /// Writes one JSON line to stdout or to the file `path` (opened on first use, reopened
    /// when the configured path changes). A log that can't be written never fails a request.
    fn log(&self, path: &str, record: &impl Serialize) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut sink = self.access_log.lock();
        if sink.as_ref().is_none_or(|(p, _)| p != path) {
            let writer: Box<dyn Write + Send> = if path == "stdout" {
                Box::new(std::io::stdout())
            } else {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    Ok(file) => Box::new(file),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot open the access log");
                        return;
                    }
                }
            };
            *sink = Some((path.to_owned(), writer));
        }
        if let Some((_, writer)) = sink.as_mut() {
            let _ = writer.write_all(&line);
            let _ = writer.flush();
        }
    }

    /// Prometheus text of these metrics (no `# EOF`: appended to the agent's own).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry.lock());
        out
    }
}

/// Formatted only when a line is written (not per request when the log is off).
pub fn serialize_rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*time))
}

/// RFC 3339 UTC with milliseconds, as access logs usually carry.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_795_200_123);
        assert_eq!(rfc3339(t), "2026-11-27T16:00:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
