//! Real etcd clusters for tests and benchmarks of the control plane's etcd store.
//!
//! [`EtcdCluster::start`] runs Debian's `etcd` (package `etcd-server`, `/usr/bin/etcd`) as
//! separate processes on loopback, one per member, each with its own client and peer port and a
//! data directory in a temporary directory. Members can be killed (SIGKILL, like a crashed
//! node) and restarted on the same data and ports. Dropping the cluster kills every member and
//! removes the data. Each member's output goes to a log file whose tail is printed when
//! something fails (see [`AgentProcess`]).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! mesh_tests::etcd::require_etcd();
//! let cluster = mesh_tests::etcd::EtcdCluster::start(3)?;
//! let endpoints = cluster.endpoints(); // ["127.0.0.1:40001", ...]
//! # Ok(()) }
//! ```

use crate::agent::AgentProcess;
use crate::http::http_get_timeout;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` package installs the server.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart_member`] wait for health.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// Whether the etcd server binary is installed.
pub fn etcd_available() -> bool {
    Path::new(ETCD_BINARY).is_file()
}

/// Fails the test unless Debian's etcd is installed (`cargo xtask test` installs it).
pub fn require_etcd() {
    assert!(
        etcd_available(),
        "{ETCD_BINARY} is missing: install etcd-server (apt-get install etcd-server; `cargo xtask test` does)"
    );
}

/// A running etcd cluster of real processes (see the module docs).
pub struct EtcdCluster {
    // Members before the directory: processes die before their data is removed.
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    process: Option<AgentProcess>,
    /// Earlier (killed) processes of this member, kept for their logs.
    previous: Vec<AgentProcess>,
}

impl EtcdCluster {
    /// Starts a `members`-member cluster and waits until every member reports healthy.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        anyhow::ensure!(members >= 1, "an etcd cluster needs at least one member");
        if !etcd_available() {
            bail!("{ETCD_BINARY} is missing: install etcd-server (apt-get install etcd-server)");
        }
        let dir = tempfile::Builder::new()
            .prefix("mesh-tests-etcd-")
            .tempdir()
            .context("creating the etcd data directory")?;
        let ports = free_loopback_ports(2 * members)?;
        let members = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                process: None,
                previous: Vec::new(),
            })
            .collect();
        let token = format!(
            "mesh-tests-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = EtcdCluster {
            members,
            dir,
            token,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client endpoints of all members (also killed ones), "127.0.0.1:port".
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client endpoint of member `i`, "127.0.0.1:port".
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client.to_string()
    }

    /// Data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// Whether member `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .process
            .as_mut()
            .is_some_and(AgentProcess::is_running)
    }

    /// SIGKILLs member `i` (a crash: its data stays for [`restart_member`](Self::restart_member)).
    pub fn kill_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        if let Some(mut process) = member.process.take() {
            process.kill();
            member.previous.push(process);
        }
    }

    /// Starts member `i` again (after [`kill_member`](Self::kill_member)) on the same ports and
    /// data, and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.kill_member(i);
        self.spawn(i)?;
        let deadline = Instant::now() + START_TIMEOUT;
        self.wait_member_healthy(i, deadline)
    }

    /// Waits until every running member answers `GET /health` with `{"health":"true"}`.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            if self.members[i].process.is_some() {
                self.wait_member_healthy(i, deadline)?;
            }
        }
        Ok(())
    }

    /// The last `n` lines of member `i`'s current log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        self.members[i]
            .process
            .as_ref()
            .or(self.members[i].previous.last())
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// Prints the tail of every member's log to stderr.
    pub fn print_logs(&self) {
        for member in &self.members {
            if let Some(p) = member.process.as_ref().or(member.previous.last()) {
                eprintln!("==== etcd member {} ====", member.name);
                p.print_log_tail();
            }
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self.initial_cluster();
        let data_dir = self.data_dir(i);
        let member = &self.members[i];
        let mut cmd = Command::new(ETCD_BINARY);
        // Ambient ETCD_* variables would override our flags.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(name);
            }
        }
        if std::env::consts::ARCH != "x86_64" {
            let arch = match std::env::consts::ARCH {
                "aarch64" => "arm64",
                other => other,
            };
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let client_url = format!("http://{}", member.client);
        let peer_url = format!("http://{}", member.peer);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Loopback: elect fast so killing a member costs little test time.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let process = AgentProcess::spawn_command(cmd)
            .with_context(|| format!("starting etcd member {}", member.name))?;
        self.members[i].process = Some(process);
        Ok(())
    }

    fn wait_member_healthy(&mut self, i: usize, deadline: Instant) -> Result<()> {
        let member = &mut self.members[i];
        let Some(process) = member.process.as_mut() else {
            bail!("etcd member {} is not running", member.name);
        };
        loop {
            if let Some(status) = process.try_wait()? {
                process.print_log_tail();
                bail!(
                    "etcd member {} exited ({status}) before becoming healthy:\n{}",
                    member.name,
                    process.log_tail(30)
                );
            }
            let last = match http_get_timeout(member.client, "/health", Duration::from_secs(1)) {
                Ok((200, body)) if body.contains("true") => return Ok(()),
                Ok((code, body)) => format!("status {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                process.print_log_tail();
                bail!(
                    "etcd member {} not healthy at http://{}/health; last: {last}\n{}",
                    member.name,
                    member.client,
                    process.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_loopback_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| l.local_addr().context("local_addr"))
        .collect()
}
