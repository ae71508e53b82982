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
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
