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
use super::super::policy::Carries;
use super::super::PodContext;
use super::body::ReplayBody;
use super::keep_reading::KeepReading;
use crate::metrics::Failure;

/// An idle HTTP/1.1 connection older than this is closed rather than reused: servers close
/// idle keep-alive connections after a while, and a request sent as they do fails.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);
/// HTTP/1.1 connections kept per endpoint (busy or idle); one over this serves its request
/// and closes.
const MAX_POOLED: usize = 64;

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
    /// HTTP/1.1 connections by endpoint, busy or idle (`is_ready`).
    h1: Mutex<HashMap<SocketAddr, Vec<Pooled>>>,
    shared: Mutex<HashMap<SocketAddr, H2Slot>>,
}

struct Pooled {
    sender: http1::SendRequest<ReplayBody>,
    security: Security,
    /// When it last took a request.
    used: Instant,
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
        let (mut sender, security) = match self.take_ready(endpoint) {
            Some(pooled) => (pooled.sender, pooled.security),
            None => self.dial_h1(context, endpoint, app, false).await?,
        };
        let sending = sender.send_request(request);
        // Back in the pool at once, busy until hyper makes it ready again (when this response
        // has been read to its end): no task or wake-up per request to return it. A
        // connection the server closes, or that the response leaves unusable, never becomes
        // ready and is dropped by a later checkout.
        self.put_back(endpoint, sender, security);
        let response = sending.await.map_err(SendError::Upstream)?;
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

    /// A pooled connection to `endpoint` that can take a request now. Drops closed ones and
    /// ones idle for longer than [`IDLE_LIFETIME`].
    fn take_ready(&self, endpoint: SocketAddr) -> Option<Pooled> {
        let mut pooled = self.h1.lock();
        let list = pooled.get_mut(&endpoint)?;
        let usable = |p: &Pooled| {
            let idle_too_long = p.sender.is_ready() && p.used.elapsed() >= IDLE_LIFETIME;
            !p.sender.is_closed() && !idle_too_long
        };
        list.retain(usable);
        let ready = list.iter().position(|p| p.sender.is_ready())?;
        Some(list.swap_remove(ready))
    }

    fn put_back(
        &self,
        endpoint: SocketAddr,
        sender: http1::SendRequest<ReplayBody>,
        security: Security,
    ) {
        let mut pooled = self.h1.lock();
        let list = pooled.entry(endpoint).or_default();
        if list.len() < MAX_POOLED {
            list.push(Pooled {
                sender,
                security,
                used: Instant::now(),
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
    let upstream = dial::connect(context, endpoint, app, Carries::Http)
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
