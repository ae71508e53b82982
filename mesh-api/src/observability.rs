//! MeshConfig `spec.observability`: what agents record about the traffic they proxy.

use serde::{Deserialize, Serialize};

use crate::percent::Percent;
use crate::validate::Checker;

/// Where access log lines go when `path` is not a file.
pub const ACCESS_LOG_STDOUT: &str = "stdout";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Observability {
    /// Per-request and per-connection Prometheus metrics on the agents' `/metrics`. Default
    /// true.
    pub metrics: bool,
    pub access_log: AccessLog,
    pub tracing: Tracing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLog {
    /// One line per HTTP request and per TCP connection. Default false.
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// `stdout` (the default) or an absolute file path on each node, appended to.
    pub path: String,
}

/// The access log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tracing {
    /// Start a W3C trace for requests that arrive without trace context. Trace headers that
    /// arrive are always forwarded unchanged. Default false.
    pub enabled: bool,
    /// Share of those requests that get a sampled trace: 0 to 100, default 1.
    pub sampling_percent: Percent,
}

impl Default for Observability {
    fn default() -> Self {
        Observability {
            metrics: true,
            access_log: AccessLog::default(),
            tracing: Tracing::default(),
        }
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            enabled: false,
            format: AccessLogFormat::Json,
            path: ACCESS_LOG_STDOUT.to_owned(),
        }
    }
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: false,
            sampling_percent: Percent::ONE,
        }
    }
}

impl AccessLog {
    /// The file to append to, or `None` for stdout.
    pub fn file(&self) -> Option<&str> {
        (self.path != ACCESS_LOG_STDOUT).then_some(self.path.as_str())
    }
}

/// `spec.observability` of the MeshConfig.
pub(crate) fn check_observability(c: &mut Checker<'_>, o: &Observability) {
    let path = &o.access_log.path;
    if path != ACCESS_LOG_STDOUT
        && !(path.starts_with('/') && !path.ends_with('/') && !path.contains(char::is_control))
    {
        c.fail(
            "spec.observability.accessLog.path",
            format!("{path:?} must be {ACCESS_LOG_STDOUT:?} or an absolute file path"),
        );
    }
}
