//! End-to-end tests of mesh identity (issue 4): workload certificates from the control-plane
//! CA, HBONE (HTTP/2 CONNECT over mutual TLS 1.3 to port 15008) between two nodes, mTLS modes
//! (PeerAuthentication) and L4 authorization (AuthorizationPolicy).
//!
//! Every test runs two real agents (`node-1`, `node-2`) on one machine following one real
//! control plane (see `mesh_tests::two_nodes`), with pods of both nodes on one bridge. A
//! sniffer on the bridge (`mesh_tests::sniff`, a raw `AF_PACKET` socket) shows what crosses
//! the "network" between the nodes; `sniffer` proves it does see plaintext when there is
//! some, so "no marker seen" means something.
//!
//! - `sniffer`: the sniffer sees a plaintext request and answer between two pods.
//! - `traffic`: pod on node-1 to pod on node-2 (by VIP and pod IP) and back works and is TLS
//!   on the wire; the server's agent shows the client's SPIFFE ID on the open connection.
//! - `ipv6`: the same between dual-stack pods over IPv6.
//! - `authz`: ALLOW by principal, namespace, IP block and port; DENY over ALLOW; MeshConfig
//!   `defaultPolicy: DENY`; AUDIT allows and is counted; denied connections get no data and
//!   count as `AuthzDenied`.
//! - `peer_auth`: a client outside the mesh is refused by STRICT (which also closes its open
//!   connection), accepted by PERMISSIVE; DISABLE makes the client's agent send plaintext.
//! - `placement`: a pod enrolled on a node its Workload does not name is refused and gets no
//!   certificate.
//! - `forged_connect`: our own HBONE client with an admin-issued certificate: CONNECT to
//!   what the server does not serve is 421, a malformed target 400, a denied one 403, the real
//!   pod 200 with bytes flowing; proxy ports and methods other than CONNECT are no tunnels.
//! - `early_data`: bytes sent with a CONNECT before its answer reach the app only once the
//!   stream is admitted; a refused one's (403, 421) never do, and the client app whose bytes
//!   went ahead is reset, not closed with a FIN.
//! - `server_identity`: the client's agent refuses an HBONE server that presents another
//!   identity than the destination workload's, even one the mesh's CA issued.
//! - `foreign_ca`: agents whose certificates come from different CAs cannot talk (while each
//!   serves a client with a certificate of its own CA).
//! - `rotation`: short-lived certificates rotate under continuous traffic without losing a
//!   request.
//! - `ca_outage`: certificates keep serving while the control plane is down; renewal retries
//!   and succeeds once it is back.
//! - `root_rotation`: cross-node traffic keeps working through a CA root rotation.
//! - `policy_update`: a policy change (AuthorizationPolicy, MeshConfig `defaultPolicy`)
//!   closes open connections it now denies, from either node.
//! - `upgrade`: either node's agent replaced under cross-node load: no new connection fails,
//!   HBONE connections on the old agent drain (GOAWAY), later ones go to the new agent.
//!
//! Needs root; run with `--test-threads=1` after `cargo xtask build-ebpf && cargo build -p
//! mesh-agent -p mesh-control -p mesh-tests --bins`. The tests share one bridge subnet
//! (10.239.0.0/24), one test at a time.

mod authz;
mod ca_outage;
mod early_data;
mod foreign_ca;
mod forged_connect;
mod hbone;
mod ipv6;
mod peer_auth;
mod placement;
mod policy_update;
mod root_rotation;
mod rotation;
mod server_identity;
mod sniffer;
mod support;
mod traffic;
mod upgrade;
