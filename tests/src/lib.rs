//! End-to-end test harness for the mesh.
//!
//! A test builds a tiny "node" out of Linux primitives: a [`Bridge`] in the root network
//! namespace, and [`Pod`]s (a network namespace + a cgroup v2 directory, wired to the bridge by
//! a veth pair). Processes started with [`Pod::spawn`] live inside both, exactly like a
//! container's processes, so the agent's cgroup/netns hooks see them as pod traffic.
//! [`AgentProcess`] runs the real agent (or any daemon) with its output in a log file.
//!
//! Everything a test creates is removed on `Drop`, also when the test panics, and leftovers of
//! a crashed earlier run are swept the first time this process creates anything (see
//! [`janitor`]). Tests need root; call [`require_root`] at the top of each test: without root it fails the
//! test (loudly, never a silent pass).
//!
//! The `pod-tool` binary of this crate is the traffic generator/server run inside pods
//! (integration tests of this crate get its path as `env!("CARGO_BIN_EXE_pod-tool")`; other
//! code uses [`cargo_bin`]).
//!
//! Running: `cargo test -p mesh-tests -- --test-threads=1` as root. Binaries of other packages
//! (`mesh-agent`, `mesh-control`) are not built by that command: `cargo build -p mesh-agent`
//! first. For benchmarks build pod-tool with `--release`.

pub mod agent;
pub mod cgroup;
mod cmd;
pub mod control;
pub mod etcd;
pub mod held;
pub mod http;
pub mod janitor;
pub mod jwt;
pub mod mesh;
pub mod net;
pub mod observe;
pub mod pod;
pub mod process;
pub mod sniff;
pub mod two_nodes;
pub mod wait;

pub use agent::{cargo_bin, AgentProcess};
pub use cgroup::cgroup2_root;
pub use http::{http_get, http_get_timeout};
pub use net::Bridge;
pub use pod::Pod;
pub use process::PodProcess;
pub use tempfile::TempDir;
pub use wait::{wait_until, wait_until_ok};

/// Name prefix for everything this process creates (netns, links, cgroups): `mt<pid%10000>`.
///
/// Short because Linux interface names are limited to 15 bytes; per process so two harness
/// runs on one machine don't delete each other's pods.
pub fn prefix() -> String {
    format!("mt{}", std::process::id() % 10000)
}

/// True when running as root (needed for netns, links and cgroups).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the test unless it runs as root: an end-to-end test that cannot run must not pass.
///
/// ```no_run
/// mesh_tests::require_root();
/// ```
pub fn require_root() {
    assert!(
        is_root(),
        "this end-to-end test needs root (network namespaces, cgroups, eBPF): run `cargo xtask test` as root"
    );
}

/// A fresh temporary directory (removed on drop) with a recognisable name.
pub fn temp_dir() -> anyhow::Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("mesh-tests-").tempdir()?)
}
