//! Thin, safe wrappers over the Linux facilities the agent needs: network namespaces,
//! filesystem checks (bpffs, cgroup v2) and socket options.

pub mod bpf;
pub mod caps;
pub mod fs;
pub mod heap;
pub mod netlink;
pub mod netns;
pub mod sockopt;
