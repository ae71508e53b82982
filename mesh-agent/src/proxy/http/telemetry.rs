//! Per-request telemetry: Istio's standard metrics (same names and labels, so its dashboards
//! work unchanged) and the access log. Label values are bounded: workload and service names,
//! identities, codes and flags; never paths or addresses.

use std::io::Write;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Istio's labels for request metrics (`reporter="source"`: the client's node reports).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
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
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

pub struct Telemetry {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    access_log: Mutex<Option<(String, Box<dyn Write + Send>)>>,
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
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            access_log: Mutex::new(None),
        };
        {
            let mut r = telemetry.registry.lock();
            // prometheus-client appends `_total` to counters.
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
    pub start_time: String,
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
    #[serde(skip)]
    pub labels: Option<RequestLabels>,
}

impl Telemetry {
    pub fn record(&self, mut record: RequestRecord, metrics: bool, log: Option<&str>) {
        if let (true, Some(labels)) = (metrics, record.labels.take()) {
            self.requests.get_or_create(&labels).inc();
            self.duration
                .get_or_create(&labels)
                .observe(record.duration_ms);
            self.request_bytes
                .get_or_create(&labels)
                .observe(record.bytes_received as f64);
            self.response_bytes
                .get_or_create(&labels)
                .observe(record.bytes_sent as f64);
        }
        if let Some(path) = log {
            self.log(path, &record);
        }
    }

    /// Writes one JSON line to stdout or to the file `path` (opened on first use, reopened
    /// when the configured path changes). A log that can't be written never fails a request.
    fn log(&self, path: &str, record: &RequestRecord) {
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
