//! HBONE: TCP connections between nodes carried as HTTP/2 CONNECT streams over mutual TLS 1.3,
//! from inside the source pod to the destination pod's IP on port 15008.
//!
//! - `client`: the outbound side, one pooled, multiplexed connection per (source identity,
//!   destination node, destination identity).
//! - `server`: the inbound side, the HBONE listener of each pod.
//! - `tls`: rustls configs per identity, rebuilt when a certificate or the trust bundle
//!   changes.
//! - `stream`: one CONNECT stream as a tunnel, relayed without extra copies or tasks.
//! - `keepalive`: HTTP/2 pings that find dead peers.

mod client;
mod keepalive;
mod server;
mod stream;
mod tls;

pub use client::{HboneTarget, Pool};
pub use server::handle as serve_connection;
pub use stream::{relay, HboneStream};

/// HTTP/2 flow-control windows. Large, because one connection multiplexes whole TCP streams:
/// the per-stream window bounds a single stream's throughput (window / round trip).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 256 * 1024;
/// Bytes a stream may queue for sending before its writer waits.
const SEND_BUFFER: usize = 4 * 1024 * 1024;
/// Reset streams tolerated before the connection is torn down (the HTTP/2 "rapid reset"
/// defence). Peers are authenticated mesh nodes, and apps resetting their connections are
/// ordinary traffic here: h2's default of 20 would close a busy pooled connection.
const MAX_RESETS: usize = 10_000;
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// From the end of the handshake to the first CONNECT (the HTTP/2 preface comes first): a
/// pool opens a connection for a stream it needs at once. After that an idle connection is
/// the pool's to keep (HTTP/2 pings find dead ones).
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a new connection may stay silent before the first bytes of its ClientHello:
/// a real client sends it at once; a silent one holds a handshake slot only this long.
const FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// HBONE connections of the whole node in their TLS handshake at once: what clients
/// without a mesh certificate can hold on the pods' HBONE ports (a handshake lasts a round
/// trip; each held one costs a descriptor for up to [`HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 1024;
/// Of those, at most this many from one source IP, so one client cannot hold them all and
/// cut the node's mesh traffic. A peer node opens few: its HBONE connections are pooled.
const MAX_HANDSHAKES_PER_SOURCE: usize = 32;

/// The node's handshake limits, shared by every pod's HBONE listener.
pub struct HandshakeLimit {
    all: mesh_proto::limits::ConnectionLimit,
    per_source: mesh_proto::limits::PerSourceLimit,
}

/// A connection's place in both limits, held through its handshake.
pub struct HandshakeSlot {
    _all: mesh_proto::limits::ConnectionPermit,
    _source: mesh_proto::limits::SourcePermit,
}

impl HandshakeLimit {
    /// Slots for one more handshake from `source`, or `None` past either limit.
    pub fn admit(&self, source: std::net::IpAddr) -> Option<HandshakeSlot> {
        let source = self.per_source.admit(source)?;
        let all = self.all.admit()?;
        Some(HandshakeSlot {
            _all: all,
            _source: source,
        })
    }
}

impl Default for HandshakeLimit {
    fn default() -> Self {
        HandshakeLimit {
            all: mesh_proto::limits::ConnectionLimit::new(
                "HBONE handshakes (all pods)",
                MAX_HANDSHAKES,
            ),
            per_source: mesh_proto::limits::PerSourceLimit::new(MAX_HANDSHAKES_PER_SOURCE),
        }
    }
}
