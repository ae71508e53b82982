//! `cargo xtask test`: the deploy/ manifest check, unit tests of every crate and the
//! end-to-end tests, which run the real agent binary with real eBPF programs against pods
//! made of network namespaces and cgroups.

use std::process::Command;

use anyhow::Result;

use crate::cmd::{exec, progress, workspace_root};
use crate::{manifests, setup};

pub fn run(filter: Option<String>) -> Result<()> {
    setup::require_root("cargo xtask test")?;
    // First: it takes a second and needs no build. A filtered run is after particular tests.
    if filter.is_none() {
        manifests::run()?;
    }
    setup::ensure_packages(&[])?;
    setup::build_all(false)?;
    progress("running the tests (end-to-end tests one at a time: they share the kernel)");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--exclude", "mesh-ebpf"]);
    cargo.args(["--", "--test-threads=1"]);
    if let Some(filter) = filter {
        cargo.arg(filter);
    }
    exec(&mut cargo)
}
