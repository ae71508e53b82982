//! HBONE: TCP connections between nodes carried as HTTP/2 CONNECT streams over mutual TLS 1.3,
//! from inside the source pod to the destination pod's IP on port 15008.
//!
//! - `client`: the outbound side, one pooled, multiplexed connection per (source identity,
//!   destination node, destination identity).
//! - `server`: the inbound side, the HBONE listener of each pod.
//! - `tls`: rustls configs per identity, rebuilt when a certificate or the trust bundle
//!   changes.

mod client;
mod server;
mod tls;

pub use client::{HboneTarget, Pool};
pub use server::handle as serve_connection;

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
