//! End-to-end tests of request-level security (issue 10): AuthorizationPolicy rules on HTTP
//! methods, paths, headers and JWT claims, and RequestAuthentication, enforced by the
//! destination's agent on every path into a pod, with real agents, pods, HTTP and gRPC apps
//! (`pod-tool`) and real signed tokens (`mesh_tests::jwt`).
//!
//! - `http_rules`: methods, exact/prefix/suffix paths (normalised), header conditions, DENY
//!   over ALLOW, per request, HTTP/1.1 and HTTP/2; WebSocket upgrades; the access log.
//! - `open_connections`: a denied request leaves its keep-alive connection usable; a policy
//!   change, or authentication added later, applies to the next request on a connection
//!   already open.
//! - `tokens`: valid tokens and their claims in `when`, every kind of invalid token refused
//!   with 401, a missing token refused only where a policy requires a request principal,
//!   what the app sees of tokens (`forwardOriginalToken`, `outputPayloadToHeader`,
//!   `outputClaimToHeaders`).
//! - `grpc`: refusals as gRPC statuses (PERMISSION_DENIED, UNAUTHENTICATED).
//! - `crossnode`: the same policies over HBONE from another node and on the destination's
//!   node.
//!
//! Single-node tests take every way into the pod (`support::Bed::every_way`): from a mesh
//! pod on the same node through the Service and straight to the pod's address, and
//! plaintext from a pod outside the mesh.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent -p mesh-control`. Each test takes the first free of the suite's bridge subnets
//! (`support::BRIDGES`).

#[path = "request_security/crossnode.rs"]
mod crossnode;
#[path = "request_security/grpc.rs"]
mod grpc;
#[path = "request_security/http_rules.rs"]
mod http_rules;
/// `show` and the app's counters, shared with the HTTP suite.
#[allow(dead_code)]
#[path = "http/support.rs"]
mod http_support;
#[path = "request_security/open_connections.rs"]
mod open_connections;
#[path = "request_security/support.rs"]
mod support;
#[path = "request_security/tokens.rs"]
mod tokens;
