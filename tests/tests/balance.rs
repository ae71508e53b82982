//! End-to-end tests of load balancing (issue 9): real agents, pods made of network
//! namespaces and cgroups, `pod-tool` HTTP servers and clients in them.
//!
//! - `weighted`: Workload weights 1:3, per HTTP request and per TCP connection, even in
//!   every window of four.
//! - `hashing`: `maglev` on a request header keeps each user on one endpoint and spreads
//!   users over all of them; `ring_hash` on the source IP keeps a pod's connections on one.
//! - `least_request`: requests steer away from an endpoint that answers 50 ms slower.
//! - `locality`: the client's zone first, spill-over to the region as the zone's endpoints
//!   fail their health checks.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent`. Each test takes the first free of the suite's bridge subnets.

#[path = "balance/hashing.rs"]
mod hashing;
#[path = "balance/least_request.rs"]
mod least_request;
#[path = "balance/locality.rs"]
mod locality;
#[path = "balance/support.rs"]
mod support;
#[path = "balance/weighted.rs"]
mod weighted;
