//! Upstream HTTP connections of one pod, pooled per (endpoint, HTTP version) and reused:
//! HTTP/1.1 connections one request at a time (idle ones wait for the next request),
//! HTTP/2 connections shared by every request to that endpoint.
//!
//! Each connection rides on whatever [`dial`](super::super::dial) opens: delivered into a
//! pod on this node, an HBONE stream to another node, or plaintext. It lives in a task that
//! also ends it when the tracker says the destination's policy no longer allows it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;

use super::super::dial::{self, Security};
use super::super::PodContext;
use super::body::ReplayBody;
use super::keep_reading::KeepReading;
use crate::metrics::Failure;

/// An idle HTTP/1.1 connection older than this is closed rather than reused: servers close
/// idle keep-alive connections after a while, and a request sent as they do fails.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);
/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they go idle.
const MAX_IDLE: usize = 64;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection: connect failure, handshake failure, or policy refusal.
    Connect(Failure),
    /// The connection or stream failed after the request was (maybe partly) sent.
    Upstream(hyper::Error),
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    shared: Mutex<HashMap<SocketAddr, H2Slot>>,
}

struct Idle {
    sender: http1::SendRequest<ReplayBody>,
    security: Security,
    since: Instant,
}

type H2Slot = Arc<tokio::sync::Mutex<Option<(http2::SendRequest<ReplayBody>, Security)>>>;

impl Pool {
    /// Sends `request` to `endpoint` over a pooled connection of `version` (opening one if
    /// needed), and returns the response head with how the connection is secured.
    pub async fn send(
        self: &Arc<Self>,
        context: &Arc<PodContext>,
        endpoint: SocketAddr,
        version: Version,
        app: SocketAddr,
        request: Request<ReplayBody>,
    ) -> Result<(Response<Incoming>, Security), SendError> {
        if version == Version::HTTP_2 {
            let (mut sender, security) = self.h2(context, endpoint, app).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Upstream)?;
            return Ok((response, security));
        }
        let (mut sender, security) = match self.take_idle(endpoint) {
            Some(idle) => (idle.sender, idle.security),
            None => self.dial_h1(context, endpoint, app, false).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Upstream)?;
        // Back to the pool once this response is read to its end (hyper makes the sender
        // ready then); a connection the server closes or the response leaves unusable is not.
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.put_idle(endpoint, sender, security);
                }
            }
        });
        Ok((response, security))
    }

    /// A fresh HTTP/1.1 connection of its own, for a request that upgrades the connection
    /// (WebSocket): after the switch the connection is the client's, never pooled.
    pub async fn dedicated_h1(
        &self,
        context: &Arc<PodContext>,
        endpoint: SocketAddr,
        app: SocketAddr,
    ) -> Result<(http1::SendRequest<ReplayBody>, Security), SendError> {
        self.dial_h1(context, endpoint, app, true).await
    }

    /// Connections held (idle HTTP/1.1, shared HTTP/2), for status.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.idle.lock().values().map(Vec::len).sum();
        let shared = self.shared.lock().len();
        (idle, shared)
    }

    fn take_idle(&self, endpoint: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&endpoint)?;
        while let Some(candidate) = list.pop() {
            if candidate.since.elapsed() < IDLE_LIFETIME && candidate.sender.is_ready() {
                return Some(candidate);
            }
        }
        None
    }

    fn put_idle(
        &self,
        endpoint: SocketAddr,
        sender: http1::SendRequest<ReplayBody>,
        security: Security,
    ) {
        let mut idle = self.idle.lock();
        let list = idle.entry(endpoint).or_default();
        list.retain(|i| i.since.elapsed() < IDLE_LIFETIME && !i.sender.is_closed());
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                security,
                since: Instant::now(),
            });
        }
    }

    /// The endpoint's shared HTTP/2 connection, opened once: concurrent first requests wait
    /// for one dial instead of each opening its own.
    async fn h2(
        &self,
        context: &Arc<PodContext>,
        endpoint: SocketAddr,
        app: SocketAddr,
    ) -> Result<(http2::SendRequest<ReplayBody>, Security), SendError> {
        let slot = self.shared.lock().entry(endpoint).or_default().clone();
        let mut held = slot.lock().await;
        if let Some((sender, security)) = held.as_ref() {
            if !sender.is_closed() {
                return Ok((sender.clone(), *security));
            }
        }
        let (io, security, guard) = open(context, endpoint, app).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                tracing::debug!(%endpoint, error = %e, "HTTP/2 handshake with upstream failed");
                SendError::Connect(Failure::UpstreamConnect)
            })?;
        tokio::spawn(drive(connection, guard));
        *held = Some((sender.clone(), security));
        Ok((sender, security))
    }

    async fn dial_h1(
        &self,
        context: &Arc<PodContext>,
        endpoint: SocketAddr,
        app: SocketAddr,
        upgrades: bool,
    ) -> Result<(http1::SendRequest<ReplayBody>, Security), SendError> {
        let (io, security, guard) = open(context, endpoint, app).await?;
        let handshake_failed = |_| SendError::Connect(Failure::UpstreamConnect);
        let sender = if upgrades {
            let (sender, connection) = http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(handshake_failed)?;
            tokio::spawn(drive(connection.with_upgrades(), guard));
            sender
        } else {
            // An answer the server sends before it reads the whole body must reach the client.
            let (sender, connection) = http1::Builder::new()
                .handshake(TokioIo::new(KeepReading::new(io)))
                .await
                .map_err(handshake_failed)?;
            tokio::spawn(drive(connection, guard));
            sender
        };
        Ok((sender, security))
    }
}

/// What keeps a connection's bookkeeping alive: its tracker registration (policy may close
/// it) and, for same-node delivery, the destination pod's counters.
type Guard = Option<(super::super::tracker::Registration, Option<Arc<PodContext>>)>;

async fn open(
    context: &Arc<PodContext>,
    endpoint: SocketAddr,
    app: SocketAddr,
) -> Result<(dial::UpstreamIo, Security, Guard), SendError> {
    let upstream = dial::connect(context, endpoint, app)
        .await
        .map_err(SendError::Connect)?;
    let security = upstream.security();
    let (io, registration, peer) = upstream.into_io();
    Ok((io, security, registration.map(|r| (r, peer))))
}

/// Runs a connection until it ends, or until policy closes it.
async fn drive<C, E>(connection: C, guard: Guard)
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let ended = async {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP connection ended");
        }
    };
    match &guard {
        Some((registration, _)) => {
            tokio::select! {
                _ = ended => {}
                _ = registration.closed() => {}
            }
        }
        None => ended.await,
    }
}
