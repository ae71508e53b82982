//! `cargo xtask build-ebpf`: builds `mesh-ebpf` for `bpfel-unknown-none`.
//!
//! The eBPF target needs a nightly toolchain with `rust-src` (for `-Z build-std=core`) and
//! `bpf-linker` built against the *same* LLVM as that nightly. bpf-linker is linked to the
//! toolchain's own `libLLVM` so no system LLVM is needed; if nightly later changes, the old
//! linker no longer starts (its libLLVM is gone) and is rebuilt here.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd::{exec, output_of, progress, workspace_root};

pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Where the agent's build script picks the object up.
pub fn object_path() -> PathBuf {
    workspace_root()
        .join("target")
        .join(EBPF_TARGET)
        .join("release")
        .join("mesh-ebpf")
}

/// Builds the object (a quick no-op when it is up to date) and returns its path.
pub fn build() -> Result<PathBuf> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    progress("building mesh-ebpf for bpfel-unknown-none");
    let root = workspace_root();
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS")
            // The workspace's release LTO is for the userspace binaries; bpf-linker links the
            // eBPF object itself, as before.
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .args([
                "+nightly",
                "build",
                "--quiet",
                "-p",
                "mesh-ebpf",
                "--release",
            ])
            .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(root.join("target")),
    )?;
    let path = object_path();
    progress(&format!("eBPF object: {}", path.display()));
    Ok(path)
}

fn ensure_nightly() -> Result<()> {
    if output_of(Command::new("rustc").args(["+nightly", "-V"])).is_some() {
        return Ok(());
    }
    progress("installing the nightly toolchain (needed for the eBPF target)");
    exec(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn ensure_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    progress("adding rust-src to nightly (needed for -Z build-std=core)");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker() -> Result<()> {
    if output_of(Command::new("bpf-linker").arg("--version")).is_some() {
        return Ok(());
    }
    let sysroot = output_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot find the nightly sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let (llvm_lib, llvm_major) = find_libllvm(&lib_dir)?;
    progress(&format!(
        "installing bpf-linker against nightly's LLVM {llvm_major} ({llvm_lib}); takes a few minutes"
    ));
    let lib = lib_dir.display();
    exec(
        Command::new("cargo")
            .env(
                "RUSTFLAGS",
                format!(
                    "-C link-arg=-L{lib} -C link-arg=-l{llvm_lib} -C link-arg=-Wl,-rpath,{lib}"
                ),
            )
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
            .args(["--target", "x86_64-unknown-linux-gnu"]),
    )
}

/// Finds `libLLVM-<ver>.so` in the toolchain and returns (`LLVM-<ver>`, major version).
fn find_libllvm(lib_dir: &std::path::Path) -> Result<(String, String)> {
    for entry in std::fs::read_dir(lib_dir).with_context(|| format!("reading {lib_dir:?}"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM-") {
            if let Some(version) = rest.strip_suffix(".so") {
                let major = version
                    .split(['-', '.'])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                return Ok((format!("LLVM-{version}"), major));
            }
        }
    }
    bail!("no libLLVM-*.so in {lib_dir:?}: the nightly toolchain lacks its LLVM library")
}
