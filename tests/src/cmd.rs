//! Running helper commands (`ip`) with errors that say what failed and why.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Runs `program args...` to completion; on non-zero exit the error carries the command line
/// and its stderr, which is what one needs to debug a failed `ip` call in CI.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args...`.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Like [`ip`] but for teardown paths: logs a failure instead of returning it, so one failed
/// step doesn't stop the remaining cleanup.
pub(crate) fn ip_logged(args: &[&str]) {
    if let Err(e) = ip(args) {
        eprintln!("mesh-tests cleanup: {e:#}");
    }
}

/// Whether a network interface with this name exists in the root netns.
pub(crate) fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
