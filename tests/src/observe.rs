//! The app every end-to-end suite runs in its pods (`pod-tool http-serve`, reached with
//! `pod-tool http-get`; the other pod-tool servers and JSON-printing clients) and what tests
//! read back: its answers and readings of `mesh-agent status -o json`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::mesh::MeshNode;
use crate::{cargo_bin, wait_until, Pod, PodProcess};

/// How long a pod-tool command or a server start may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// Starts `pod-tool http-serve --name <name>` in `pod` on `0.0.0.0:<port>` and `[::]:<port>`
/// and waits until both listeners are bound.
pub fn http_server(pod: &Pod, name: &str, port: u16) -> PodProcess {
    dual_stack_server(pod, "http-serve", port, &["--name", name])
}

/// `pod-tool grpc-serve --name <name>` (service `podtool.Echo`) on `0.0.0.0:<port>` and
/// `[::]:<port>`, once both are bound.
pub fn grpc_server(pod: &Pod, name: &str, port: u16) -> PodProcess {
    dual_stack_server(pod, "grpc-serve", port, &["--name", name])
}

/// `pod-tool banner-serve` (writes `<banner>\n` first, then echoes) on both families.
pub fn banner_server(pod: &Pod, banner: &str, port: u16) -> PodProcess {
    dual_stack_server(pod, "banner-serve", port, &["--banner", banner])
}

fn dual_stack_server(pod: &Pod, command: &str, port: u16, args: &[&str]) -> PodProcess {
    let (v4, v6) = (format!("0.0.0.0:{port}"), format!("[::]:{port}"));
    let listen = [command, "--listen", &v4, "--listen", &v6];
    start_server(pod, &[&listen[..], args].concat())
}

/// Starts any pod-tool server (`args` start with its command) and waits until it printed
/// `listening` once per `--listen`.
pub fn start_server(pod: &Pod, args: &[&str]) -> PodProcess {
    let mut server = pod
        .spawn(cargo_bin("pod-tool"), args)
        .unwrap_or_else(|e| panic!("spawning pod-tool {args:?}: {e:#}"));
    let want = args.iter().filter(|a| **a == "--listen").count();
    wait_until(PATIENCE, || {
        server.stdout().matches("listening").count() >= want || !server.is_running()
    });
    assert!(
        server.is_running(),
        "pod-tool {} in {} died: {}",
        args[0],
        pod.name(),
        server.stderr()
    );
    server
}

/// Runs a pod-tool client that prints one JSON object (`http-load`, `grpc-call`, `ws-echo`,
/// ...) inside `pod` and parses it; panics with the tool's error if it fails.
pub fn pod_tool_json(pod: &Pod, args: &[&str]) -> Value {
    let out = pod
        .run(cargo_bin("pod-tool"), args, PATIENCE)
        .unwrap_or_else(|e| panic!("pod-tool {args:?} in {}: {e:#}", pod.name()));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("pod-tool {args:?} printed no JSON ({e}): {text:?}"))
}

/// `pod-tool http-get` from inside `pod`: the response body, or the tool's error.
pub fn try_get(pod: &Pod, url: &str, timeout_ms: u64) -> Result<String> {
    let timeout = timeout_ms.to_string();
    let out = pod.run(
        cargo_bin("pod-tool"),
        ["http-get", url, "--timeout-ms", &timeout],
        PATIENCE,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A GET that must succeed.
pub fn get(pod: &Pod, url: &str) -> Response {
    let body =
        try_get(pod, url, 3000).unwrap_or_else(|e| panic!("GET {url} from {}: {e:#}", pod.name()));
    Response::parse(&body)
}

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
