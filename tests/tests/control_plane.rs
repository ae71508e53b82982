//! End-to-end tests of the control plane (issue 3): the real `mesh-control` (embedded store
//! or a real 3-member etcd cluster), the real `meshctl`, and real agents following it, with
//! pods made of network namespaces and cgroups and traffic from `pod-tool`.
//!
//! As in the capture tests, traffic is proven with the agent's counters, not only with a
//! request succeeding.
//!
//! - `follow`: applied config carries traffic, `meshctl status` shows the ACK; endpoint and
//!   VIP changes reach the agent in under a second.
//! - `outage`: the data plane keeps working with the control plane down, an agent restarted
//!   meanwhile serves from its cache; the embedded store survives a control-plane restart.
//! - `replicas`: two replicas on a 3-member etcd cluster serve one mesh, also with a member
//!   down.
//! - `rejected`: invalid and conflicting resources change nothing; a config the agent cannot
//!   apply is NACKed while the old one serves; a wrong or missing admin token is refused.
//! - `health`: an endpoint whose app dies is reported unhealthy and avoided, then recovers.
//! - `jwks`: RequestAuthentication `jwksUri` key sets fetched by the control plane from an
//!   HTTPS server in a test pod and pushed to the agent inline; rotations followed; an
//!   untrusted server, an invalid set and a redirect refused with the last good set kept.
//! - `meshctl`: every meshctl command against a live control plane and agent.
//! - `security_rules`: `meshctl rules add/list` of the security rule (AuthorizationPolicy +
//!   RequestAuthentication + PeerAuthentication), and the apply warning for HTTP policy
//!   rules on TCP ports.
//! - `reboot`: the node credential in `--identity-dir` outlives a wiped state dir.
//! - `identity`: joining with a token (and every way a token is refused), mTLS required for
//!   the config stream and certificate signing, workload CSRs only for the node's own
//!   workloads, meshctl verifying the control plane.
//! - `rotation`: root rotation with overlap, an agent that missed one, and an
//!   operator-supplied root.
//!
//! Needs root (and `/usr/bin/etcd` for the etcd test); run with `--test-threads=1` after
//! `cargo xtask build-ebpf && cargo build -p mesh-agent -p mesh-control`. Each test has its
//! own bridge (subnets 10.230-10.249.0.0/24).

#[path = "control_plane/follow.rs"]
mod follow;
#[path = "control_plane/health.rs"]
mod health;
#[path = "control_plane/identity.rs"]
mod identity;
#[path = "control_plane/jwks.rs"]
mod jwks;
#[path = "control_plane/meshctl.rs"]
mod meshctl;
#[path = "control_plane/outage.rs"]
mod outage;
#[path = "control_plane/reboot.rs"]
mod reboot;
#[path = "control_plane/rejected.rs"]
mod rejected;
#[path = "control_plane/replicas.rs"]
mod replicas;
#[path = "control_plane/rotation.rs"]
mod rotation;
#[path = "control_plane/security_rules.rs"]
mod security_rules;
#[path = "control_plane/support.rs"]
mod support;
