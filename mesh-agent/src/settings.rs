//! The agent's settings: flags over an optional YAML file over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::cli::{RunArgs, DEFAULT_STATE_DIR};

/// The settings file (`--config`). Same names as the flags, camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsFile {
    local_config: Option<PathBuf>,
    control_plane: Option<Vec<String>>,
    join_token: Option<String>,
    capture_capacity: Option<u32>,
    node_name: Option<String>,
    admin_addr: Option<SocketAddr>,
    bpffs: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    drain_timeout_secs: Option<u64>,
    identity_dir: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Settings {
    pub local_config: Option<PathBuf>,
    /// Control plane replicas; empty: static mode.
    pub control_plane: Vec<String>,
    /// For the first start with a control plane (joining the mesh).
    pub join_token: Option<String>,
    pub capture_capacity: u32,
    pub node_name: String,
    pub admin_addr: SocketAddr,
    pub bpffs: PathBuf,
    /// `None`: detect.
    pub cgroup_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Where the node's credential (key, certificate, trust bundle) is kept.
    pub identity_dir: PathBuf,
    pub connect_timeout: Duration,
    /// How long a stopping agent (handed over, or SIGTERM) lets its connections finish.
    pub drain_timeout: Duration,
}

impl Settings {
    pub fn resolve(args: RunArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => SettingsFile::default(),
        };
        let node_name = match args.node_name.or(file.node_name) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .context("reading the hostname for --node-name")?
                .to_string_lossy()
                .into_owned(),
        };
        let control_plane = if args.control_plane.is_empty() {
            file.control_plane.unwrap_or_default()
        } else {
            args.control_plane
        };
        let local_config = args.local_config.or(file.local_config);
        if !control_plane.is_empty() && local_config.is_some() {
            anyhow::bail!("--control-plane and --local-config are exclusive: choose where the mesh config comes from");
        }
        let join_token = args
            .join_token
            .or(file.join_token)
            .filter(|t| !t.trim().is_empty());
        if join_token.is_some() && control_plane.is_empty() {
            anyhow::bail!(
                "--join-token needs --control-plane: it joins this node to a control plane"
            );
        }
        for url in &control_plane {
            crate::control::channel::authority(url).context("--control-plane")?;
        }
        let state_dir: PathBuf = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let identity_dir = args
            .identity_dir
            .or(file.identity_dir)
            .unwrap_or_else(|| state_dir.join("identity"));
        Ok(Settings {
            local_config,
            control_plane,
            join_token,
            capture_capacity: args
                .capture_capacity
                .or(file.capture_capacity)
                .unwrap_or(mesh_common::limits::MAX_CAPTURE_PREFIXES),
            node_name,
            admin_addr: args
                .admin_addr
                .or(file.admin_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], mesh_common::ports::ADMIN))),
            bpffs: args
                .bpffs
                .or(file.bpffs)
                .unwrap_or_else(|| "/sys/fs/bpf/mesh".into()),
            cgroup_root: args.cgroup_root.or(file.cgroup_root),
            state_dir,
            identity_dir,
            connect_timeout: Duration::from_millis(
                args.connect_timeout_ms
                    .or(file.connect_timeout_ms)
                    .unwrap_or(5000),
            ),
            // Within the DaemonSet's terminationGracePeriodSeconds (60), with room for the
            // process to exit before the kubelet kills it.
            drain_timeout: Duration::from_secs(
                args.drain_timeout_secs
                    .or(file.drain_timeout_secs)
                    .unwrap_or(50),
            ),
        })
    }
}

fn read_file(path: &Path) -> Result<SettingsFile> {
    let text = mesh_api::limits::read_file(path)?;
    SettingsFile::parse(&path.display().to_string(), &text)
}

impl SettingsFile {
    /// Parses settings text, `source` naming it in errors. Within the limits of resource
    /// files (size, nesting, aliases): a settings file is YAML too, and the same 200 KB of
    /// nested brackets would cost the same minutes.
    pub fn parse(source: &str, text: &str) -> Result<SettingsFile> {
        mesh_api::limits::check_yaml(source, text)?;
        serde_yaml_ng::from_str(text).with_context(|| format!("{source}: invalid agent settings"))
    }
}
