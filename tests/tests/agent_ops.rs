//! End-to-end tests of what an operator (or the kubelet) asks of a running agent: readiness
//! with what is pending, liveness, the log level changed at run time, and the fill of the
//! kernel maps in `/metrics`. The real agent (and, for readiness, the real control plane) with
//! pods made of network namespaces.
//!
//! - `readiness`: 503 naming the missing config and a pod's certificate while the control plane
//!   is away (liveness 200 all along), 200 once it is back.
//! - `log_level`: `mesh-agent log-level` changes the filter of the running agent (debug lines
//!   appear, or stop), refuses a bad directive naming it and keeps the old one; the loopback
//!   admin address does not serve it.
//! - `map_pressure`: `mesh_bpf_map_entries`/`_capacity` follow enrollment.
//!
//! Needs root; build first: `cargo xtask build-ebpf && cargo build -p mesh-agent -p
//! mesh-control -p mesh-tests --bins`.

#[path = "agent_ops/log_level.rs"]
mod log_level;
#[path = "agent_ops/map_pressure.rs"]
mod map_pressure;
#[path = "agent_ops/readiness.rs"]
mod readiness;

/// Subnets no other test target takes.
pub const BRIDGES: [u8; 4] = [13, 14, 15, 17];
