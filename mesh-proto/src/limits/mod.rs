//! Limits every server of the mesh puts on its listeners (the control plane's gRPC port, the
//! agent's admin listeners, the proxy's HBONE port), so that clients that connect and never
//! speak, or simply too many connections, cannot pile up until the process runs out of file
//! descriptors.
//!
//! - [`ConnectionLimit`] and [`accept`]: at most N connections open at once. Past that, a new
//!   connection is closed as soon as it is accepted (its client learns at once, instead of
//!   waiting in the listen backlog) and a warning says so, at most every 10 s.
//! - [`RequestWatch`] and [`Watched`]: a connection with no request in flight for too long is
//!   closed: none started within a bound of connecting (the HTTP/2 preface counts for
//!   nothing on its own), or, where an idle limit is set, none since the last one ended.
//! - [`PerSourceLimit`]: at most N of them from one source IP, under a shared limit.
//! - [`grpc`]: counts a tonic server's calls into the connection's [`RequestWatch`].

pub mod grpc;
mod per_source;
mod quiet;

pub use per_source::{PerSourceLimit, SourcePermit};
pub use quiet::{RequestGuard, RequestWatch, Watched};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often the "limit reached" warning may repeat while connections keep being refused.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends), instead of spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// At most `max` connections of one listener open at once.
pub struct ConnectionLimit {
    /// Names the listener in the log (e.g. `control plane 0.0.0.0:15010`).
    listener: String,
    max: usize,
    slots: Arc<Semaphore>,
    refusals: Mutex<Refusals>,
}

#[derive(Default)]
struct Refusals {
    since_warning: u64,
    last_warning: Option<Instant>,
}

/// One admitted connection's slot; dropping it gives the slot back.
pub struct ConnectionPermit {
    _slot: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    pub fn new(listener: impl Into<String>, max: usize) -> ConnectionLimit {
        ConnectionLimit {
            listener: listener.into(),
            max,
            slots: Arc::new(Semaphore::new(max)),
            refusals: Mutex::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A slot for one more connection, or `None` (and a warning) at the limit.
    pub fn admit(&self) -> Option<ConnectionPermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(ConnectionPermit { _slot: slot }),
            Err(_) => {
                self.note_refusal();
                None
            }
        }
    }

    fn note_refusal(&self) {
        let mut refusals = self.refusals.lock();
        refusals.since_warning += 1;
        let now = Instant::now();
        if refusals
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            listener = %self.listener,
            limit = self.max,
            refused = refusals.since_warning,
            "connection limit reached: new connections are closed until open ones end \
             (`refused` counts them since the last warning)"
        );
        refusals.since_warning = 0;
        refusals.last_warning = Some(now);
    }
}

/// A listener [`accept`] can take connections from.
pub trait Accept {
    type Stream;
    type Addr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Addr = SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(UnixStream, tokio::net::unix::SocketAddr)>> + Send {
        UnixListener::accept(self)
    }
}

/// The next connection within `limit`, with its slot. Connections past the limit are closed
/// as soon as they are accepted; accept errors are logged and retried after a pause.
pub async fn accept<L: Accept>(
    listener: &L,
    limit: &ConnectionLimit,
) -> (L::Stream, L::Addr, ConnectionPermit) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => match limit.admit() {
                Some(permit) => return (stream, addr, permit),
                None => drop(stream),
            },
            Err(e) => {
                tracing::warn!(listener = %limit.listener, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one and returns the soft limit in effect.
/// The usual default (1024) is below the connection limits of the mesh's servers: without
/// this, descriptors would run out before the limits are reached.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open file limit");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionLimit;

    #[test]
    fn slots_are_given_back_when_permits_drop() {
        let limit = ConnectionLimit::new("test", 2);
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none(), "a third past the limit of 2");
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(limit.admit().is_some(), "a slot is free again");
    }
}
