//! `cargo xtask fuzz [--seconds N]`: builds every cargo-fuzz target in fuzz/ and runs each for
//! N seconds, starting from the committed seeds. A crash (a panic, a sanitizer report, a
//! timeout or memory blow-up) fails the command; libFuzzer writes the input to
//! fuzz/artifacts/<target>/, and the error says how to replay it.
//!
//! Brief on purpose: in CI it proves the targets build and still hold on what they reached
//! before; a longer `cargo +nightly fuzz run <target>` is what finds new things.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build_ebpf;
use crate::cmd::{exec, output_of, progress, workspace_root};

/// Per input: far above what any target needs, so only a real hang trips it.
const INPUT_TIMEOUT_SECONDS: u32 = 10;
/// Resource files may be 4 MiB, and a few copies of one are parsed at once.
const MAX_INPUT_BYTES: u32 = 1 << 20;
const RSS_LIMIT_MB: u32 = 2048;

pub fn run(seconds: u32) -> Result<()> {
    // mesh-agent embeds the eBPF object, so the agent's targets need it built (this also
    // installs the nightly toolchain the fuzzer needs).
    build_ebpf::build()?;
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    progress("building the fuzz targets (nightly, address sanitizer, debug assertions)");
    exec(cargo_fuzz(&root).args(["build", "--debug-assertions"]))?;
    let listed = output_of(cargo_fuzz(&root).arg("list")).context("cargo fuzz list failed")?;
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in fuzz/");
    }
    // The binaries `cargo fuzz build` made, run directly: `cargo fuzz run` would check (and
    // perhaps rebuild) everything again for each target.
    let binaries = root
        .join("fuzz/target")
        .join(host_triple()?)
        .join("release");
    for target in &targets {
        progress(&format!("fuzzing {target} for {seconds}s"));
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let mut command = Command::new(binaries.join(target));
        command
            .current_dir(&root)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
            .arg(format!("-max_len={MAX_INPUT_BYTES}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            .arg(&corpus)
            .args(seeds(&root, target));
        exec(&mut command).with_context(|| {
            format!(
                "fuzz target {target} failed: the input is in {}; replay it with \
                 `cargo +nightly fuzz run --debug-assertions {target} <file>`",
                artifacts.display()
            )
        })?;
    }
    progress(&format!(
        "{} fuzz targets ran {seconds}s each without a failure",
        targets.len()
    ));
    Ok(())
}

/// `cargo +nightly fuzz` in the workspace root (it finds fuzz/ there).
fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .args(["+nightly", "fuzz"]);
    command
}

/// Seed corpora, read but never written: fuzz/seeds/<target>/, and for the resource targets
/// the realistic fixtures of mesh-api's tests.
fn seeds(root: &Path, target: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![root.join("fuzz/seeds").join(target)];
    if target == "resources" {
        dirs.push(root.join("mesh-api/src/tests/testdata"));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Where `cargo fuzz build` puts binaries: `fuzz/target/<host triple>/release`.
fn host_triple() -> Result<String> {
    let version = output_of(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV failed")?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc +nightly -vV names no host")
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output_of(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    progress("installing cargo-fuzz");
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
