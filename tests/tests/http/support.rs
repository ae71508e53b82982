//! Building blocks of the HTTP tests: a client pod and several versions of a web app behind
//! one Service with subsets, on one node.

use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::observe::{http_server, pod_tool_json};
use mesh_tests::{Bridge, Pod, PodProcess};
use serde_json::Value;

/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);
/// The service VIP of these tests (captured, never routed).
pub const VIP: &str = "10.96.0.30";
/// This suite's bridge subnets; each test takes the first free one.
const BRIDGES: [u8; 12] = [50, 51, 52, 53, 54, 55, 21, 22, 23, 24, 40, 41];

/// Where the apps listen.
pub const APP_PORT: u16 = 8080;

pub fn pod_tool() -> &'static str {
    env!("CARGO_BIN_EXE_pod-tool")
}

/// `client` (.2) and one web pod per version (`web-<version>`, .3, .4, ...; labels app=web,
/// version=<version>) each running `http-serve --name web-<version>`, all enrolled on one
/// node whose config is the pods' Workloads plus `extra_yaml` (the Service and Route under
/// test).
///
/// Fields drop in order: the agent first, then servers, pods, the bridge.
pub struct Versions {
    pub node: MeshNode,
    pub servers: Vec<PodProcess>,
    pub client: Pod,
    pub webs: Vec<Pod>,
    /// Held for its Drop (removes the bridge after the pods).
    pub _bridge: Bridge,
}

impl Versions {
    pub fn new(versions: &[&str], extra_yaml: &str) -> Versions {
        let bridge = Bridge::first_free(&BRIDGES).unwrap();
        let client = Pod::new(&bridge, "client", 2).unwrap();
        let mut config =
            workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]);
        let mut webs = Vec::new();
        let mut servers = Vec::new();
        for (i, version) in versions.iter().enumerate() {
            let name = format!("web-{version}");
            let pod = Pod::new(&bridge, &name, 3 + i as u8).unwrap();
            config += &workload_yaml(
                &name,
                &format!("{name}-uid"),
                &[pod.ip()],
                &[("app", "web"), ("version", version)],
            );
            servers.push(http_server(&pod, &name, APP_PORT));
            webs.push(pod);
        }
        config += extra_yaml;
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&client, "client-uid", "client").unwrap();
        for (pod, version) in webs.iter().zip(versions) {
            let name = format!("web-{version}");
            node.enroll(pod, &format!("{name}-uid"), &name).unwrap();
        }
        Versions {
            node,
            servers,
            client,
            webs,
            _bridge: bridge,
        }
    }
}

/// A Service `web` at [`VIP`]:80 -> 8080 with `protocol` and subsets `v1`, `v2`, ... named
/// after `versions`.
pub fn web_service(protocol: &str, versions: &[&str]) -> String {
    let subsets: Vec<String> = versions
        .iter()
        .map(|v| format!("{{name: {v}, labels: {{version: {v}}}}}"))
        .collect();
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  vips: [\"{VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: {protocol}}}]\n  selector: {{app: web}}\n  subsets: [{}]\n",
        subsets.join(", ")
    )
}

/// A Route for Service `web`; `spec` is the rest of its spec, indented by two spaces.
pub fn web_route(spec: &str) -> String {
    format!("---\napiVersion: mesh/v1\nkind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n{spec}")
}

/// `pod-tool http-load` from `pod`: `requests` requests to `url` (more flags in `extra`); its
/// JSON summary (`statuses`, `served_by`, `latency_ms`, `connections`, ...).
pub fn load(pod: &Pod, url: &str, requests: usize, extra: &[&str]) -> Value {
    let requests = requests.to_string();
    let args = [
        &["http-load", "--url", url, "--requests", &requests][..],
        extra,
    ]
    .concat();
    pod_tool_json(pod, &args)
}

/// What the app in `pod` has served so far (`/stats` of its `http-serve` on [`APP_PORT`],
/// asked over the pod's loopback, which the mesh does not capture): `requests`, `by_path`,
/// `connections`.
pub fn server_stats(pod: &Pod) -> Value {
    let url = format!("http://127.0.0.1:{APP_PORT}/stats");
    let out = pod
        .run(pod_tool(), ["http-get", &url], T)
        .unwrap_or_else(|e| panic!("/stats of {}: {e:#}", pod.name()));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("/stats of {}: {e}", pod.name()))
}

/// Requests the app in `pod` has served on `path`.
pub fn served_on(pod: &Pod, path: &str) -> u64 {
    server_stats(pod)["by_path"][path].as_u64().unwrap_or(0)
}

/// One response as `pod-tool http-get --show-headers` shows it.
#[derive(Debug)]
pub struct Shown {
    pub status: u16,
    /// Names in lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Shown {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `pod-tool http-get` (more flags in `extra`), any status.
pub fn show(pod: &Pod, url: &str, extra: &[&str]) -> Shown {
    let args = [&["http-get", url, "--show-headers"][..], extra].concat();
    let out = pod
        .run(pod_tool(), &args, T)
        .unwrap_or_else(|e| panic!("pod-tool {args:?}: {e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line after the headers: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("status="))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Shown {
        status,
        headers,
        body: body.to_owned(),
    }
}
