//! End-to-end tests of load balancing (issue 9): real agents, pods made of network
//! namespaces and cgroups, `pod-tool` HTTP servers and clients in them.
//!
//! - `weighted`: Workload weights 1:3, per HTTP request and per TCP connection, even in
//!   every window of four.
//! - `hashing`: `maglev` on a request header and `ring_hash` on a cookie keep each user on
//!   one endpoint and spread users over all of them; `ring_hash` on the source IP keeps a
//!   pod's connections on one.
//! - `least_request`: requests steer away from an endpoint that answers 50 ms slower.
//! - `locality`: the client's zone first, spill-over to the region as the zone's endpoints
//!   fail their health checks.
//! - `panic_threshold`: an unhealthy endpoint is avoided while at least half are healthy;
//!   under half, every endpoint takes traffic again.
//! - `connect_retry`: an endpoint refusing connections or letting them time out, still in
//!   rotation, costs no client a failed request (HTTP) or connection (TCP).
//! - `disruption`: when an endpoint joins or leaves, `maglev` moves about 1/N of 200 keys,
//!   the leaver's and hardly any other (`ring_hash`: none other).
//! - `crossnode`: across two nodes (HBONE): weighted 1:3, connect retry past an endpoint on
//!   the other node that refuses connections (HTTP and TCP), and `maglev` sending a key to
//!   the same endpoint from either node.
//! - `resilience`: outlier ejection and its automatic end; circuit breakers failing fast
//!   (HTTP 503 UO, reset TCP connections) past `connectionPool` limits, counted.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent`. Each test takes the first free of the suite's bridge subnets.

#[path = "balance/connect_retry.rs"]
mod connect_retry;
#[path = "balance/crossnode.rs"]
mod crossnode;
#[path = "balance/disruption.rs"]
mod disruption;
#[path = "balance/hashing.rs"]
mod hashing;
#[path = "balance/least_request.rs"]
mod least_request;
#[path = "balance/locality.rs"]
mod locality;
#[path = "balance/panic_threshold.rs"]
mod panic_threshold;
#[path = "balance/resilience.rs"]
mod resilience;
#[path = "balance/support.rs"]
mod support;
#[path = "balance/weighted.rs"]
mod weighted;
