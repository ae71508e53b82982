//! The cross-node benchmark's testbed: one control plane (release `mesh-control`, embedded
//! store) and two release agents, `node-1` and `node-2`, following it, as two nodes would.
//! Both agents run on this machine; what makes them two nodes is that each serves only the
//! pods declared on its node, so traffic between those pods crosses from one agent to the
//! other exactly as it would between machines.
//!
//! Four pods on one bridge:
//! - `xclient` (declared on node-1, enrolled there) dials the service VIPs whose only endpoint is
//!   `xserver` (declared on node-2, enrolled there): the cross-node mesh path.
//! - `xdclient` -> `xdserver`: identical pods never declared nor enrolled ("direct"), so the
//!   direct and mesh runs can alternate within each repetition.
//!
//! Services and Workloads go in with `meshctl apply`. When the control plane issues join
//! tokens (`meshctl token create --node N`), each agent gets one (`--join-token`), which is
//! what gives it certificates for HBONE.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode};
use mesh_tests::{AgentProcess, Bridge, Pod, PodProcess, TempDir};
use serde_json::Value;

use super::testbed::start_server;
use crate::cmd::progress;

pub const NODE_1: &str = "node-1";
pub const NODE_2: &str = "node-2";
/// Away from the same-node bench's VIPs (10.96.0.20-22).
pub const ECHO_VIP: &str = "10.96.0.40";
pub const SINK_VIP: &str = "10.96.0.41";
pub const VIP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 9000;
/// The HBONE port on every pod IP (DESIGN.md, "Data path").
pub const HBONE_PORT: u16 = 15008;
const CLIENT: &str = "xclient";
const SERVER: &str = "xserver";
const CLIENT_UID: &str = "xbench-client-uid";
const SERVER_UID: &str = "xbench-server-uid";
/// How the mesh pods appear in `mesh-agent status`.
pub const CLIENT_POD: &str = "default/xclient";
pub const SERVER_POD: &str = "default/xserver";

/// Which path a cross-node measurement takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// xdclient -> xdserver pod IP: no agent involved.
    Direct,
    /// xclient (node-1) -> VIP -> xserver (node-2): both agents.
    Mesh,
}

/// Fields drop in order: agents first (they unpin their programs), then the control plane,
/// the servers, the pods and the bridge.
pub struct CrossBed {
    pub node1: Agent,
    pub node2: Agent,
    control: ControlPlane,
    meshctl: PathBuf,
    /// echo and sink of xserver, then of xdserver.
    servers: Vec<PodProcess>,
    pub client: Pod,
    pub server: Pod,
    pub dclient: Pod,
    pub dserver: Pod,
    _bridge: Bridge,
    pub pod_tool: PathBuf,
    /// Whether the agents were started with join tokens.
    pub join_tokens: bool,
    /// Whether node-1 holds a certificate for the client pod and node-2 for the server pod
    /// (`None`: the agent has no identities at all).
    pub certificates: [Option<bool>; 2],
}

/// What another scenario adds to the bed before the agents start: Services (YAML, applied
/// with the bed's own) and servers it starts in the server pods.
pub struct Extra<'a> {
    pub config: String,
    /// Called with the mesh server pod and the direct one; the bed keeps what it returns
    /// running until it drops.
    pub servers: &'a dyn Fn(&Pod, &Pod) -> Result<Vec<PodProcess>>,
}

impl CrossBed {
    /// Both nodes run `agent` (e.g. an older build, for before/after numbers).
    pub fn start(bins: &Path, agent: &Path, pod_tool: PathBuf) -> Result<CrossBed> {
        Self::start_with_agent(bins, agent, pod_tool, None)
    }

    pub fn start_with(bins: &Path, pod_tool: PathBuf, extra: Option<Extra>) -> Result<CrossBed> {
        Self::start_with_agent(bins, &bins.join("mesh-agent"), pod_tool, extra)
    }

    fn start_with_agent(
        bins: &Path,
        agent: &Path,
        pod_tool: PathBuf,
        extra: Option<Extra>,
    ) -> Result<CrossBed> {
        progress("cross-node: a bridge and four pods: xclient, xserver (mesh), xdclient, xdserver (direct)");
        let bridge = new_bridge()?;
        let client = Pod::new(&bridge, CLIENT, 2)?;
        let server = Pod::new(&bridge, SERVER, 3)?;
        let dclient = Pod::new(&bridge, "xdclient", 4)?;
        let dserver = Pod::new(&bridge, "xdserver", 5)?;
        let mut servers = Vec::new();
        for pod in [&server, &dserver] {
            servers.push(start_server(pod, &pod_tool, "echo-serve", ECHO_PORT)?);
            servers.push(start_server(pod, &pod_tool, "sink-serve", SINK_PORT)?);
        }
        // After the four above: `sink_pid` and friends index them.
        if let Some(extra) = &extra {
            servers.extend((extra.servers)(&server, &dserver)?);
        }
        progress("cross-node: control plane (embedded store) and two agents, node-1 and node-2");
        let control = ControlPlane::start_with_binary(bins.join("mesh-control"), "embedded")?;
        let meshctl = Meshctl {
            binary: bins.join("meshctl"),
            control: &control,
        };
        let config = [
            service_yaml("xecho", &[ECHO_VIP.parse()?], VIP_PORT, ECHO_PORT, SERVER),
            service_yaml("xsink", &[SINK_VIP.parse()?], VIP_PORT, SINK_PORT, SERVER),
            workload_yaml(CLIENT, CLIENT_UID, client.ip(), NODE_1),
            workload_yaml(SERVER, SERVER_UID, server.ip(), NODE_2),
            extra.map(|e| e.config).unwrap_or_default(),
        ]
        .concat();
        meshctl.apply(&config)?;
        let token1 = meshctl.join_token(NODE_1)?;
        let token2 = meshctl.join_token(NODE_2)?;
        let join_tokens = token1.is_some();
        let node1 = Agent::start(agent, NODE_1, &control.url(), token1)?;
        let node2 = Agent::start(agent, NODE_2, &control.url(), token2)?;
        // Enrollment checks the pod against its declared Workload: wait for the config.
        node2.enroll_when_declared(&server, SERVER_UID, SERVER)?;
        node1.enroll_when_declared(&client, CLIENT_UID, CLIENT)?;
        let certificates = [
            node1.wait_certificate(CLIENT)?,
            node2.wait_certificate(SERVER)?,
        ];
        Ok(CrossBed {
            node1,
            node2,
            control,
            meshctl: bins.join("meshctl"),
            servers,
            client,
            server,
            dclient,
            dserver,
            _bridge: bridge,
            pod_tool,
            join_tokens,
            certificates,
        })
    }

    /// The client pod of a path.
    pub fn client_pod(&self, path: Way) -> &Pod {
        match path {
            Way::Direct => &self.dclient,
            Way::Mesh => &self.client,
        }
    }

    pub fn echo(&self, path: Way) -> String {
        match path {
            Way::Direct => format!("{}:{ECHO_PORT}", self.dserver.ip()),
            Way::Mesh => format!("{ECHO_VIP}:{VIP_PORT}"),
        }
    }

    pub fn sink(&self, path: Way) -> String {
        match path {
            Way::Direct => format!("{}:{SINK_PORT}", self.dserver.ip()),
            Way::Mesh => format!("{SINK_VIP}:{VIP_PORT}"),
        }
    }

    /// PID of the sink server a path's streams end in.
    pub fn sink_pid(&self, path: Way) -> u32 {
        match path {
            Way::Mesh => self.servers[1].pid(),
            Way::Direct => self.servers[3].pid(),
        }
    }

    /// A process inside the mesh server pod (its /proc/<pid>/net shows the pod's sockets).
    pub fn server_pod_pid(&self) -> u32 {
        self.servers[0].pid()
    }

    /// A process inside the direct server pod.
    pub fn dserver_pid(&self) -> u32 {
        self.servers[2].pid()
    }

    pub fn pods(&self) -> [&Pod; 4] {
        [&self.client, &self.server, &self.dclient, &self.dserver]
    }

    pub fn agent_pids(&mut self) -> Vec<u32> {
        [self.node1.pid(), self.node2.pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn meshctl(&self) -> Meshctl<'_> {
        Meshctl {
            binary: self.meshctl.clone(),
            control: &self.control,
        }
    }

    /// `meshctl apply` of `yaml` (another scenario changing the config between its runs).
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.meshctl().apply(yaml)
    }

    /// `meshctl delete <kind> <namespace/name>`.
    pub fn delete(&self, kind: &str, name: &str) -> Result<()> {
        let out = self.meshctl().run(&["delete", kind, name])?;
        if !out.status.success() {
            bail!(
                "meshctl delete {kind} {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// `meshctl` (release) pointed at the bench's control plane.
struct Meshctl<'a> {
    binary: PathBuf,
    control: &'a ControlPlane,
}

impl Meshctl<'_> {
    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.binary)
            .args(["--server", &self.control.url()])
            .arg("--token-file")
            .arg(self.control.token_file())
            .args(args)
            .output()
            .with_context(|| format!("running meshctl {args:?}"))
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        let dir = mesh_tests::temp_dir()?;
        let file = dir.path().join("cross-node.yaml");
        std::fs::write(&file, yaml)?;
        let out = self.run(&["apply", "-f", &file.display().to_string()])?;
        if !out.status.success() {
            bail!(
                "meshctl apply failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `meshctl token create --node N` (printed alone on stdout), or `None` when this
    /// meshctl has no such command yet (agents then follow without one).
    fn join_token(&self, node: &str) -> Result<Option<String>> {
        let out = self.run(&["token", "create", "--node", node])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("unrecognized subcommand") {
                return Ok(None);
            }
            bail!(
                "meshctl token create --node {node} failed: {}",
                stderr.trim()
            );
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        anyhow::ensure!(!token.is_empty(), "meshctl token create printed no token");
        Ok(Some(token))
    }
}

/// One release agent following the control plane, with its own bpffs directory, state
/// directory and admin port. Dropping it kills the agent and removes its bpffs directory,
/// which unpins (and so detaches) every program it attached.
pub struct Agent {
    pub node: &'static str,
    process: Option<AgentProcess>,
    admin: SocketAddr,
    bpffs: PathBuf,
    dir: TempDir,
    binary: PathBuf,
}

impl Agent {
    fn start(binary: &Path, node: &'static str, url: &str, token: Option<String>) -> Result<Agent> {
        let dir = mesh_tests::temp_dir()?;
        let agent = Agent {
            node,
            process: None,
            admin: TcpListener::bind("127.0.0.1:0")?.local_addr()?,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{}-x{node}", mesh_tests::prefix())),
            dir,
            binary: binary.to_path_buf(),
        };
        let mut command = Command::new(binary);
        command.args(["run", "--control-plane", url]);
        if let Some(token) = &token {
            command.args(["--join-token", token]);
        }
        command
            .args(["--node-name", node])
            .args(["--admin-addr", &agent.admin.to_string()])
            .arg("--bpffs")
            .arg(&agent.bpffs)
            .arg("--state-dir")
            .arg(agent.state_dir())
            // As the same-node bench's agent (MeshNode): debug lines are errors only.
            .env("RUST_LOG", "info,mesh_agent=debug");
        let mut agent = agent;
        let mut process = AgentProcess::spawn_command(command)?;
        process.wait_ready(agent.admin, Duration::from_secs(30))?;
        agent.process = Some(process);
        Ok(agent)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(AgentProcess::pid)
    }

    /// The agent's log so far (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.binary)
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .with_context(|| format!("running mesh-agent {args:?}"))?;
        if !out.status.success() {
            bail!(
                "mesh-agent {args:?} on {} failed: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status_json(&self) -> Result<Value> {
        let text = self.cli_ok(&["status", "-o", "json"])?;
        serde_json::from_str(&text).context("status -o json is not JSON")
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) =
            mesh_tests::http_get_timeout(self.admin, "/metrics", Duration::from_secs(5))?;
        anyhow::ensure!(code == 200, "GET /metrics on {}: status {code}", self.node);
        Ok(body)
    }

    /// Waits (up to 20 s) until the agent holds a certificate for service account `sa` in
    /// `default` (`identity.certificates` of its status with a serial). `None` when the agent
    /// has no identities (an agent without them carries cross-node traffic in plaintext).
    fn wait_certificate(&self, sa: &str) -> Result<Option<bool>> {
        let suffix = format!("/ns/default/sa/{sa}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status_json()?;
            let identity = &status["identity"];
            if identity["enabled"] != true {
                return Ok(None);
            }
            let has = identity["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["spiffeId"]
                        .as_str()
                        .is_some_and(|id| id.ends_with(&suffix))
                        && !c["serial"].is_null()
                });
            if has || Instant::now() >= deadline {
                return Ok(Some(has));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Enrolls `pod` as Workload `name`, retrying while the agent has not yet received the
    /// config that declares it.
    fn enroll_when_declared(&self, pod: &Pod, uid: &str, name: &str) -> Result<()> {
        let mut args = MeshNode::enroll_args(pod, uid, name);
        args.extend(["--service-account".into(), name.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.cli_ok(&args) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "enrolling {name} on {}; agent log:\n{}",
                            self.node,
                            self.log_tail(30)
                        )
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.bpffs) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("bench: removing {}: {e}", self.bpffs.display());
            }
        }
    }
}

/// A Workload in namespace `default` on `node`, its service account and `app` label named
/// after it.
fn workload_yaml(name: &str, uid: &str, ip: IpAddr, node: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  uid: {uid}\n  ips: [\"{ip}\"]\n  node: {node}\n  serviceAccount: {name}\n  labels: {{app: {name}}}\n"
    )
}

/// The bench owns subnet indices 40..=55 (the harness's highest; 10.<200+i>.0.0/24): the
/// same-node testbed takes the highest free one, this one the lowest, so both can exist at
/// once and neither meets the tests' subnets.
fn new_bridge() -> Result<Bridge> {
    let mut last = None;
    for index in 40..=55 {
        match Bridge::new(index) {
            Ok(bridge) => return Ok(bridge),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least one index")).context("no free bridge subnet index in 40..=55")
}
