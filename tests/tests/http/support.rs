//! Building blocks of the HTTP tests: a client pod and several versions of a web app behind
//! one Service with subsets, on one node.

use std::net::IpAddr;
use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::observe::http_server;
use mesh_tests::{Bridge, Pod, PodProcess};

/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);
/// The service VIP of these tests (captured, never routed).
pub const VIP: &str = "10.96.0.30";
/// This suite's bridge subnets; each test takes the first free one.
const BRIDGES: [u8; 12] = [50, 51, 52, 53, 54, 55, 21, 22, 23, 24, 40, 41];

/// Where the apps listen.
pub const APP_PORT: u16 = 8080;

pub fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

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
    pub bridge: Bridge,
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
            bridge,
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
