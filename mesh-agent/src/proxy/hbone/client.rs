//! The outbound side of HBONE: a pool of mutual-TLS HTTP/2 connections, one per (source
//! identity, destination node, destination identity), each carrying many CONNECT streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_common::ports;
use mesh_identity::{Credential, SpiffeId};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

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
    Http(#[from] hyper::Error),
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

struct Pooled {
    sender: SendRequest<Empty<Bytes>>,
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
}

impl Pool {
    /// Opens a CONNECT stream to `target` as `credential`'s identity, from inside the source
    /// pod (`netns`). `source` is the app's own address, passed along so the destination app
    /// and policy see the real client.
    pub async fn open(
        &self,
        identities: &Identities,
        netns: &NetnsSockets,
        credential: Arc<Credential>,
        target: HboneTarget<'_>,
        source: SocketAddr,
        connect_timeout: std::time::Duration,
    ) -> Result<Upgraded, HboneError> {
        let key = PoolKey {
            source: credential.id().clone(),
            node: target.node.to_owned(),
            destination: target.identity.clone(),
        };
        let slot = self.slots.lock().entry(key).or_default().clone();
        let dial = || self.connect(identities, netns, &credential, &target, connect_timeout);
        let mut sender = pooled_or_new(&slot, &credential, true, dial).await?;
        match connect_stream(&mut sender, target.address, source).await {
            // A reused connection may have died since: one retry on a fresh one.
            Err(HboneError::Http(e)) => {
                tracing::debug!(error = %e, "pooled HBONE connection failed; reconnecting");
                let mut sender = pooled_or_new(&slot, &credential, false, dial).await?;
                connect_stream(&mut sender, target.address, source).await
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
    ) -> Result<SendRequest<Empty<Bytes>>, HboneError> {
        let config = self
            .tls
            .client(identities, credential)
            .map_err(|e| HboneError::Tls(format!("{e:#}")))?;
        let hbone = SocketAddr::new(target.address.ip(), ports::HBONE);
        let tcp = crate::proxy::upstream_connect(netns, hbone, connect_timeout)
            .await
            .map_err(HboneError::Connect)?;
        let _ = tcp.set_nodelay(true);
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
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_send_buf_size(super::SEND_BUFFER)
            .max_pending_accept_reset_streams(super::MAX_RESETS)
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await?;
        let node = target.node.to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%node, error = %e, "HBONE connection ended");
            }
        });
        self.opened.inc();
        tracing::debug!(node = %target.node, peer = %target.identity, "HBONE connection opened");
        Ok(sender)
    }
}

/// The slot's connection if it is open and was made with `credential` (and `reuse`), else a
/// new one from `dial`, which then replaces it. The slot's lock makes concurrent callers
/// share one new connection instead of each dialling.
async fn pooled_or_new<Dial, Dialled>(
    slot: &Slot,
    credential: &Arc<Credential>,
    reuse: bool,
    dial: Dial,
) -> Result<SendRequest<Empty<Bytes>>, HboneError>
where
    Dial: FnOnce() -> Dialled,
    Dialled: std::future::Future<Output = Result<SendRequest<Empty<Bytes>>, HboneError>>,
{
    let mut pooled = slot.lock().await;
    if let Some(p) = pooled.as_ref() {
        if reuse && !p.sender.is_closed() && Arc::ptr_eq(&p.credential, credential) {
            return Ok(p.sender.clone());
        }
    }
    let sender = dial().await?;
    *pooled = Some(Pooled {
        sender: sender.clone(),
        credential: credential.clone(),
    });
    Ok(sender)
}

async fn connect_stream(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: SocketAddr,
    source: SocketAddr,
) -> Result<Upgraded, HboneError> {
    sender.ready().await?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header(http::header::FORWARDED, format!("for=\"{source}\""))
        .body(Empty::new())
        .expect("a CONNECT request from a socket address is well-formed");
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Refused(response.status()));
    }
    Ok(hyper::upgrade::on(response).await?)
}
