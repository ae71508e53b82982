//! What tests read back from the mesh: the answer of `pod-tool http-serve` and readings of
//! `mesh-agent status -o json`, shared by every end-to-end suite.

use std::net::SocketAddr;

use serde_json::Value;

use crate::mesh::MeshNode;

/// The body of an http-serve answer: `name=N peer=<addr> local=<addr>`.
#[derive(Debug)]
pub struct Response {
    pub name: String,
    /// The client as the app's accept() saw it.
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl Response {
    pub fn parse(body: &str) -> Response {
        let field = |key: &str| {
            body.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key}= in response {body:?}"))
                .to_string()
        };
        let addr = |key: &str| -> SocketAddr {
            field(key)
                .parse()
                .unwrap_or_else(|e| panic!("{key} in {body:?}: {e}"))
        };
        Response {
            name: field("name"),
            peer: addr("peer"),
            local: addr("local"),
        }
    }
}

/// One reading of `mesh-agent status -o json`, to compare counters before and after.
pub struct AgentStatus(pub Value);

impl AgentStatus {
    pub fn of(node: &MeshNode) -> AgentStatus {
        AgentStatus(node.status_json().expect("mesh-agent status -o json"))
    }

    pub fn kernel(&self, name: &str) -> u64 {
        self.0["kernel"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no kernel counter {name} in {}", self.0["kernel"]))
    }

    /// e.g. `pod("default/client", "outbound", "connections")`.
    pub fn pod(&self, pod: &str, direction: &str, counter: &str) -> u64 {
        self.pod_entry(pod)
            .unwrap_or_else(|| panic!("pod {pod} is not in the status: {}", self.0["pods"]))
            [direction][counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no {direction}.{counter} for {pod}"))
    }

    pub fn pod_entry(&self, pod: &str) -> Option<&Value> {
        self.0["pods"]
            .as_array()
            .expect("status has a pods array")
            .iter()
            .find(|p| p["pod"] == pod)
    }

    /// `namespace/name` of every enrolled pod.
    pub fn pod_names(&self) -> Vec<String> {
        self.0["pods"]
            .as_array()
            .expect("status has a pods array")
            .iter()
            .map(|p| p["pod"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn config_version(&self) -> u64 {
        self.0["config"]["version"]
            .as_u64()
            .expect("config.version")
    }

    pub fn origin(&self) -> String {
        self.0["config"]["origin"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The capture set the kernel holds (`ip/len`).
    pub fn capture(&self) -> Vec<String> {
        self.0["capture"]
            .as_array()
            .expect("status has a capture array")
            .iter()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect()
    }
}
