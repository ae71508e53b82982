//! End-to-end tests of the capture slice: the real agent binary, the real eBPF programs, pods
//! made of network namespaces and cgroups, and traffic from `pod-tool`.
//!
//! Every test proves its point with counters (the agent's per-pod proxy counters and the
//! kernel's counters from `mesh-agent status -o json`), not only with a request succeeding:
//! a request that works because it went *around* the mesh must fail the test.
//!
//! - `outbound`: service VIP through the proxy with round robin, non-enrolled pods untouched,
//!   non-mesh destinations direct, getpeername shows the dialled address.
//! - `inbound`: sk_lookup steering of a non-mesh client, the app sees the real client.
//! - `lifecycle`: unenroll, agent restart (resume + adopted links), fail closed while down.
//! - `ipv6`: the same over IPv6, dual-stack workloads and an IPv6 VIP.
//! - `bad_input`: malformed config and wrong enrollments are clear errors, nothing breaks.
//! - `reload`: SIGHUP follows endpoint changes, a broken file keeps the last good config.
//! - `churn`: more short connections than the server pod has ports, within one TIME_WAIT
//!   period, closed first by either side: none fails, the app sees the real client.
//! - `upgrade`: a second agent takes over under load (no connection refused or uncaptured,
//!   relayed ones keep working while the old one drains); SIGTERM drains the same way.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent`. Each test has its own bridge (subnets 10.210-10.220.0.0/24), so a failure in
//! one leaves the others alone.

#[path = "capture/bad_input.rs"]
mod bad_input;
#[path = "capture/churn.rs"]
mod churn;
#[path = "capture/inbound.rs"]
mod inbound;
#[path = "capture/ipv6.rs"]
mod ipv6;
#[path = "capture/lifecycle.rs"]
mod lifecycle;
#[path = "capture/outbound.rs"]
mod outbound;
#[path = "capture/reload.rs"]
mod reload;
#[path = "capture/support.rs"]
mod support;
#[path = "capture/upgrade.rs"]
mod upgrade;
