//! The benchmark's node: one bridge, two pod pairs and one agent.
//!
//! - `client` -> `server`: both enrolled; the client dials the service VIPs, so every
//!   connection takes the full mesh path (connect4 -> outbound listener -> agent -> server pod
//!   IP -> sk_lookup -> inbound listener -> agent -> app over the server pod's loopback).
//! - `dclient` -> `dserver`: identical pods on the same bridge that are never enrolled, so the
//!   agent is not involved at all ("direct"). Keeping a separate pair lets direct and mesh runs
//!   alternate within each repetition instead of running all direct runs first, so drift and
//!   noise from other work on the machine hit both alike.
//! - `client` -> `dserver` through a third VIP: only the outbound hop (dserver is declared as a
//!   workload but not enrolled, so nothing steers its inbound traffic). The capture comparison
//!   uses it: capture is the only thing that differs between its variants.
//!
//! Every server pod runs an echo server on :8080, a sink on :9000 and a peer server (answers,
//! then closes first when asked) on :8081.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{Bridge, Pod, PodProcess};
use serde_json::Value;

use crate::cmd::progress;

pub const ECHO_VIP: &str = "10.96.0.20";
pub const SINK_VIP: &str = "10.96.0.21";
/// Echo on the unenrolled `dserver`: outbound hop only.
pub const OUT_VIP: &str = "10.96.0.22";
/// The peer server (`pod-tool peer-serve`) on `server`.
pub const PEER_VIP: &str = "10.96.0.23";
pub const VIP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 9000;
pub const PEER_PORT: u16 = 8081;
pub const CLIENT_UID: &str = "bench-client-uid";
pub const SERVER_UID: &str = "bench-server-uid";
/// How the mesh pods appear in `mesh-agent status`.
pub const CLIENT_POD: &str = "default/client";
pub const SERVER_POD: &str = "default/server";

/// Fields drop in order: agent first (unpins its programs), then the servers, the pods and
/// the bridge.
pub struct Testbed {
    pub node: MeshNode,
    _servers: Vec<PodProcess>,
    pub client: Pod,
    server: Pod,
    pub dclient: Pod,
    pub dserver: Pod,
    _bridge: Bridge,
    pub pod_tool: PathBuf,
}

/// Which path a measurement uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// dclient -> dserver pod IP: no agent.
    Direct,
    /// client -> VIP: the full mesh path (outbound and inbound proxy).
    Mesh,
    /// dclient (not enrolled) -> server pod IP: only the inbound hop (sk_lookup -> inbound
    /// proxy -> app), to split the mesh's cost between its two hops.
    InboundOnly,
    /// client -> [`OUT_VIP`] -> dserver: only the outbound hop (capture -> outbound proxy).
    OutboundOnly,
}

impl Testbed {
    pub fn start(agent: PathBuf, pod_tool: PathBuf) -> Result<Testbed> {
        progress(
            "creating a bridge and four pods: client, server (mesh), dclient, dserver (direct)",
        );
        let bridge = new_bridge()?;
        let client = Pod::new(&bridge, "client", 2)?;
        let server = Pod::new(&bridge, "server", 3)?;
        let dclient = Pod::new(&bridge, "dclient", 4)?;
        let dserver = Pod::new(&bridge, "dserver", 5)?;
        let mut servers = Vec::new();
        for pod in [&server, &dserver] {
            servers.push(start_server(pod, &pod_tool, "echo-serve", ECHO_PORT)?);
            servers.push(start_server(pod, &pod_tool, "sink-serve", SINK_PORT)?);
            servers.push(start_server(pod, &pod_tool, "peer-serve", PEER_PORT)?);
        }
        let config = [
            service_yaml("echo", &[ECHO_VIP.parse()?], VIP_PORT, ECHO_PORT, "server"),
            service_yaml("sink", &[SINK_VIP.parse()?], VIP_PORT, SINK_PORT, "server"),
            service_yaml("peer", &[PEER_VIP.parse()?], VIP_PORT, PEER_PORT, "server"),
            workload_yaml("client", CLIENT_UID, &[client.ip()], &[("app", "client")]),
            workload_yaml("server", SERVER_UID, &[server.ip()], &[("app", "server")]),
            service_yaml(
                "echo-out",
                &[OUT_VIP.parse()?],
                VIP_PORT,
                ECHO_PORT,
                "dserver",
            ),
            workload_yaml(
                "dserver",
                "bench-dserver-uid",
                &[dserver.ip()],
                &[("app", "dserver")],
            ),
        ]
        .concat();
        progress("starting mesh-agent (release) and enrolling client and server");
        let node = MeshNode::start_with_binary(agent, &config)?;
        node.enroll(&server, SERVER_UID, "server")?;
        node.enroll(&client, CLIENT_UID, "client")?;
        Ok(Testbed {
            node,
            _servers: servers,
            client,
            server,
            dclient,
            dserver,
            _bridge: bridge,
            pod_tool,
        })
    }

    /// The pod the clients of a path run in.
    pub fn client_pod(&self, path: Via) -> &Pod {
        match path {
            Via::Direct | Via::InboundOnly => &self.dclient,
            Via::Mesh | Via::OutboundOnly => &self.client,
        }
    }

    /// The client pod and the echo server address for a path.
    pub fn echo(&self, path: Via) -> (&Pod, String) {
        self.endpoint(path, ECHO_VIP, ECHO_PORT)
    }

    /// The client pod and the sink address for a path.
    pub fn sink(&self, path: Via) -> (&Pod, String) {
        self.endpoint(path, SINK_VIP, SINK_PORT)
    }

    /// The client pod and the peer server address for a path.
    pub fn peer(&self, path: Via) -> (&Pod, String) {
        self.endpoint(path, PEER_VIP, PEER_PORT)
    }

    /// Where a path's client dials the server on `port` (`vip` on the mesh path; the
    /// outbound-only path always dials [`OUT_VIP`], the echo server on dserver).
    fn endpoint(&self, path: Via, vip: &str, port: u16) -> (&Pod, String) {
        match path {
            Via::Direct => (&self.dclient, format!("{}:{port}", self.dserver.ip())),
            Via::Mesh => (&self.client, format!("{vip}:{VIP_PORT}")),
            Via::InboundOnly => (&self.dclient, format!("{}:{port}", self.server.ip())),
            Via::OutboundOnly => (&self.client, format!("{OUT_VIP}:{VIP_PORT}")),
        }
    }

    /// Runs a pod-tool benchmark client in `pod` and returns the JSON it printed.
    pub fn tool(&self, pod: &Pod, args: &[String], timeout: Duration) -> Result<Value> {
        let out = pod.run(&self.pod_tool, args, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let mut value: Value = serde_json::from_str(line)
            .with_context(|| format!("pod-tool {args:?} printed no JSON: {stdout:?}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !stderr.is_empty() {
            value["stderr"] = Value::String(stderr);
        }
        Ok(value)
    }

    pub fn agent_pid(&mut self) -> Result<u32> {
        Ok(self.node.agent().context("the agent is not running")?.pid())
    }

    /// VmRSS of the agent, in KiB.
    pub fn agent_rss_kib(&mut self) -> Result<u64> {
        let pid = self.agent_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<agent>/status")
    }

    pub fn counters(&self) -> Result<Counters> {
        Counters::read(&self.node)
    }

    /// Where the socket hooks attached once for the node (capture keyed by network namespace)
    /// have their link pins.
    pub fn node_link_dir(&self) -> PathBuf {
        self.node.bpffs().join("node")
    }

    /// The pinned link of one of the node-wide socket hooks.
    pub fn node_link_pin(&self, program: &str) -> PathBuf {
        self.node_link_dir().join(program)
    }

    pub fn pods(&self) -> [&Pod; 4] {
        [&self.client, &self.server, &self.dclient, &self.dserver]
    }

    /// Removes the TIME_WAIT sockets in every pod (`ss -K state time-wait` inside its
    /// namespace), so one run's closed connections don't weigh on the next; returns how many
    /// each pod had, by short name.
    pub fn clear_time_wait(&self) -> Result<BTreeMap<String, u64>> {
        clear_time_wait(&self.pods())
    }

    /// TIME_WAIT sockets per pod, by short name.
    pub fn time_wait(&self) -> Result<BTreeMap<String, u64>> {
        self.pods()
            .into_iter()
            .map(|pod| Ok((pod.short_name().to_string(), time_wait(pod)?)))
            .collect()
    }
}

/// The bench's own subnet, away from the low indices the tests and the demo use, so it can
/// run while they do.
pub(super) fn new_bridge() -> Result<Bridge> {
    let mut last = None;
    for index in (40..=55).rev() {
        match Bridge::new(index) {
            Ok(bridge) => return Ok(bridge),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least one index")).context("no free bridge subnet index in 40..=55")
}

pub(super) fn start_server(
    pod: &Pod,
    pod_tool: &Path,
    kind: &str,
    port: u16,
) -> Result<PodProcess> {
    let listen = format!("0.0.0.0:{port}");
    let mut server = pod.spawn(pod_tool, [kind, "--listen", &listen])?;
    if !mesh_tests::wait_until(Duration::from_secs(10), || {
        server.stdout().contains("listening")
    }) {
        let alive = server.is_running();
        bail!(
            "{kind} in pod {} did not start (running: {alive}): {}",
            pod.name(),
            server.stderr()
        );
    }
    Ok(server)
}

/// Removes the TIME_WAIT sockets in `pods` (`ss -K state time-wait` inside each namespace);
/// how many each had, by short name.
pub(super) fn clear_time_wait(pods: &[&Pod]) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for pod in pods {
        let n = time_wait(pod)?;
        if n > 0 {
            pod.run("ss", ["-K", "state", "time-wait"], Duration::from_secs(30))
                .with_context(|| format!("clearing TIME_WAIT sockets in pod {}", pod.name()))?;
        }
        counts.insert(pod.short_name().to_string(), n);
    }
    Ok(counts)
}

/// TIME_WAIT sockets in a pod's network namespace (`tw` in its /proc/net/sockstat).
pub(super) fn time_wait(pod: &Pod) -> Result<u64> {
    let sockstat = pod.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))??;
    sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|k| *k == "tw")
                .and_then(|i| f.get(i + 1)?.parse().ok())
        })
        .context("no TCP tw count in /proc/net/sockstat")
}

/// Per-direction traffic counters of one pod.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub connections: u64,
    pub active: i64,
    pub failures: u64,
}

impl Traffic {
    fn of(v: &Value) -> Traffic {
        Traffic {
            connections: v["connections"].as_u64().unwrap_or(0),
            active: v["active"].as_i64().unwrap_or(0),
            failures: v["failures"].as_u64().unwrap_or(0),
        }
    }
}

/// What the agent's status says about the bench pods, from one `status -o json`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub client_out: Traffic,
    pub server_in: Traffic,
    pub kernel: BTreeMap<String, u64>,
}

impl Counters {
    pub fn read(node: &MeshNode) -> Result<Counters> {
        let status = node.status_json()?;
        let pods = status["pods"].as_array().context("status has no pods")?;
        let pod = |name: &str| -> Result<&Value> {
            pods.iter()
                .find(|p| p["pod"] == name)
                .with_context(|| format!("pod {name} is not in the agent's status"))
        };
        let kernel = status["kernel"]
            .as_object()
            .context("status has no kernel counters")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        Ok(Counters {
            client_out: Traffic::of(&pod(CLIENT_POD)?["outbound"]),
            server_in: Traffic::of(&pod(SERVER_POD)?["inbound"]),
            kernel,
        })
    }

    pub fn kernel(&self, name: &str) -> u64 {
        self.kernel.get(name).copied().unwrap_or(0)
    }
}
