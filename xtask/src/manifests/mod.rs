//! `cargo xtask validate-manifests`: every manifest in deploy/ checked offline against the
//! Kubernetes OpenAPI schemas, in strict mode (`validate.py` says exactly what is checked).
//! `cargo xtask test` runs it first, so CI fails on a manifest error.
//!
//! The schemas come with PyPI's `kubernetes-validate`, installed at pinned versions into a
//! virtualenv under target/ the first time; later runs reuse it and need no network.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{exec, output_of, progress, workspace_root};
use crate::setup;

/// The oldest Kubernetes release the manifests are meant for (fields newer than it, such as
/// a pod's `appArmorProfile` before 1.30, would not be accepted).
const KUBERNETES_VERSION: &str = "1.30.0";

/// The validator and the libraries its verdict rests on, pinned so that a new release cannot
/// change the result of the same manifests.
const REQUIREMENTS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "referencing==0.37.0",
    "PyYAML==6.0.4",
];

pub fn run() -> Result<()> {
    let python = ensure_validator()?;
    let root = workspace_root();
    progress(&format!(
        "validating deploy/ against the Kubernetes {KUBERNETES_VERSION} schemas (strict)"
    ));
    exec(
        Command::new(python)
            .current_dir(&root)
            .arg(root.join("xtask/src/manifests/validate.py"))
            .arg("deploy")
            .arg(KUBERNETES_VERSION),
    )
    .context("deploy/ holds invalid manifests (the FAIL lines above say which and why)")
}

/// The virtualenv's Python, with [`REQUIREMENTS`] installed (creating it when missing or
/// when the pins changed).
fn ensure_validator() -> Result<PathBuf> {
    let venv = workspace_root().join("target").join("kubernetes-validate");
    let python = venv.join("bin").join("python");
    // Written last, once the install succeeded: its presence with these contents means the
    // virtualenv is complete.
    let installed = venv.join("installed-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    if python.exists() && std::fs::read_to_string(&installed).ok() == Some(wanted.clone()) {
        return Ok(python);
    }
    progress("installing kubernetes-validate (PyPI) into target/kubernetes-validate");
    setup::ensure_packages(&[("python3", "python3")])?;
    // Debian ships `venv` without `ensurepip` unless python3-venv is installed.
    if output_of(Command::new("python3").args(["-c", "import venv, ensurepip"])).is_none() {
        setup::apt_install(&["python3-venv"])?;
    }
    exec(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    exec(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(REQUIREMENTS),
    )?;
    std::fs::write(&installed, wanted)
        .with_context(|| format!("writing {}", installed.display()))?;
    Ok(python)
}
