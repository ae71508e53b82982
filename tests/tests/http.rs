//! End-to-end tests of HTTP in the node proxy: real agents, pods made of network namespaces
//! and cgroups, real HTTP/1.1, HTTP/2 and gRPC servers and clients (`pod-tool`) in them.
//!
//! - `routing`: Route rules per request: subsets, header canary, weights, method, path and
//!   query matches; HTTP/2 requests of one connection spread over endpoints; backends on
//!   other Services and ports; header rules.
//! - `resilience`: timeouts, retries, the retry budget, faults, the proxy's own errors.
//! - `tcp_telemetry`: Istio's TCP metrics and access log lines for L4 connections.
//! - `status`: `mesh-agent status` and `/config_dump`: protocols, routes, requests per rule.
//! - `framing`: chunked bodies with trailers, `Expect: 100-continue`, `Connection: close`,
//!   response trailers on HTTP/1.1 and HTTP/2.
//! - `protocols`: WebSocket, `auto` ports (HTTP/1, HTTP/2, server-first), gRPC, TCP ports.
//! - `crossnode`: two nodes: requests routed to another node over HBONE (only TLS on the
//!   wire), HTTP/2 requests spread over endpoints on both nodes, pooled upstream connections.
//! - `telemetry`: Istio request metrics and the access log match the requests made.
//! - `bad_input`: malformed HTTP/1, oversized headers and HTTP/2 protocol errors end only
//!   their connection; invalid Routes are refused at apply naming the field.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent`. Each test takes the first free of the suite's bridge subnets (`support::BRIDGES`).

#[path = "http/bad_input.rs"]
mod bad_input;
#[path = "http/crossnode.rs"]
mod crossnode;
#[path = "http/framing.rs"]
mod framing;
#[path = "http/protocols.rs"]
mod protocols;
#[path = "http/resilience.rs"]
mod resilience;
#[path = "http/routing.rs"]
mod routing;
#[path = "http/status.rs"]
mod status;
#[path = "http/support.rs"]
mod support;
#[path = "http/tcp_telemetry.rs"]
mod tcp_telemetry;
#[path = "http/telemetry.rs"]
mod telemetry;
