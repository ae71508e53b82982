//! Checking the agent's capabilities up front, so a missing one is named instead of surfacing
//! later as a bare "Operation not permitted" from some syscall.

use anyhow::{bail, Context, Result};

/// What the agent needs and why.
const REQUIRED: [(u32, &str, &str); 3] = [
    (39, "CAP_BPF", "load eBPF programs and create maps"),
    (
        12,
        "CAP_NET_ADMIN",
        "attach sk_lookup and sock_ops programs",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "enter pod network namespaces and mount bpffs",
    ),
];

pub fn require_agent_capabilities() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(bit, _, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name, why)| format!("{name} (to {why})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "no BPF permission: the agent lacks {}; run it as root or grant these capabilities",
            missing.join(", ")
        );
    }
    Ok(())
}
