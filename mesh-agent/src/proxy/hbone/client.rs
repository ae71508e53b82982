//! The outbound side of HBONE: a pool of mutual-TLS HTTP/2 connections, one per (source
//! identity, destination node, destination identity), each carrying many CONNECT streams.
//!
//! A stream's first bytes (what the app had already sent when its connection was accepted)
//! go out with the CONNECT, not after the answer: the destination keeps them until it has
//! admitted the stream and delivered it to the app, and discards them if it refuses it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use mesh_common::ports;
use mesh_identity::{Credential, SpiffeId};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::stream::HboneStream;
use super::tls::TlsConfigs;
use crate::identity::Identities;
use crate::metrics::Failure;
use crate::sys::netns::NetnsSockets;

/// Where an HBONE stream goes.
pub struct HboneTarget<'a> {
    /// The workload address the app's traffic is for (the CONNECT target).
    pub address: SocketAddr,
    pub node: &'a str,
    /// The identity the destination must prove.
    pub identity: SpiffeId,
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to the HBONE port: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS with the peer: {0}")]
    Tls(String),
    #[error("the peer presented identity {found:?}, expected {expected}")]
    WrongPeer {
        found: Option<String>,
        expected: SpiffeId,
    },
    #[error("HTTP/2: {0}")]
    Http(#[from] h2::Error),
    #[error("the peer answered the CONNECT with {0}")]
    Refused(StatusCode),
}

impl HboneError {
    /// The failure counted for it.
    pub fn failure(&self) -> Failure {
        match self {
            HboneError::Connect(_) => Failure::UpstreamConnect,
            HboneError::Refused(StatusCode::FORBIDDEN) => Failure::AuthzDenied,
            _ => Failure::HboneHandshake,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    node: String,
    destination: SpiffeId,
}

/// One pooled connection: a handle to open streams on it, and whether its task has ended.
#[derive(Clone)]
struct Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

struct Pooled {
    connection: Connection,
    /// The source certificate the connection was made with: a renewed certificate gets a
    /// new connection, the old one drains.
    credential: Arc<Credential>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<PoolKey, Slot>>,
    pub tls: TlsConfigs,
    /// HBONE connections opened (streams are many per connection; a rate near the
    /// connection rate would mean the pool is not reusing them).
    pub opened: prometheus_client::metrics::counter::Counter,
    /// Streams whose CONNECT carried the app's first bytes.
    pub early_data: prometheus_client::metrics::counter::Counter,
}

impl Pool {
    /// Opens a CONNECT stream to `target` as `credential`'s identity, from inside the source
    /// pod (`netns`). `source` is the app's own address, passed along so the destination app
    /// and policy see the real client. `early` (may be empty) is sent with the CONNECT: the
    /// app's first bytes, already read from its socket.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        &self,
        identities: &Identities,
        netns: &NetnsSockets,
        credential: Arc<Credential>,
        target: HboneTarget<'_>,
        source: SocketAddr,
        early: &Bytes,
        connect_timeout: std::time::Duration,
    ) -> Result<HboneStream, HboneError> {
        let key = PoolKey {
            source: credential.id().clone(),
            node: target.node.to_owned(),
            destination: target.identity.clone(),
        };
        let slot = self.slots.lock().entry(key).or_default().clone();
        let dial = || self.connect(identities, netns, &credential, &target, connect_timeout);
        let connection = pooled_or_new(&slot, &credential, None, dial).await?;
        if !early.is_empty() {
            self.early_data.inc();
        }
        let sender = connection.sender.clone();
        match connect_stream(sender, target.address, source, early).await {
            // A reused connection may have died since (or be going away: GOAWAY): one retry
            // on another. The early bytes went nowhere (the stream failed before any
            // answer), so they are sent again.
            Err(HboneError::Http(e)) => {
                tracing::debug!(error = %e, "pooled HBONE connection failed; reconnecting");
                let retry = pooled_or_new(&slot, &credential, Some(&connection), dial).await?;
                connect_stream(retry.sender, target.address, source, early).await
            }
            result => result,
        }
    }

    async fn connect(
        &self,
        identities: &Identities,
        netns: &NetnsSockets,
        credential: &Arc<Credential>,
        target: &HboneTarget<'_>,
        connect_timeout: std::time::Duration,
    ) -> Result<Connection, HboneError> {
        let config = self
            .tls
            .client(identities, credential)
            .map_err(|e| HboneError::Tls(format!("{e:#}")))?;
        let hbone = SocketAddr::new(target.address.ip(), ports::HBONE);
        let tcp = crate::proxy::upstream_connect(netns, hbone, connect_timeout)
            .await
            .map_err(HboneError::Connect)?;
        let name = ServerName::IpAddress(target.address.ip().into());
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HboneError::Tls("handshake timed out".into()))?
            .map_err(|e| HboneError::Tls(e.to_string()))?;
        let peer = mesh_identity::tls::peer_id(tls.get_ref().1);
        if peer.as_ref() != Some(&target.identity) {
            return Err(HboneError::WrongPeer {
                found: peer.map(|p| p.to_string()),
                expected: target.identity.clone(),
            });
        }
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_send_buffer_size(super::SEND_BUFFER)
            .max_pending_accept_reset_streams(super::MAX_RESETS)
            .handshake::<_, Bytes>(tls)
            .await?;
        let ping_pong = connection
            .ping_pong()
            .expect("a new connection's ping handle is there to take");
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        let node = target.node.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => if let Err(e) = result {
                    tracing::debug!(%node, error = %e, "HBONE connection ended");
                },
                _ = super::keepalive::until_unanswered(ping_pong) => {}
            }
            ended.store(true, Ordering::Release);
        });
        self.opened.inc();
        tracing::debug!(node = %target.node, peer = %target.identity, "HBONE connection opened");
        Ok(Connection { sender, closed })
    }
}

/// The slot's connection if it is open, was made with `credential` and is not the one that
/// just `failed`, else a new one from `dial`, which then replaces it. The slot's lock makes
/// concurrent callers share one new connection instead of each dialling (also when many
/// streams fail on a connection going away at once: the first replaces it, the others take
/// the replacement).
async fn pooled_or_new<Dial, Dialled>(
    slot: &Slot,
    credential: &Arc<Credential>,
    failed: Option<&Connection>,
    dial: Dial,
) -> Result<Connection, HboneError>
where
    Dial: FnOnce() -> Dialled,
    Dialled: std::future::Future<Output = Result<Connection, HboneError>>,
{
    let mut pooled = slot.lock().await;
    if let Some(p) = pooled.as_ref() {
        let open = !p.connection.closed.load(Ordering::Acquire);
        let failed = failed.is_some_and(|f| Arc::ptr_eq(&f.closed, &p.connection.closed));
        if open && !failed && Arc::ptr_eq(&p.credential, credential) {
            return Ok(p.connection.clone());
        }
    }
    let connection = dial().await?;
    *pooled = Some(Pooled {
        connection: connection.clone(),
        credential: credential.clone(),
    });
    Ok(connection)
}

/// CONNECT `target` with `early` right behind the request, then waits for the answer.
async fn connect_stream(
    sender: SendRequest<Bytes>,
    target: SocketAddr,
    source: SocketAddr,
    early: &Bytes,
) -> Result<HboneStream, HboneError> {
    let mut sender = sender.ready().await?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header(http::header::FORWARDED, format!("for=\"{source}\""))
        .body(())
        .expect("a CONNECT request from a socket address is well-formed");
    let (response, mut send) = sender.send_request(request, false)?;
    if !early.is_empty() {
        // Within the stream's initial window (early data is at most one small read), so
        // h2 queues it at once, in the same write as the request.
        send.send_data(early.clone(), false)?;
    }
    let response = response.await?;
    if response.status() != StatusCode::OK {
        // Dropping `send` resets the stream: the peer discards whatever it holds of it.
        return Err(HboneError::Refused(response.status()));
    }
    Ok(HboneStream::new(send, response.into_body()))
}
