//! End-to-end tests for what an outside probe broke (hardening): each module reproduces one
//! finding with the real binaries and proves the fix.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent -p mesh-control`.

#[path = "hardening/addresses.rs"]
mod addresses;
#[path = "hardening/enrollment.rs"]
mod enrollment;
#[path = "hardening/idle_limits.rs"]
mod idle_limits;
// The capture suite's building blocks; not every one is used here.
#[allow(dead_code, unused_imports)]
#[path = "capture/support.rs"]
mod support;
#[path = "hardening/tables.rs"]
mod tables;
#[path = "hardening/yaml_limits.rs"]
mod yaml_limits;
