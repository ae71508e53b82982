//! What the demo, tests and benchmark need on the machine, installed when missing.

use std::process::Command;

use anyhow::{bail, Result};

use crate::build_ebpf;
use crate::cmd::{exec, output_of, progress, workspace_root};

/// Debian packages by the command they provide.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    // The distributed store the control plane's HA tests and benchmarks run against.
    ("etcd", "etcd-server"),
    // The reference CNI plugins (bridge, host-local) the mesh-cni tests chain after, as a
    // node's runtime would. Not on PATH: checked by absolute path.
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
];

pub fn require_root(what: &str) -> Result<()> {
    if !mesh_tests::is_root() {
        bail!("{what} needs root: it loads eBPF programs and creates network namespaces");
    }
    Ok(())
}

/// Installs missing Debian packages for the given commands (plus the base set).
pub fn ensure_packages(extra: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .chain(extra)
        .filter(|(command, _)| !has_command(command))
        .map(|(_, package)| *package)
        .collect();
    apt_install(&missing)
}

/// Installs Debian packages (no-op for an empty list).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    progress(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    exec(Command::new("apt-get").arg("update").arg("-qq"))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages),
    )
}

pub fn has_command(command: &str) -> bool {
    output_of(Command::new("sh").args(["-c", &format!("command -v {command}")])).is_some()
}

/// Builds the eBPF object, then the agent and the test tools in `profile` (debug|release).
pub fn build_all(release: bool) -> Result<()> {
    build_ebpf::build()?;
    progress(&format!(
        "building mesh-agent, mesh-control, meshctl, mesh-cni and pod-tool ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cargo = Command::new("cargo");
    cargo.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "mesh-agent",
        "-p",
        "mesh-control",
        "-p",
        "mesh-cni",
        "-p",
        "mesh-tests",
        "--bins",
    ]);
    if release {
        cargo.arg("--release");
    }
    exec(&mut cargo)
}

/// Path of a binary built by [`build_all`].
pub fn binary(name: &str, release: bool) -> std::path::PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join(name)
}
