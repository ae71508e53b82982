//! Building blocks of the balancing tests: a client pod and web pods (each an `http-serve`
//! named after it) behind one Service `web`, on one node, with the weights and localities
//! under test on their Workloads.

use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::observe::{pod_tool_json, start_server};
use mesh_tests::{Bridge, Pod, PodProcess};
use serde_json::Value;

/// The service VIP of these tests (captured, never routed).
pub const VIP: &str = "10.96.0.40";
/// Where the apps listen.
pub const APP_PORT: u16 = 8080;
/// This suite's bridge subnets; each test takes the first free one.
const BRIDGES: [u8; 5] = [42, 44, 46, 8, 9];
/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);

/// One web pod: its name (also what its server answers as), and what its Workload declares.
#[derive(Clone, Default)]
pub struct Web {
    pub name: String,
    pub weight: Option<u32>,
    /// (region, zone)
    pub locality: Option<(String, String)>,
    /// The server answers this much later (`http-serve --delay-ms`).
    pub delay_ms: u64,
}

pub fn web(name: &str) -> Web {
    Web {
        name: name.to_owned(),
        ..Web::default()
    }
}

impl Web {
    pub fn weight(self, weight: u32) -> Web {
        Web {
            weight: Some(weight),
            ..self
        }
    }

    pub fn zone(self, region: &str, zone: &str) -> Web {
        Web {
            locality: Some((region.to_owned(), zone.to_owned())),
            ..self
        }
    }

    pub fn slow(self, delay_ms: u64) -> Web {
        Web { delay_ms, ..self }
    }
}

/// `client` (.2) and the web pods (.3, .4, ...; label app=web), all enrolled on one node
/// whose config is their Workloads plus `service_yaml`.
///
/// Fields drop in order: the agent first, then servers, pods, the bridge.
pub struct Backends {
    pub node: MeshNode,
    pub servers: Vec<PodProcess>,
    pub client: Pod,
    pub webs: Vec<Pod>,
    /// Held for its Drop (removes the bridge after the pods).
    pub _bridge: Bridge,
}

impl Backends {
    /// `client_locality`: (region, zone) of the client's Workload.
    pub fn new(
        webs: &[Web],
        client_locality: Option<(&str, &str)>,
        service_yaml: &str,
    ) -> Backends {
        let bridge = Bridge::first_free(&BRIDGES).unwrap();
        let client = Pod::new(&bridge, "client", 2).unwrap();
        let mut config =
            workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]);
        if let Some((region, zone)) = client_locality {
            config += &format!("  locality: {{region: {region}, zone: {zone}}}\n");
        }
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, w) in webs.iter().enumerate() {
            let pod = Pod::new(&bridge, &w.name, 3 + i as u8).unwrap();
            config += &workload_yaml(
                &w.name,
                &format!("{}-uid", w.name),
                &[pod.ip()],
                &[("app", "web")],
            );
            if let Some(weight) = w.weight {
                config += &format!("  weight: {weight}\n");
            }
            if let Some((region, zone)) = &w.locality {
                config += &format!("  locality: {{region: {region}, zone: {zone}}}\n");
            }
            servers.push(http_server(&pod, w));
            pods.push(pod);
        }
        config += service_yaml;
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&client, "client-uid", "client").unwrap();
        for (pod, w) in pods.iter().zip(webs) {
            node.enroll(pod, &format!("{}-uid", w.name), &w.name)
                .unwrap();
        }
        Backends {
            node,
            servers,
            client,
            webs: pods,
            _bridge: bridge,
        }
    }
}

fn http_server(pod: &Pod, web: &Web) -> PodProcess {
    let (v4, v6) = (format!("0.0.0.0:{APP_PORT}"), format!("[::]:{APP_PORT}"));
    let delay = web.delay_ms.to_string();
    start_server(
        pod,
        &[
            "http-serve",
            "--listen",
            &v4,
            "--listen",
            &v6,
            "--name",
            &web.name,
            "--delay-ms",
            &delay,
        ],
    )
}

/// Service `web` at [`VIP`]:80 -> [`APP_PORT`] with `protocol`, `loadBalancer: <lb>` and
/// `more` (further spec lines, indented by two spaces).
pub fn service(protocol: &str, lb: &str, more: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  vips: [\"{VIP}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}, protocol: {protocol}}}]\n  selector: {{app: web}}\n  loadBalancer: {lb}\n{more}"
    )
}

/// `pod-tool http-load` from `pod`: `requests` requests to the service (more flags in
/// `extra`); its JSON summary (`served_by`, `errors`, ...).
pub fn load(pod: &Pod, requests: usize, extra: &[&str]) -> Value {
    let url = format!("http://{VIP}/");
    let requests = requests.to_string();
    let args = [
        &["http-load", "--url", &url, "--requests", &requests][..],
        extra,
    ]
    .concat();
    let summary = pod_tool_json(pod, &args);
    assert_eq!(summary["errors"], 0, "{summary}");
    summary
}

/// Requests (connections) `server` answered, from an http-load summary.
pub fn count(summary: &Value, server: &str) -> u64 {
    summary["served_by"][server].as_u64().unwrap_or(0)
}
