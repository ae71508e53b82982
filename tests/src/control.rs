//! A control-plane replica for tests and benchmarks: the real `mesh-control` binary, and the
//! real `meshctl` pointed at it with its admin token.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{cargo_bin, wait_until, AgentProcess, TempDir};

pub struct ControlPlane {
    _dir: Option<TempDir>,
    data_dir: PathBuf,
    listen: SocketAddr,
    store: String,
    process: Option<AgentProcess>,
    binary: PathBuf,
    /// More `serve` arguments (e.g. `--ca-cert`, `--ca-key`).
    extra_args: Vec<String>,
}

/// Running control planes by URL: how [`crate::mesh::MeshNode::start_with_control_plane`]
/// gets a join token for an agent given only URLs. (admin token file, CA file)
static RUNNING: Mutex<Option<HashMap<String, (PathBuf, PathBuf)>>> = Mutex::new(None);

/// A join token for `node` from the first of `urls` that is a control plane of this process.
pub fn join_token_for(urls: &[String], node: &str) -> Result<Option<String>> {
    let found = {
        let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        urls.iter().find_map(|url| {
            running
                .as_ref()?
                .get(url)
                .cloned()
                .map(|f| (url.clone(), f))
        })
    };
    let Some((url, (token_file, ca_file))) = found else {
        return Ok(None);
    };
    let out = Command::new(cargo_bin("meshctl"))
        .args(["--server", &url])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(&ca_file)
        .args(["token", "create", "--node", node])
        .output()
        .context("running meshctl token create")?;
    if !out.status.success() {
        bail!(
            "meshctl token create --node {node} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

impl ControlPlane {
    /// One replica on the embedded store (in a temp data dir).
    pub fn start_embedded() -> Result<ControlPlane> {
        let dir = crate::temp_dir()?;
        let data_dir = dir.path().join("data");
        Self::start(Some(dir), data_dir, "embedded".into())
    }

    /// One replica on the embedded store with more `serve` arguments.
    pub fn start_embedded_with_args(args: &[&str]) -> Result<ControlPlane> {
        let dir = crate::temp_dir()?;
        let data_dir = dir.path().join("data");
        let mut cp = ControlPlane {
            _dir: Some(dir),
            data_dir,
            listen: free_port()?,
            store: "embedded".into(),
            process: None,
            binary: cargo_bin("mesh-control"),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        cp.start_process()?;
        cp.register();
        Ok(cp)
    }

    /// One replica on etcd (`endpoints` as `host:port`).
    pub fn start_etcd(endpoints: &[String]) -> Result<ControlPlane> {
        let dir = crate::temp_dir()?;
        let data_dir = dir.path().join("data");
        Self::start(
            Some(dir),
            data_dir,
            format!("etcd://{}", endpoints.join(",")),
        )
    }

    /// One replica of a given `mesh-control` binary (a release build, for benchmarks) on
    /// `store`: `embedded` (in a temp data dir) or `etcd://host:port,...`.
    pub fn start_with_binary(binary: impl Into<PathBuf>, store: &str) -> Result<ControlPlane> {
        let dir = crate::temp_dir()?;
        let data_dir = dir.path().join("data");
        Self::start_binary(binary.into(), Some(dir), data_dir, store.to_owned())
    }

    fn start(dir: Option<TempDir>, data_dir: PathBuf, store: String) -> Result<ControlPlane> {
        Self::start_binary(cargo_bin("mesh-control"), dir, data_dir, store)
    }

    fn start_binary(
        binary: PathBuf,
        dir: Option<TempDir>,
        data_dir: PathBuf,
        store: String,
    ) -> Result<ControlPlane> {
        let mut cp = ControlPlane {
            _dir: dir,
            data_dir,
            listen: free_port()?,
            store,
            process: None,
            binary,
            extra_args: Vec::new(),
        };
        cp.start_process()?;
        cp.register();
        Ok(cp)
    }

    fn register(&self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(self.url(), (self.token_file(), self.ca_file()));
    }

    /// (Re)starts the process on the same port, data dir and store.
    pub fn start_process(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("mesh-control is already running");
        }
        let mut command = Command::new(&self.binary);
        command
            .args([
                "serve",
                "--listen",
                &self.listen.to_string(),
                "--store",
                &self.store,
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "info");
        let mut process = AgentProcess::spawn_command(command)?;
        let listen = self.listen;
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
                || !process.is_running()
        });
        if !up || !process.is_running() {
            process.print_log_tail();
            bail!("mesh-control did not start listening on {listen}");
        }
        self.process = Some(process);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop()?;
        }
        Ok(())
    }

    pub fn process(&mut self) -> Option<&mut AgentProcess> {
        self.process.as_mut()
    }

    /// `https://<listen address>` (the control plane serves TLS only).
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The trust bundle the control plane writes (`DATA_DIR/ca.pem`).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// A join token for `node` (`meshctl token create --node <node>`).
    pub fn join_token(&self, node: &str) -> Result<String> {
        Ok(self
            .meshctl_ok(&["token", "create", "--node", node])?
            .trim()
            .to_owned())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// `meshctl --server <this> --token-file <this> --ca-file <this> <args>`, whatever the
    /// exit code.
    pub fn meshctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(cargo_bin("meshctl"))
            .args(["--server", &self.url()])
            .arg("--token-file")
            .arg(self.token_file())
            .arg("--ca-file")
            .arg(self.ca_file())
            .args(args)
            .output()
            .with_context(|| format!("running meshctl {args:?}"))
    }

    /// Like [`meshctl`](Self::meshctl), failing with stderr unless it succeeds.
    pub fn meshctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.meshctl(args)?;
        if !out.status.success() {
            bail!(
                "meshctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `meshctl apply -f` of `yaml` (written to a temp file).
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
        std::fs::write(file.path(), yaml)?;
        self.meshctl_ok(&["apply", "-f", &file.path().display().to_string()])
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if let Some(running) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            running.remove(&self.url());
        }
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
