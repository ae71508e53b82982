//! End-to-end tests of `mesh-cni`, the chained CNI plugin, driven exactly as a container
//! runtime drives it: `mesh-cni install` puts it last in a node's conflist (Debian's real
//! bridge + host-local plugins as the primary network), and the runtime (cni/runtime.rs) runs
//! the chain with the CNI environment and each plugin's config on stdin, the bridge plugin's
//! result handed to mesh-cni as `prevResult`. The agent is the real one, with its eBPF
//! programs; pods are bare network namespaces that only the runtime wires up.
//!
//! - `capture`: after ADD the pod's traffic goes through the mesh with no other step, CHECK
//!   passes; DEL takes it out; CHECK fails once the pod is not enrolled; DEL is idempotent
//!   (also with the agent down).
//! - `refusals`: ADD while the agent is down or before the pod's Workload is declared fails
//!   with code 11 and leaves nothing (the runtime's retry then succeeds); bad input gets the
//!   specification's error codes and enrolls nothing.
//! - `install`: install into an existing conflist (idempotent), VERSION from the installed
//!   binary, uninstall restores the conflist.
//!
//! Needs root and `containernetworking-plugins` (`cargo xtask test` installs it); build first:
//! `cargo xtask build-ebpf && cargo build -p mesh-agent -p mesh-cni -p mesh-tests --bins`.

#[path = "cni/capture.rs"]
mod capture;
#[path = "cni/install.rs"]
mod install;
#[path = "cni/refusals.rs"]
mod refusals;
#[path = "cni/runtime.rs"]
mod runtime;
#[path = "cni/support.rs"]
mod support;
