//! End-to-end tests of HTTP in the node proxy: real agents, pods made of network namespaces
//! and cgroups, real HTTP/1.1, HTTP/2 and gRPC servers and clients (`pod-tool`) in them.
//!
//! - `routing`: Route rules per request: subsets, header canary, weights, method, path and
//!   query matches; HTTP/2 requests of one connection spread over endpoints; backends on
//!   other Services and ports; header rules.
//! - `resilience`: timeouts, retries, the retry budget, faults, the proxy's own errors.
//! - `protocols`: WebSocket, `auto` ports (HTTP/1, HTTP/2, server-first), gRPC, TCP ports.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent`. Each test takes the first free of the suite's bridge subnets (`support::BRIDGES`).

#[path = "http/protocols.rs"]
mod protocols;
#[path = "http/resilience.rs"]
mod resilience;
#[path = "http/routing.rs"]
mod routing;
#[path = "http/support.rs"]
mod support;
