//! The network config a runtime writes to the plugin's stdin: our conflist entry
//! (`{"type": "mesh-cni", "stateDir": ...}`) with the list's `cniVersion` and `name` and, for a
//! chained plugin, the previous plugin's result (`prevResult`).

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::spec::{self, CniError, Code, SUPPORTED_VERSIONS};

/// Where the agent keeps its state and admin socket unless the entry says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/run/mesh-agent";

/// A config is a few kilobytes; this bounds what a broken runtime can make us buffer.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct NetConf {
    pub cni_version: String,
    /// The agent's state directory: its admin socket is `<stateDir>/agent.sock`.
    pub state_dir: PathBuf,
    /// The previous plugin's result, passed through unchanged by ADD.
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Parses stdin. Unknown keys are ignored: runtimes add their own (`runtimeConfig`,
    /// `args`, capabilities) and a plugin must tolerate them.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodingFailure,
                format!("the network config on stdin is not JSON: {e}"),
            )
        })?;
        let Some(object) = value.as_object() else {
            return Err(invalid("the network config on stdin is not a JSON object"));
        };
        let cni_version = match object.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            Some(_) => return Err(invalid("cniVersion is not a string")),
            None => return Err(invalid("the network config has no cniVersion")),
        };
        if !spec::supported(&cni_version) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {cni_version:?} is not supported by mesh-cni (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let state_dir = match object.get("stateDir") {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(Value::String(dir)) if dir.starts_with('/') => PathBuf::from(dir),
            Some(other) => {
                return Err(invalid(format!(
                    "stateDir must be an absolute path (the agent's --state-dir), not {other}"
                )))
            }
        };
        let prev_result = match object.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "prevResult is not a result object: {other}"
                )))
            }
        };
        Ok(NetConf {
            cni_version,
            state_dir,
            prev_result,
        })
    }

    /// The pod's addresses from the previous plugin's result (`ips[].address`, CIDR form).
    /// A chained plugin with nothing before it, or after a plugin that assigned no address,
    /// has no pod to enroll: that is a config error (mesh-cni must come after the plugin that
    /// sets up the pod's interface).
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(prev) = &self.prev_result else {
            return Err(invalid(
                "no prevResult: mesh-cni must be chained after the plugin that assigns the pod's IPs",
            ));
        };
        let ips =
            match prev.get("ips") {
                Some(Value::Array(ips)) if !ips.is_empty() => ips,
                _ => return Err(invalid(
                    "prevResult has no ips: the plugin before mesh-cni assigned the pod no address",
                )),
            };
        ips.iter().map(ip_of_entry).collect()
    }

    /// What ADD prints: the previous result, unchanged, in the version the runtime asked for.
    pub fn pass_through(&self) -> Result<String, CniError> {
        let mut result = self.prev_result.clone().ok_or_else(|| {
            invalid("no prevResult: mesh-cni must be chained after the plugin that assigns the pod's IPs")
        })?;
        result["cniVersion"] = Value::String(self.cni_version.clone());
        Ok(result.to_string())
    }
}

fn ip_of_entry(entry: &Value) -> Result<IpAddr, CniError> {
    let Some(address) = entry.get("address").and_then(Value::as_str) else {
        return Err(invalid(format!(
            "prevResult ips entry {entry} has no address"
        )));
    };
    let ip = address.split_once('/').map_or(address, |(ip, _)| ip);
    ip.parse().map_err(|_| {
        invalid(format!(
            "prevResult ips address {address:?} is not an IP address in CIDR form"
        ))
    })
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],
        "ips":[{"interface":0,"address":"10.22.0.5/24","gateway":"10.22.0.1"},
               {"interface":0,"address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    fn conf(extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"pods","type":"mesh-cni"{extra}}}"#)
    }

    #[test]
    fn reads_the_ips_of_the_previous_result() {
        let c =
            NetConf::parse(conf(&format!(r#","prevResult":{BRIDGE_RESULT}"#)).as_bytes()).unwrap();
        let ips: Vec<String> = c.pod_ips().unwrap().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.22.0.5", "fd00::5"]);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn passes_the_previous_result_through_in_the_requested_version() {
        let c =
            NetConf::parse(conf(&format!(r#","prevResult":{BRIDGE_RESULT}"#)).as_bytes()).unwrap();
        let out: Value = serde_json::from_str(&c.pass_through().unwrap()).unwrap();
        let mut expected: Value = serde_json::from_str(BRIDGE_RESULT).unwrap();
        expected["cniVersion"] = "1.0.0".into();
        assert_eq!(out, expected);
    }

    #[test]
    fn state_dir_comes_from_the_entry() {
        let c = NetConf::parse(conf(r#","stateDir":"/run/mesh""#).as_bytes()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/mesh"));
    }

    fn code_of(stdin: &str) -> (Code, String) {
        let e = NetConf::parse(stdin.as_bytes())
            .and_then(|c| c.pod_ips())
            .unwrap_err();
        (e.code, e.msg)
    }

    #[test]
    fn bad_configs_get_the_specification_codes() {
        assert_eq!(code_of("{not json").0, Code::DecodingFailure);
        assert_eq!(code_of("[1]").0, Code::InvalidConfig);
        assert_eq!(code_of(r#"{"type":"mesh-cni"}"#).0, Code::InvalidConfig);
        let (code, msg) = code_of(&conf("").replace("1.0.0", "0.2.0"));
        assert_eq!(code, Code::IncompatibleVersion);
        assert!(msg.contains("\"0.2.0\"") && msg.contains("1.1.0"), "{msg}");
        let (code, msg) = code_of(&conf(r#","stateDir":"relative""#));
        assert_eq!(code, Code::InvalidConfig);
        assert!(msg.contains("stateDir"), "{msg}");
    }

    #[test]
    fn a_missing_or_empty_previous_result_is_a_config_error() {
        let (code, msg) = code_of(&conf(""));
        assert_eq!(code, Code::InvalidConfig);
        assert!(msg.contains("chained after"), "{msg}");
        let (code, msg) = code_of(&conf(r#","prevResult":{"cniVersion":"1.0.0","ips":[]}"#));
        assert_eq!(code, Code::InvalidConfig);
        assert!(msg.contains("no ips"), "{msg}");
        let (code, msg) = code_of(&conf(
            r#","prevResult":{"ips":[{"address":"10.0.0.300/24"}]}"#,
        ));
        assert_eq!(code, Code::InvalidConfig);
        assert!(msg.contains("10.0.0.300/24"), "{msg}");
        let (_, msg) = code_of(&conf(r#","prevResult":{"ips":[{"gateway":"10.0.0.1"}]}"#));
        assert!(msg.contains("has no address"), "{msg}");
    }
}
