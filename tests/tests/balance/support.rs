//! Building blocks of the balancing tests: a client pod and web pods (each an `http-serve`
//! named after it) behind one Service `web`, on one node, with the weights and localities
//! under test on their Workloads; what the agent's status says of the service's endpoints;
//! requests with one key each, and what the kernel counted in a pod.

use std::time::Duration;

use mesh_tests::cargo_bin;
use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::observe::{pod_tool_json, start_server};
use mesh_tests::wait::wait_until;
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

/// Health checks every 200 ms (default 2 s), 2 failures to go unhealthy: an endpoint whose
/// app died is avoided within about half a second.
pub const FAST_HEALTH: &str = "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  healthCheck: {intervalMs: 200, timeoutMs: 200}\n";

/// Health checks that never call an endpoint unhealthy within a test (one probe a minute,
/// 1000 failures needed): an endpoint refusing connections stays in rotation, so what hides
/// it from clients is the connect retry alone.
pub const LAX_HEALTH: &str = "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  healthCheck: {intervalMs: 60000, timeoutMs: 1000, unhealthyThreshold: 1000}\n";

/// One web pod: its name (also what its server answers as), and what its Workload declares.
#[derive(Clone, Default)]
pub struct Web {
    pub name: String,
    pub weight: Option<u32>,
    /// (region, zone)
    pub locality: Option<(String, String)>,
    /// The server answers this much later (`http-serve --delay-ms`).
    pub delay_ms: u64,
    /// Nothing listens in the pod: every connection to it is refused.
    pub refuses: bool,
    /// The server answers every request with this status (`http-serve --fail-status`).
    pub fail_status: Option<u16>,
    /// Declared but neither enrolled nor reachable (its link is down, nothing answers for
    /// its address): every connection to it times out.
    pub unreachable: bool,
    /// Declared with label `app: spare`, so not an endpoint of `web` (until redeclared).
    pub spare: bool,
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

    pub fn failing(self, status: u16) -> Web {
        Web {
            fail_status: Some(status),
            ..self
        }
    }

    pub fn refusing(self) -> Web {
        Web {
            refuses: true,
            ..self
        }
    }

    pub fn unreachable(self) -> Web {
        Web {
            unreachable: true,
            ..self
        }
    }

    /// The same pod, selected by `web` or not.
    pub fn selected(self, selected: bool) -> Web {
        Web {
            spare: !selected,
            ..self
        }
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
    client_locality: Option<(String, String)>,
    service_yaml: String,
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
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, w) in webs.iter().enumerate() {
            let pod = Pod::new(&bridge, &w.name, 3 + i as u8).unwrap();
            if w.unreachable {
                pod.run("ip", ["link", "set", "eth0", "down"], T).unwrap();
            } else if !w.refuses {
                servers.push(http_server(&pod, w));
            }
            pods.push(pod);
        }
        let client_locality =
            client_locality.map(|(region, zone)| (region.to_owned(), zone.to_owned()));
        let config = config_yaml(&client, client_locality.as_ref(), &pods, webs, service_yaml);
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&client, "client-uid", "client").unwrap();
        for (pod, w) in pods.iter().zip(webs).filter(|(_, w)| !w.unreachable) {
            node.enroll(pod, &format!("{}-uid", w.name), &w.name)
                .unwrap();
        }
        Backends {
            node,
            servers,
            client,
            webs: pods,
            _bridge: bridge,
            client_locality,
            service_yaml: service_yaml.to_owned(),
        }
    }

    /// Declares the web pods anew as `webs` (same pods, same order: e.g. another one
    /// selected), reloads the agent's config and waits until the service's endpoints are
    /// the selected ones.
    pub fn redeclare(&mut self, webs: &[Web]) {
        assert_eq!(webs.len(), self.webs.len(), "one Web per pod");
        let config = config_yaml(
            &self.client,
            self.client_locality.as_ref(),
            &self.webs,
            webs,
            &self.service_yaml,
        );
        self.node.reload_config(&config).unwrap();
        let mut want: Vec<String> = webs
            .iter()
            .filter(|w| !w.spare)
            .map(|w| format!("default/{}", w.name))
            .collect();
        want.sort();
        let current = || {
            let mut names: Vec<String> = self
                .endpoints()
                .iter()
                .filter_map(|e| e["workload"].as_str().map(str::to_owned))
                .collect();
            names.sort();
            names
        };
        assert!(
            wait_until(T, || current() == want),
            "the endpoints of web never became {want:?}: {:?}",
            current()
        );
    }

    /// The endpoints of `default/web` in the agent's status (`workload`, `health`, ...).
    pub fn endpoints(&self) -> Vec<Value> {
        let status = self.node.status_json().unwrap();
        let web = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "default/web")
            .cloned()
            .unwrap_or_else(|| panic!("no service default/web in the status: {status}"));
        web["endpoints"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the node's status shows each (endpoint, health).
    pub fn wait_for_health(&self, want: &[(&str, &str)]) {
        let reached = || {
            let endpoints = self.endpoints();
            want.iter().all(|(name, health)| {
                endpoints
                    .iter()
                    .any(|e| e["workload"] == format!("default/{name}") && e["health"] == *health)
            })
        };
        assert!(
            wait_until(T, reached),
            "health never became {want:?}: {:?}",
            self.endpoints()
        );
    }
}

/// The client's Workload and the web pods' (weights, localities, `app: web` or `app: spare`)
/// plus `service_yaml`.
fn config_yaml(
    client: &Pod,
    client_locality: Option<&(String, String)>,
    pods: &[Pod],
    webs: &[Web],
    service_yaml: &str,
) -> String {
    let mut config = workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]);
    if let Some((region, zone)) = client_locality {
        config += &format!("  locality: {{region: {region}, zone: {zone}}}\n");
    }
    for (pod, w) in pods.iter().zip(webs) {
        let app = if w.spare { "spare" } else { "web" };
        config += &workload_yaml(
            &w.name,
            &format!("{}-uid", w.name),
            &[pod.ip()],
            &[("app", app)],
        );
        if let Some(weight) = w.weight {
            config += &format!("  weight: {weight}\n");
        }
        if let Some((region, zone)) = &w.locality {
            config += &format!("  locality: {{region: {region}, zone: {zone}}}\n");
        }
    }
    config + service_yaml
}

fn http_server(pod: &Pod, web: &Web) -> PodProcess {
    let (v4, v6) = (format!("0.0.0.0:{APP_PORT}"), format!("[::]:{APP_PORT}"));
    let delay = web.delay_ms.to_string();
    let mut args = vec![
        "http-serve",
        "--listen",
        &v4,
        "--listen",
        &v6,
        "--name",
        &web.name,
        "--delay-ms",
        &delay,
    ];
    let status = web.fail_status.map(|s| s.to_string());
    if let Some(status) = &status {
        args.extend(["--fail-status", status]);
    }
    start_server(pod, &args)
}

/// Service `web` at [`VIP`]:80 -> [`APP_PORT`] with `protocol`, `loadBalancer: <lb>` and
/// `more` (further spec lines, indented by two spaces).
pub fn service(protocol: &str, lb: &str, more: &str) -> String {
    service_ports(&[(80, APP_PORT, protocol)], lb, more)
}

/// [`service`] with `ports`: (port, target port, protocol) each.
pub fn service_ports(ports: &[(u16, u16, &str)], lb: &str, more: &str) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(port, target, protocol)| {
            format!("{{port: {port}, targetPort: {target}, protocol: {protocol}}}")
        })
        .collect();
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  vips: [\"{VIP}\"]\n  ports: [{}]\n  selector: {{app: web}}\n  loadBalancer: {lb}\n{more}",
        ports.join(", ")
    )
}

/// `pod-tool http-load` from `pod`: `requests` requests to the service (more flags in
/// `extra`); its JSON summary (`served_by`, `errors`, ...).
pub fn load(pod: &Pod, requests: usize, extra: &[&str]) -> Value {
    load_url(pod, &format!("http://{VIP}/"), requests, extra)
}

/// [`load`] to any `url`.
pub fn load_url(pod: &Pod, url: &str, requests: usize, extra: &[&str]) -> Value {
    let requests = requests.to_string();
    let args = [
        &["http-load", "--url", url, "--requests", &requests][..],
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

/// Which server answered each request to `url` with one of `headers` (`name: value`), each
/// a `pod-tool http-get` of its own (so its own connection), run one after the other by one
/// shell in `pod`: hundreds of requests with different keys take a second or two this way.
pub fn served_by_each(pod: &Pod, url: &str, headers: &[String]) -> Vec<String> {
    let tool = cargo_bin("pod-tool");
    let mut script = String::from("set -u\n");
    for header in headers {
        assert!(
            !format!("{url}{header}").contains('\''),
            "no quotes in {url:?} {header:?}"
        );
        script += &format!(
            "'{}' http-get '{url}' -H '{header}' || echo FAILED; echo\n",
            tool.display()
        );
    }
    let out = pod
        .run("sh", ["-c", &script], T * 3)
        .unwrap_or_else(|e| panic!("requests from {}: {e:#}", pod.name()));
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            // `name=<NAME> peer=... local=...`
            l.strip_prefix("name=")
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("not an answer of http-serve: {l:?}"))
                .to_owned()
        })
        .collect();
    assert_eq!(answers.len(), headers.len(), "{text}");
    answers
}

/// TCP resets `pod`'s kernel sent (`Tcp: OutRsts` of its network namespace): one per
/// connection attempt to a port where nothing listens, so the count of attempts on an
/// endpoint that refuses connections.
pub fn resets_sent(pod: &Pod) -> u64 {
    let snmp = pod
        .in_netns(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}
