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

use super::super::circuit::{Limit, Overflow, Permit};
use super::super::dial::{self, Security};
use super::super::early::Early;
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
    /// A new connection was needed, and the service's `connectionPool` has no room for it
    /// (or for another request waiting for one).
    Overflow(Limit),
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
        target: Target<'_>,
        version: Version,
        request: Request<ReplayBody>,
    ) -> Result<(Response<Incoming>, Security), SendError> {
        let endpoint = target.endpoint;
        if version == Version::HTTP_2 {
            let (mut sender, security) = self.h2(target).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Upstream)?;
            return Ok((response, security));
        }
        let (mut sender, security) = match self.take_ready(endpoint) {
            Some(pooled) => (pooled.sender, pooled.security),
            None => self.dial_h1(target).await?,
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
    /// Also returns what keeps the connection listed and counted: the caller holds it for
    /// as long as the upgraded tunnel lives, and ends the tunnel when it is revoked.
    pub async fn dedicated_h1(
        &self,
        target: Target<'_>,
    ) -> Result<(http1::SendRequest<ReplayBody>, Security, Guard), SendError> {
        let pending = target.permit(Limit::max_pending_requests)?;
        let (io, security, guard) = open(target).await?;
        drop(pending);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|_| SendError::Connect(Failure::UpstreamConnect))?;
        tokio::spawn(drive(connection.with_upgrades(), guard.clone()));
        Ok((sender, security, guard))
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
        target: Target<'_>,
    ) -> Result<(http2::SendRequest<ReplayBody>, Security), SendError> {
        let endpoint = target.endpoint;
        let slot = self.shared.lock().entry(endpoint).or_default().clone();
        if let Ok(held) = slot.try_lock() {
            if let Some((sender, security)) = held.as_ref().filter(|(s, _)| !s.is_closed()) {
                return Ok((sender.clone(), *security));
            }
        }
        // Waiting for the connection to open (here or in a concurrent request's dial).
        let pending = target.permit(Limit::max_pending_requests)?;
        let mut held = slot.lock().await;
        if let Some((sender, security)) = held.as_ref() {
            if !sender.is_closed() {
                return Ok((sender.clone(), *security));
            }
        }
        let (io, security, guard) = open(target).await?;
        drop(pending);
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
        target: Target<'_>,
    ) -> Result<(http1::SendRequest<ReplayBody>, Security), SendError> {
        let pending = target.permit(Limit::max_pending_requests)?;
        let (io, security, guard) = open(target).await?;
        drop(pending);
        // An answer the server sends before it reads the whole body must reach the client.
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(KeepReading::new(io)))
            .await
            .map_err(|_| SendError::Connect(Failure::UpstreamConnect))?;
        tokio::spawn(drive(connection, guard));
        Ok((sender, security))
    }
}

/// Where a request goes: the endpoint, for the app at `app` of the pod `context`, as part
/// of `service` (whose `connectionPool` limits new connections).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub context: &'a Arc<PodContext>,
    pub endpoint: SocketAddr,
    pub app: SocketAddr,
    pub service: &'a mesh_api::Service,
}

impl Target<'_> {
    fn permit(&self, limit: Limit) -> Result<Option<Permit>, SendError> {
        let circuits = &self.context.shared.circuits;
        circuits
            .acquire(self.service, limit)
            .map_err(|Overflow(limit)| SendError::Overflow(limit))
    }
}

/// What keeps a connection's bookkeeping alive for as long as it is open: its tracker
/// registration (policy may close it), for same-node delivery the destination pod's
/// counters, and its slot under the service's `maxConnections`. Shared by the connection's
/// task and, after a protocol switch, the tunnel that carries on.
pub type Guard = Arc<Held>;

pub struct Held {
    registration: Option<(super::super::tracker::Registration, Option<Arc<PodContext>>)>,
    _slot: Option<Permit>,
}

impl Held {
    /// Resolves when policy revokes the connection (never for one not listed).
    pub async fn revoked(&self) {
        match &self.registration {
            Some((registration, _)) => registration.closed().await,
            None => std::future::pending().await,
        }
    }
}

async fn open(target: Target<'_>) -> Result<(dial::UpstreamIo, Security, Guard), SendError> {
    let slot = target.permit(Limit::max_connections)?;
    let timeout = target
        .service
        .spec
        .connection_pool
        .as_ref()
        .and_then(|p| p.connect_timeout_ms)
        .map_or(target.context.connect_timeout, Duration::from_millis);
    let upstream = dial::connect(
        target.context,
        target.endpoint,
        target.app,
        Carries::Http,
        timeout,
        &mut Early::none(),
    )
    .await
    .map_err(SendError::Connect)?;
    let security = upstream.security();
    let (io, registration, peer) = upstream.into_io();
    let guard = Arc::new(Held {
        registration: registration.map(|r| (r, peer)),
        _slot: slot,
    });
    Ok((io, security, guard))
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
    tokio::select! {
        _ = ended => {}
        _ = guard.revoked() => {}
    }
}
