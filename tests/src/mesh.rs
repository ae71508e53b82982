//! A mesh node for tests, the demo and the benchmark: the real `mesh-agent` binary with its own
//! bpffs directory, state directory and admin port, driven through its real CLI.
//!
//! Dropping a [`MeshNode`] kills the agent and removes its bpffs directory, which unpins (and so
//! detaches) every program it attached: nothing is left in the kernel.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{cargo_bin, AgentProcess, Pod, TempDir};

/// Node name every test agent uses; workloads in test configs are placed on it.
pub const NODE: &str = "node-1";

static NODES: AtomicU32 = AtomicU32::new(0);

pub struct MeshNode {
    dir: TempDir,
    agent: Option<AgentProcess>,
    admin: SocketAddr,
    bpffs: PathBuf,
    config: PathBuf,
    binary: PathBuf,
    node: String,
    /// Control plane URLs; empty: the agent runs on the static config file.
    control_plane: Vec<String>,
    extra_args: Vec<String>,
}

impl MeshNode {
    /// Writes `config_yaml` (Service/Workload resources) and starts an agent on it.
    pub fn start(config_yaml: &str) -> Result<MeshNode> {
        Self::start_with_binary(cargo_bin("mesh-agent"), config_yaml)
    }

    pub fn start_with_binary(binary: PathBuf, config_yaml: &str) -> Result<MeshNode> {
        let mut node = Self::prepare(binary, NODE)?;
        std::fs::write(&node.config, config_yaml)?;
        node.start_agent()?;
        Ok(node)
    }

    /// An agent named `node` following the control plane(s) at `urls`, with extra `run`
    /// arguments. It joins with a token from the first of `urls` that is a
    /// [`ControlPlane`](crate::control::ControlPlane) of this process, unless `extra_args`
    /// has a `--join-token` of its own.
    pub fn start_with_control_plane(
        node: &str,
        urls: &[String],
        extra_args: &[&str],
    ) -> Result<MeshNode> {
        let mut args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--join-token")) {
            if let Some(token) = crate::control::join_token_for(urls, node)? {
                args.extend(["--join-token".to_owned(), token]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with_control_plane_args(node, urls, &args)
    }

    /// Like [`start_with_control_plane`](Self::start_with_control_plane) with exactly
    /// `extra_args`: no join token unless they have one (for tests of joining itself).
    pub fn start_with_control_plane_args(
        node: &str,
        urls: &[String],
        extra_args: &[&str],
    ) -> Result<MeshNode> {
        let mut mesh_node = Self::prepare(cargo_bin("mesh-agent"), node)?;
        mesh_node.control_plane = urls.to_vec();
        mesh_node.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        mesh_node.start_agent()?;
        Ok(mesh_node)
    }

    fn prepare(binary: PathBuf, node: &str) -> Result<MeshNode> {
        let dir = crate::temp_dir()?;
        let config = dir.path().join("mesh.yaml");
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}-{n}", crate::prefix()));
        Ok(MeshNode {
            dir,
            agent: None,
            admin: free_loopback_port()?,
            bpffs,
            config,
            binary,
            node: node.to_owned(),
            control_plane: Vec::new(),
            extra_args: Vec::new(),
        })
    }

    /// Replaces the extra `run` arguments of a stopped agent before `start_agent` (e.g. to
    /// restart it without its join token).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Points a stopped agent at other control plane URLs before `start_agent`.
    pub fn set_control_plane(&mut self, urls: &[String]) {
        self.control_plane = urls.to_vec();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The agent's `run` arguments.
    pub fn run_args(&self) -> Vec<String> {
        let source = if self.control_plane.is_empty() {
            vec!["--local-config".into(), self.config.display().to_string()]
        } else {
            vec!["--control-plane".into(), self.control_plane.join(",")]
        };
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(source);
        args.extend(self.extra_args.iter().cloned());
        if !args.iter().any(|a| a.starts_with("--drain-timeout-secs")) {
            // A stopping agent lets connections finish for this long; tests that stop an
            // agent with connections open need not wait the default 50 s.
            args.extend(["--drain-timeout-secs".into(), "3".into()]);
        }
        args.extend([
            "--node-name".into(),
            self.node.clone(),
            "--admin-addr".into(),
            self.admin.to_string(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
        ]);
        args
    }

    /// Starts the agent (again) and waits until it takes pods (not for full readiness: a
    /// test may keep the control plane away on purpose).
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        let mut agent = AgentProcess::spawn_command(self.agent_command())?;
        agent.wait_accepting_pods(self.admin, Duration::from_secs(20))?;
        self.agent = Some(agent);
        Ok(())
    }

    fn agent_command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(self.run_args())
            .env("RUST_LOG", "info,mesh_agent=debug");
        command
    }

    /// Starts a new agent beside the running one, as an upgrade does (a DaemonSet with
    /// maxSurge 1): it takes over the pods and the admin listeners, and the old one drains
    /// and exits. Waits until the new one serves; returns the old one's process.
    /// If the new one fails, the old one stays this node's agent.
    pub fn upgrade_agent(&mut self) -> Result<AgentProcess> {
        let old = self.agent.take().context("no agent is running")?;
        let mut new = AgentProcess::spawn_command(self.agent_command())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !new.log().contains("agent ready") {
            let failure = if let Some(status) = new.try_wait()? {
                format!("the new agent exited ({status}) instead of taking over")
            } else if std::time::Instant::now() > deadline {
                "the new agent did not take over within 30 s".to_string()
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            self.agent = Some(old);
            bail!("{failure}: {}", new.log_tail(5));
        }
        self.agent = Some(new);
        Ok(old)
    }

    /// SIGKILLs the agent (a crash): capture stays attached in the kernel.
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }

    /// SIGTERM and wait.
    pub fn stop_agent(&mut self) -> Result<()> {
        if let Some(mut agent) = self.agent.take() {
            agent.stop()?;
        }
        Ok(())
    }

    pub fn agent(&mut self) -> Option<&mut AgentProcess> {
        self.agent.as_mut()
    }

    /// Runs `mesh-agent <args> --state-dir <this node's>` and returns its output, whatever
    /// the exit code.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.binary)
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .with_context(|| format!("running mesh-agent {args:?}"))
    }

    /// Like [`cli`](Self::cli) but fails with stderr unless the command succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "mesh-agent {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The enroll arguments for a pod declared as Workload `name` with `uid` (namespace
    /// `default`, service account `default`).
    pub fn enroll_args(pod: &Pod, uid: &str, name: &str) -> Vec<String> {
        vec![
            "enroll".into(),
            "--uid".into(),
            uid.into(),
            "--name".into(),
            name.into(),
            "--netns".into(),
            pod.netns_path().display().to_string(),
            "--cgroup".into(),
            pod.cgroup_path().display().to_string(),
            "--ip".into(),
            pod.ip().to_string(),
        ]
    }

    pub fn enroll(&self, pod: &Pod, uid: &str, name: &str) -> Result<String> {
        let args = Self::enroll_args(pod, uid, name);
        self.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn unenroll(&self, uid: &str) -> Result<String> {
        self.cli_ok(&["unenroll", "--uid", uid])
    }

    pub fn status_json(&self) -> Result<serde_json::Value> {
        let text = self.cli_ok(&["status", "-o", "json"])?;
        serde_json::from_str(&text).context("status -o json is not JSON")
    }

    /// A per-pod counter from `status -o json`, e.g. `("default/client", "outbound", "connections")`.
    pub fn pod_counter(&self, pod: &str, direction: &str, counter: &str) -> Result<u64> {
        let status = self.status_json()?;
        let pods = status["pods"]
            .as_array()
            .context("status has no pods array")?;
        let entry = pods
            .iter()
            .find(|p| p["pod"] == pod)
            .with_context(|| format!("pod {pod} is not in the status"))?;
        entry[direction][counter]
            .as_u64()
            .with_context(|| format!("status has no {direction}.{counter} for {pod}"))
    }

    /// A kernel counter from `status -o json` (e.g. `connect_captured`).
    pub fn kernel_counter(&self, name: &str) -> Result<u64> {
        self.status_json()?["kernel"][name]
            .as_u64()
            .with_context(|| format!("status has no kernel counter {name}"))
    }

    /// Rewrites the config file and asks the agent to reload it (SIGHUP).
    pub fn reload_config(&mut self, config_yaml: &str) -> Result<()> {
        std::fs::write(&self.config, config_yaml)?;
        let agent = self.agent.as_ref().context("the agent is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        Ok(())
    }

    /// [`reload_config`](Self::reload_config), then waits until the agent serves the new
    /// config (its version rose). For a config the agent must accept: a rejected one fails
    /// here after the timeout.
    pub fn reload_config_and_wait(&mut self, config_yaml: &str) -> Result<()> {
        let version = crate::observe::AgentStatus::of(self).config_version();
        self.reload_config(config_yaml)?;
        crate::wait_until_ok(Duration::from_secs(10), || {
            let now = crate::observe::AgentStatus::of(self).config_version();
            anyhow::ensure!(
                now > version,
                "config version still {now}, not above {version}"
            );
            Ok(())
        })
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        self.kill_agent();
        // Unpinning the links detaches the programs; unpinning the maps frees them.
        if let Err(e) = std::fs::remove_dir_all(&self.bpffs) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("mesh-tests: removing {}: {e}", self.bpffs.display());
            }
        }
    }
}

fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// YAML for a Workload on [`NODE`] in namespace `default`.
pub fn workload_yaml(name: &str, uid: &str, ips: &[IpAddr], labels: &[(&str, &str)]) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  uid: {uid}\n  ips: [{}]\n  node: {NODE}\n  labels: {{{}}}\n",
        ips.join(", "),
        labels.join(", ")
    )
}

/// YAML for a Service in namespace `default` selecting `app: <app>`.
pub fn service_yaml(name: &str, vips: &[IpAddr], port: u16, target_port: u16, app: &str) -> String {
    let vips: Vec<String> = vips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  vips: [{}]\n  ports: [{{port: {port}, targetPort: {target_port}}}]\n  selector: {{app: {app}}}\n",
        vips.join(", ")
    )
}
