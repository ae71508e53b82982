//! Closing connections that carry no request for too long.
//!
//! The server counts requests into a [`RequestWatch`] (a [`RequestGuard`] per request in
//! flight); the connection's I/O goes through [`Watched`], which fails the connection's reads
//! with `TimedOut` once the watch has been quiet too long, so the HTTP server serving it
//! closes it. A request in flight holds the connection open however long it lasts (an
//! agent's config stream lasts for days).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The requests of one connection, and how long it may go without one.
#[derive(Clone)]
pub struct RequestWatch(Arc<Watch>);

struct Watch {
    /// How long a new connection may take to start its first request.
    first: Duration,
    /// How long the connection may then stay with no request in flight (`None`: forever).
    idle: Option<Duration>,
    state: Mutex<State>,
}

struct State {
    in_flight: usize,
    served: bool,
    /// When the connection opened, or its last request ended.
    quiet_since: Instant,
    /// The connection's task, woken when its last request ends so the idle clock starts.
    waker: Option<Waker>,
}

/// Where a [`RequestWatch`] stands.
enum Deadline {
    /// Quiet: the connection closes at this instant unless a request starts.
    At(Instant),
    /// A request is in flight.
    Busy,
    /// It has served a request and has no idle limit: it never closes for quiet.
    Never,
}

impl RequestWatch {
    /// A watch for a connection opening now: its first request must start within `first`;
    /// after that it may stay with none in flight for `idle` (`None`: no limit).
    pub fn new(first: Duration, idle: Option<Duration>) -> RequestWatch {
        RequestWatch(Arc::new(Watch {
            first,
            idle,
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                quiet_since: Instant::now(),
                waker: None,
            }),
        }))
    }

    /// Counts a request as in flight until the guard drops.
    pub fn begin(&self) -> RequestGuard {
        let mut state = self.0.state.lock();
        state.in_flight += 1;
        state.served = true;
        RequestGuard(self.clone())
    }

    /// Where the watch stands; while busy, `waker` is woken when the last request ends.
    fn deadline(&self, waker: &Waker) -> Deadline {
        let mut state = self.0.state.lock();
        if state.in_flight > 0 {
            if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                state.waker = Some(waker.clone());
            }
            return Deadline::Busy;
        }
        let limit = if state.served {
            match self.0.idle {
                Some(idle) => idle,
                None => return Deadline::Never,
            }
        } else {
            self.0.first
        };
        Deadline::At(state.quiet_since + limit)
    }

    fn expired(&self) -> io::Error {
        let served = self.0.state.lock().served;
        let why = match (served, self.0.idle) {
            (true, Some(idle)) => format!("no request for {}s", idle.as_secs()),
            _ => format!(
                "no request within {}s of connecting",
                self.0.first.as_secs()
            ),
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

/// One request in flight (see [`RequestWatch::begin`]).
pub struct RequestGuard(RequestWatch);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0 .0.state.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.quiet_since = Instant::now();
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A connection's I/O, closed (its reads fail with `TimedOut`) once its [`RequestWatch`]
/// has been quiet too long. The check runs whenever a read would wait, which an HTTP/2 or
/// HTTP/1 server does all the time it has nothing else to do.
pub struct Watched<S> {
    io: S,
    watch: RequestWatch,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// The watch can no longer expire: skip the checks.
    settled: bool,
}

impl<S> Watched<S> {
    pub fn new(io: S, watch: RequestWatch) -> Watched<S> {
        Watched {
            io,
            watch,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            settled: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Arms the timer for the watch's deadline; an error once it has passed.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let deadline = match self.watch.deadline(cx.waker()) {
                Deadline::At(at) => at,
                Deadline::Busy => return Ok(()),
                Deadline::Never => {
                    self.settled = true;
                    return Ok(());
                }
            };
            if Instant::now() >= deadline {
                return Err(self.watch.expired());
            }
            if self.armed != Some(deadline) {
                self.timer.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_pending() && !this.settled {
            if let Err(e) = this.poll_quiet(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    /// Reads from a connection whose peer never writes; how long until the watch closes it.
    async fn closed_after(watch: RequestWatch) -> Duration {
        let (_peer, io) = tokio::io::duplex(64);
        let mut watched = Watched::new(io, watch);
        let start = Instant::now();
        let error = watched.read_u8().await.expect_err("closed for quiet");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_request_closes_after_the_first_bound() {
        let waited = closed_after(RequestWatch::new(FIRST, Some(IDLE))).await;
        assert_eq!(waited, FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_closes_after_the_last_request_ends_not_while_one_is_in_flight() {
        let watch = RequestWatch::new(FIRST, Some(IDLE));
        let call = watch.begin();
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(300)).await;
            drop(call);
        });
        // Open for the whole call (300 s), then the idle bound.
        assert_eq!(closed_after(watch).await, Duration::from_secs(300) + IDLE);
        ends.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_limit_a_served_connection_stays() {
        let watch = RequestWatch::new(FIRST, None);
        drop(watch.begin());
        let (_peer, io) = tokio::io::duplex(64);
        let mut watched = Watched::new(io, watch);
        let read = tokio::time::timeout(Duration::from_secs(3600), watched.read_u8()).await;
        assert!(read.is_err(), "still open after an hour: {read:?}");
    }
}
