//! What the CNI specification fixes for every plugin: the versions we speak, the error codes and
//! the error object a runtime reads from stdout when a plugin fails.

use std::fmt;

use serde_json::json;

/// Versions whose config and result formats this plugin understands. A chained plugin passes
/// `prevResult` through, so it needs the result format only to read the IPs, and `ips[]` with
/// CIDR `address` is the same in all of them. CHECK appeared in 0.4.0, STATUS and GC in 1.1.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// What VERSION answers with when the request names no version we speak.
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes: 1-99 are the specification's, 100 and up the plugin's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    /// The variable's name is in the message (the specification asks for it).
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidConfig = 7,
    /// The runtime retries ADD: the agent is not running or not ready, or the pod's Workload
    /// is not declared yet. Nothing is left enrolled.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot add pods now (the agent is not running or not ready).
    NotAvailable = 50,
    /// The agent refused the enrollment for a reason retrying will not fix by itself (the
    /// declared Workload does not match the pod); its message says which.
    EnrollmentRefused = 100,
    /// CHECK: the pod is not enrolled, or not as the runtime set it up, or not captured.
    NotCaptured = 101,
}

/// A failed command, printed as the specification's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object for a runtime speaking `version`.
    pub fn to_json(&self, version: &str) -> String {
        let mut object = json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = self.details.clone().into();
        }
        object.to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code as u32)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// Whether `version` is one this plugin speaks.
pub fn supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// VERSION's answer.
pub fn version_info(requested: Option<&str>) -> String {
    let version = requested.filter(|v| supported(v)).unwrap_or(LATEST_VERSION);
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_specification_fields() {
        let e = CniError::new(Code::TryAgainLater, "agent not ready").with_details("resuming");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "agent not ready");
        assert_eq!(v["details"], "resuming");
        let bare = CniError::new(Code::InvalidConfig, "x").to_json("1.1.0");
        assert!(!bare.contains("details"), "{bare}");
    }

    #[test]
    fn version_answers_the_requested_version_when_spoken() {
        let v: serde_json::Value = serde_json::from_str(&version_info(Some("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        let v: serde_json::Value = serde_json::from_str(&version_info(Some("0.1.0"))).unwrap();
        assert_eq!(v["cniVersion"], LATEST_VERSION);
    }
}
