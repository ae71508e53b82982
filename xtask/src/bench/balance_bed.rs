//! The load-balancing section's bed: one agent and, on one bridge,
//! - `bclient` (enrolled) dialing the `lb` Service VIP, whose three endpoints `bep1`..`bep3`
//!   (enrolled, `app: bep`) each run an echo server and an HTTP server (`pod-tool
//!   http-serve`, named after the pod);
//! - `bdclient` and `bdep1`..`bdep3`: identical pods never enrolled, with the same servers
//!   ("direct": the client dials the pod IPs itself, no agent involved).
//!
//! The Service's ports: 80 (TCP, to the echo servers: the connection-rate runs), 81 (HTTP,
//! balanced per request) and 82 (TCP, to the HTTP servers: balanced per connection). Its
//! `loadBalancer` and `outlierDetection` change between runs through the agent's local config
//! (SIGHUP); a change counts once the agent's status shows the new config version and policy.
//! Active health checks are slowed so they never call an endpoint unhealthy within a run:
//! what keeps a killed endpoint's failures from the clients is the connect retry (and
//! outlier ejection) alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::{Bridge, Pod, PodProcess};
use serde_json::Value;

use super::testbed::{clear_time_wait, new_bridge, start_server};
use crate::cmd::progress;

/// Away from the other sections' VIPs (10.96.0.20-25, 40-42).
pub const VIP: &str = "10.96.0.27";
/// Service ports: echo over TCP, HTTP balanced per request, HTTP relayed as TCP.
pub const ECHO_VIP_PORT: u16 = 80;
pub const HTTP_VIP_PORT: u16 = 81;
pub const TCP_HTTP_VIP_PORT: u16 = 82;
/// Where the endpoints' servers listen.
pub const ECHO_PORT: u16 = 8080;
pub const HTTP_PORT: u16 = 8090;
pub const ENDPOINTS: usize = 3;
const SERVICE: &str = "default/lb";
const CLIENT_POD: &str = "default/bclient";
/// How long a config change may take to show in the agent's status.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One probe a minute and 1000 failures to go unhealthy (defaults: every 2 s, 2 failures).
const LAX_HEALTH: &str = "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
spec:\n  healthCheck: {intervalMs: 60000, timeoutMs: 1000, unhealthyThreshold: 1000}\n";

/// The outlier detection of the runs that have it: the defaults, written out (an ejection
/// lasts the whole run, so the tries on a killed endpoint are those before it).
pub const OUTLIER: &str =
    "{consecutiveErrors: 5, intervalMs: 10000, baseEjectionMs: 30000, maxEjectionPercent: 50}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    /// Hashing on the client's source IP.
    Maglev,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Maglev => "maglev",
        }
    }

    fn yaml(self) -> &'static str {
        match self {
            Policy::RoundRobin => "{policy: round_robin}",
            Policy::LeastRequest => "{policy: least_request}",
            Policy::Maglev => "{policy: maglev, hashOn: {sourceIp: true}}",
        }
    }

    /// How `mesh-agent status` shows it.
    fn in_status(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Maglev => "maglev(source ip)",
        }
    }
}

/// The Service's balancing config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lb {
    pub policy: Policy,
    pub outlier: bool,
}

/// Which copy of the endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Mesh,
    Direct,
}

/// Fields drop in order: the agent first, then the servers, the pods, the bridge.
pub struct BalanceBed {
    pub node: MeshNode,
    /// `http-serve` of each endpoint, mesh ones first (one may be killed for a while).
    http: Vec<Option<PodProcess>>,
    _echo: Vec<PodProcess>,
    pub client: Pod,
    pub dclient: Pod,
    pub endpoints: Vec<Pod>,
    pub direct: Vec<Pod>,
    _bridge: Bridge,
    pub pod_tool: PathBuf,
    workloads: String,
    lb: Lb,
}

impl BalanceBed {
    pub fn start(agent: PathBuf, pod_tool: PathBuf) -> Result<BalanceBed> {
        progress(
            "balance: a bridge and pods bclient, bep1-bep3 (mesh), bdclient, bdep1-bdep3 (direct)",
        );
        let bridge = new_bridge()?;
        let client = Pod::new(&bridge, "bclient", 2)?;
        let dclient = Pod::new(&bridge, "bdclient", 3)?;
        let pods = |prefix: &str, first: u8| -> Result<Vec<Pod>> {
            (0..ENDPOINTS)
                .map(|i| Pod::new(&bridge, &format!("{prefix}{}", i + 1), first + i as u8))
                .collect()
        };
        let endpoints = pods("bep", 4)?;
        let direct = pods("bdep", 4 + ENDPOINTS as u8)?;
        let mut echo = Vec::new();
        let mut http = Vec::new();
        for pod in endpoints.iter().chain(&direct) {
            echo.push(start_server(pod, &pod_tool, "echo-serve", ECHO_PORT)?);
            http.push(Some(http_serve(pod, &pod_tool)?));
        }
        let mut workloads = workload_yaml(
            "bclient",
            "bclient-uid",
            &[client.ip()],
            &[("app", "bclient")],
        );
        for pod in &endpoints {
            let name = pod.short_name();
            workloads +=
                &workload_yaml(name, &format!("{name}-uid"), &[pod.ip()], &[("app", "bep")]);
        }
        let lb = Lb {
            policy: Policy::RoundRobin,
            outlier: false,
        };
        progress("balance: starting mesh-agent (release) and enrolling the mesh pods");
        let node = MeshNode::start_with_binary(agent, &config(&workloads, lb))?;
        for pod in &endpoints {
            let name = pod.short_name();
            node.enroll(pod, &format!("{name}-uid"), name)?;
        }
        node.enroll(&client, "bclient-uid", "bclient")?;
        let bed = BalanceBed {
            node,
            http,
            _echo: echo,
            client,
            dclient,
            endpoints,
            direct,
            _bridge: bridge,
            pod_tool,
            workloads,
            lb,
        };
        bed.wait_for(lb)?;
        Ok(bed)
    }

    /// Puts `lb` in force (unless it is already) and waits until the agent's status shows it.
    pub fn set_lb(&mut self, lb: Lb) -> Result<()> {
        if lb == self.lb {
            return Ok(());
        }
        let before = self.config_version()?;
        self.node.reload_config(&config(&self.workloads, lb))?;
        ensure!(
            mesh_tests::wait_until(APPLY_TIMEOUT, || self
                .config_version()
                .is_ok_and(|v| v > before)),
            "the agent did not load the changed config (version still {before})"
        );
        self.lb = lb;
        self.wait_for(lb)
    }

    fn config_version(&self) -> Result<u64> {
        Ok(self.node.status_json()?["config"]["version"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until the status shows `lb`'s policy, three endpoints and none ejected.
    fn wait_for(&self, lb: Lb) -> Result<()> {
        let mut last = Value::Null;
        let ok = mesh_tests::wait_until(APPLY_TIMEOUT, || match self.service() {
            Ok(s) => {
                let endpoints = s["endpoints"].as_array().cloned().unwrap_or_default();
                let ok = s["policy"] == lb.policy.in_status()
                    && endpoints.len() == ENDPOINTS
                    && endpoints.iter().all(|e| e["ejectedMs"].is_null());
                last = s;
                ok
            }
            Err(_) => false,
        });
        ensure!(
            ok,
            "the agent's status never showed policy {} with {ENDPOINTS} endpoints, none \
             ejected: {last}",
            lb.policy.in_status()
        );
        Ok(())
    }

    /// The `lb` Service in the agent's status.
    pub fn service(&self) -> Result<Value> {
        let status = self.node.status_json()?;
        status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == SERVICE))
            .cloned()
            .with_context(|| format!("no service {SERVICE} in the agent's status"))
    }

    /// Each endpoint's latency estimate under `least_request` (ms, from the status; null
    /// before the agent has one), in [`BalanceBed::endpoints`] order.
    pub fn latency_estimates(&self) -> Result<Vec<Value>> {
        let service = self.service()?;
        let endpoints = service["endpoints"].as_array().cloned().unwrap_or_default();
        Ok(self
            .endpoints
            .iter()
            .map(|pod| {
                let workload = format!("default/{}", pod.short_name());
                endpoints
                    .iter()
                    .find(|e| e["workload"] == workload)
                    .map_or(Value::Null, |e| e["load"]["latencyMs"].clone())
            })
            .collect())
    }

    /// Whether the status shows endpoint `pod` ejected.
    pub fn ejected(&self, pod: &Pod) -> Result<bool> {
        let workload = format!("default/{}", pod.short_name());
        Ok(self.service()?["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["workload"] == workload && !e["ejectedMs"].is_null()))
    }

    /// The agent's counters: the client's outbound connections, connect4 captures and each
    /// mesh endpoint's inbound connections.
    pub fn counters(&self) -> Result<Counters> {
        let status = self.node.status_json()?;
        let pod = |name: &str, direction: &str| -> Result<u64> {
            status["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["pod"] == name))
                .map(|p| p[direction]["connections"].as_u64().unwrap_or(0))
                .with_context(|| format!("pod {name} is not in the agent's status"))
        };
        Ok(Counters {
            client_out: pod(CLIENT_POD, "outbound")?,
            captured: status["kernel"]["connect_captured"].as_u64().unwrap_or(0),
            endpoints_in: self
                .endpoints
                .iter()
                .map(|e| pod(&format!("default/{}", e.short_name()), "inbound"))
                .collect::<Result<_>>()?,
        })
    }

    /// Runs `pod-tool args` in `pod` and returns the JSON it printed last.
    pub fn tool(&self, pod: &Pod, args: &[String], timeout: Duration) -> Result<Value> {
        let out = pod.run(&self.pod_tool, args, timeout)?;
        parse_json(&String::from_utf8_lossy(&out.stdout))
    }

    /// Starts `pod-tool args` in `pod` without waiting for it.
    pub fn spawn_tool(&self, pod: &Pod, args: &[String]) -> Result<PodProcess> {
        pod.spawn(&self.pod_tool, args)
    }

    /// The pod whose HTTP server a failure run kills: the last endpoint of `side`.
    pub fn victim(&self, side: Side) -> &Pod {
        match side {
            Side::Mesh => &self.endpoints[ENDPOINTS - 1],
            Side::Direct => &self.direct[ENDPOINTS - 1],
        }
    }

    fn victim_slot(side: Side) -> usize {
        match side {
            Side::Mesh => ENDPOINTS - 1,
            Side::Direct => 2 * ENDPOINTS - 1,
        }
    }

    /// SIGKILLs the victim's HTTP server: from now on its port refuses connections.
    pub fn kill_http(&mut self, side: Side) {
        if let Some(mut server) = self.http[Self::victim_slot(side)].take() {
            server.kill();
        }
    }

    /// Starts the victim's HTTP server again (if it was killed).
    pub fn restart_http(&mut self, side: Side) -> Result<()> {
        let slot = Self::victim_slot(side);
        if self.http[slot].is_none() {
            self.http[slot] = Some(http_serve(self.victim(side), &self.pod_tool)?);
        }
        Ok(())
    }

    /// Removes TIME_WAIT sockets in every pod, so one run's closed connections don't weigh
    /// on the next.
    pub fn clear_time_wait(&self) -> Result<()> {
        let pods: Vec<&Pod> = [&self.client, &self.dclient]
            .into_iter()
            .chain(&self.endpoints)
            .chain(&self.direct)
            .collect();
        clear_time_wait(&pods).map(|_| ())
    }

    pub fn agent_pid(&mut self) -> Option<u32> {
        self.node.agent().map(|a| a.pid())
    }

    pub fn log_tail(&mut self) -> String {
        self.node
            .agent()
            .map(|a| a.log_tail(30))
            .unwrap_or_default()
    }
}

/// What the agent counted at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub client_out: u64,
    pub captured: u64,
    pub endpoints_in: Vec<u64>,
}

impl Counters {
    /// `later - self`, counter by counter (a counter that went back counts as none).
    pub fn until(&self, later: &Counters) -> Counters {
        Counters {
            client_out: later.client_out.saturating_sub(self.client_out),
            captured: later.captured.saturating_sub(self.captured),
            endpoints_in: later
                .endpoints_in
                .iter()
                .zip(&self.endpoints_in)
                .map(|(l, e)| l.saturating_sub(*e))
                .collect(),
        }
    }

    pub fn nothing(&self) -> bool {
        self.client_out == 0 && self.captured == 0 && self.endpoints_in.iter().all(|n| *n == 0)
    }
}

/// The agent's config: the Workloads, the `lb` Service with `lb`, lax health checks.
fn config(workloads: &str, lb: Lb) -> String {
    let outlier = if lb.outlier {
        format!("  outlierDetection: {OUTLIER}\n")
    } else {
        String::new()
    };
    format!(
        "{workloads}---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: lb}}\nspec:\n  \
         vips: [\"{VIP}\"]\n  ports: [{{port: {ECHO_VIP_PORT}, targetPort: {ECHO_PORT}, \
         protocol: tcp}}, {{port: {HTTP_VIP_PORT}, targetPort: {HTTP_PORT}, protocol: http}}, \
         {{port: {TCP_HTTP_VIP_PORT}, targetPort: {HTTP_PORT}, protocol: tcp}}]\n  selector: \
         {{app: bep}}\n  loadBalancer: {}\n{outlier}{LAX_HEALTH}",
        lb.policy.yaml()
    )
}

/// `pod-tool http-serve` on [`HTTP_PORT`], named after its pod.
fn http_serve(pod: &Pod, pod_tool: &Path) -> Result<PodProcess> {
    let listen = format!("0.0.0.0:{HTTP_PORT}");
    let args = [
        "http-serve",
        "--listen",
        &listen,
        "--name",
        pod.short_name(),
    ];
    let mut server = pod.spawn(pod_tool, args)?;
    let started = mesh_tests::wait_until(Duration::from_secs(10), || {
        server.stdout().contains("listening") || !server.is_running()
    });
    ensure!(
        started && server.is_running(),
        "http-serve in pod {} did not start: {}",
        pod.name(),
        server.stderr()
    );
    Ok(server)
}

/// The last line of a pod-tool run, as JSON.
pub fn parse_json(stdout: &str) -> Result<Value> {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("pod-tool printed no JSON: {stdout:?}"))
}

/// TCP resets `pod`'s kernel sent (`Tcp: OutRsts` of its network namespace): one per
/// connection attempt to a port where nothing listens, and one per segment arriving on a
/// connection whose socket is gone.
pub fn resets_sent(pod: &Pod) -> Result<u64> {
    let snmp = pod.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let column = names
        .and_then(|n| n.split_whitespace().position(|n| n == "OutRsts"))
        .context("no Tcp OutRsts in /proc/net/snmp")?;
    values
        .and_then(|v| v.split_whitespace().nth(column))
        .and_then(|v| v.parse().ok())
        .context("no Tcp OutRsts value in /proc/net/snmp")
}

/// What the agent's `/metrics` says went wrong: the `lb` Service's requests answered other
/// than 2xx, by `<response_code> <response_flags>`, and `mesh_proxy_failures_total` by reason.
pub fn trouble(metrics: &str) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        let key = match name {
            "istio_requests_total" if labels.contains("destination_service_name=\"lb\"") => {
                let code = label(labels, "response_code").unwrap_or("?");
                if code.starts_with('2') {
                    continue;
                }
                format!("{code} {}", label(labels, "response_flags").unwrap_or("-"))
            }
            "mesh_proxy_failures_total" => {
                format!("proxy failure {}", label(labels, "reason").unwrap_or("?"))
            }
            _ => continue,
        };
        *by.entry(key).or_default() += n;
    }
    by
}

/// `later - before`, keeping what rose.
pub fn rose(
    before: &BTreeMap<String, u64>,
    later: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    later
        .iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    labels[start..].split('"').next()
}

impl BalanceBed {
    pub fn trouble(&self) -> Result<BTreeMap<String, u64>> {
        Ok(trouble(&mesh_tests::two_nodes::metrics(&self.node)?))
    }
}
