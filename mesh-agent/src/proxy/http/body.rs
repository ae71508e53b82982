//! Request bodies that a retry can send again, and response bodies that report when they end.
//!
//! A retry must send the same request body again, but the client sends it only once. The
//! body is kept while it streams through, up to [`REPLAY_LIMIT`]; a larger body stops being
//! kept (its memory is freed at once) and the request can no longer be retried. A body whose
//! `Content-Length` already says it is larger is never kept: it is retried only after a try
//! that never reached a server (a connect failure), when none of it was read. Bodies are
//! never waited for before the first try: a streaming request (gRPC client streaming, a
//! large upload) flows to the upstream as it arrives.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;

/// Most request body bytes kept for retries.
pub const REPLAY_LIMIT: usize = 64 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body, read once, readable once per try.
pub struct ReplayBody {
    shared: Arc<Mutex<Replay>>,
    /// Next kept chunk this try reads.
    position: usize,
    /// Whether this try has yielded the trailers.
    trailers_sent: bool,
    /// Bytes this try has yielded (for the size hint).
    yielded: u64,
}

struct Replay {
    source: Option<Incoming>,
    /// The source's size hint before anything was read.
    hint: SizeHint,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    /// The source has ended (everything it had is in `kept`, unless `overflowed`).
    ended: bool,
    /// More than [`REPLAY_LIMIT`] arrived or was announced: nothing is kept, no retry
    /// possible once anything was read.
    overflowed: bool,
    /// Something was read from the source (a try may have sent it).
    started: bool,
    /// Every byte read from the client.
    total: u64,
}

impl ReplayBody {
    pub fn new(source: Incoming) -> ReplayBody {
        let ended = source.is_end_stream();
        let hint = source.size_hint();
        ReplayBody {
            shared: Arc::new(Mutex::new(Replay {
                // Announced as larger than what is kept: keeping the first part would only
                // cost memory, as the request could not be retried after it anyway.
                overflowed: hint.lower() > REPLAY_LIMIT as u64,
                hint,
                source: (!ended).then_some(source),
                kept: Vec::new(),
                kept_bytes: 0,
                trailers: None,
                ended,
                started: false,
                total: 0,
            })),
            position: 0,
            trailers_sent: false,
            yielded: 0,
        }
    }

    /// A fresh reader of the same body, for another try. `None` once the body outgrew what
    /// is kept (or the source failed) and some of it was read, so that try would send a
    /// truncated body.
    pub fn replay(&self) -> Option<ReplayBody> {
        let lost = {
            let shared = self.shared.lock();
            shared.overflowed && shared.started
        };
        if lost {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            position: 0,
            trailers_sent: false,
            yielded: 0,
        })
    }

    /// Whether another try may send this body, after a try that failed before sending the
    /// request (`unsent`: no connection) or after one a server may have seen. A body over
    /// the size limit goes again only in the first case, and only if none of it was read:
    /// a server that answered before reading it (or while it streamed) saw the request, and
    /// "larger bodies are not retried" must not depend on that race.
    pub fn can_resend(&self, unsent: bool) -> bool {
        let shared = self.shared.lock();
        !shared.overflowed || (unsent && !shared.started)
    }

    /// Bytes received from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.shared.lock().total
    }

    /// A handle that reads the byte count later (for telemetry after the tries are gone).
    pub fn counter(&self) -> RequestBytes {
        RequestBytes(self.shared.clone())
    }
}

/// Bytes of the request body read so far.
#[derive(Clone)]
pub struct RequestBytes(Arc<Mutex<Replay>>);

impl RequestBytes {
    pub fn get(&self) -> u64 {
        self.0.lock().total
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if !shared.overflowed && this.position < shared.kept.len() {
            let chunk = shared.kept[this.position].clone();
            this.position += 1;
            this.yielded += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = shared.source.as_mut() else {
            // Another try is between reads of a chunk it took; cannot happen with one lock,
            // but never hang: end this try's body with an error.
            return Poll::Ready(Some(Err("request body unavailable".into())));
        };
        let polled = Pin::new(source).poll_frame(cx);
        shared.started |= polled.is_ready();
        let frame = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                drop(shared);
                return Pin::new(this).poll_frame(cx);
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken client body must not be replayed as if complete.
                shared.overflowed = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(chunk) => {
                shared.total += chunk.len() as u64;
                if !shared.overflowed {
                    if shared.kept_bytes + chunk.len() > REPLAY_LIMIT {
                        shared.overflowed = true;
                        shared.kept = Vec::new();
                    } else {
                        shared.kept_bytes += chunk.len();
                        shared.kept.push(chunk.clone());
                        this.position = shared.kept.len();
                    }
                }
                this.yielded += chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock();
        shared.ended
            && (shared.overflowed || self.position >= shared.kept.len())
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock();
        match shared.hint.exact() {
            Some(total) => SizeHint::with_exact(total.saturating_sub(self.yielded)),
            None => SizeHint::default(),
        }
    }
}

/// Wraps a response body: counts its bytes, notes a `grpc-status` trailer, and calls `done`
/// once, when the body ends or is dropped (the client went away), with the byte count and
/// that status.
pub struct Observed<B, F: FnOnce(u64, Option<u32>)> {
    inner: B,
    bytes: u64,
    grpc_status: Option<u32>,
    done: Option<F>,
}

impl<B, F: FnOnce(u64, Option<u32>)> Observed<B, F> {
    pub fn new(inner: B, done: F) -> Self {
        Observed {
            inner,
            bytes: 0,
            grpc_status: None,
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes, self.grpc_status);
        }
    }
}

impl<B, F: FnOnce(u64, Option<u32>)> Drop for Observed<B, F> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B, F> Body for Observed<B, F>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    F: FnOnce(u64, Option<u32>) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if let Some(status) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                {
                    this.grpc_status = Some(status);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::sync::oneshot;

    /// A real request body of `bytes` bytes with a Content-Length, as the proxy's server side
    /// receives it; the server connection lives until the returned sender is dropped.
    async fn incoming(bytes: usize) -> (Incoming, oneshot::Sender<()>) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (body_tx, body_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let hand_over = Mutex::new(Some((body_tx, done_rx)));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (body_tx, done_rx) = hand_over.lock().take().expect("one request");
            let _ = body_tx.send(req.into_body());
            async move {
                let _ = done_rx.await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service),
        );
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::post("/")
            .body(Full::new(Bytes::from(vec![b'x'; bytes])))
            .unwrap();
        tokio::spawn(async move { sender.send_request(request).await });
        (body_rx.await.unwrap(), done_tx)
    }

    #[tokio::test]
    async fn a_small_body_is_replayed_whole() {
        let (source, _done) = incoming(1000).await;
        let body = ReplayBody::new(source);
        let first = body.replay().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(first.len(), 1000);
        assert!(body.can_resend(false));
        let again = body.replay().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(again, first);
        assert_eq!(body.bytes_read(), 1000);
    }

    #[tokio::test]
    async fn a_body_announced_larger_than_kept_is_resent_only_after_a_connect_failure() {
        let (source, _done) = incoming(REPLAY_LIMIT + 1).await;
        let body = ReplayBody::new(source);
        // Nothing read yet: after a connect failure the next try still has it all; after a
        // try a server answered (before reading the body), not.
        assert!(body.can_resend(true));
        assert!(!body.can_resend(false));
        let mut first = body.replay().unwrap();
        let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(chunk.len() < REPLAY_LIMIT);
        // Part of it is gone, and it was never going to be kept whole.
        assert!(!body.can_resend(true));
        assert!(body.replay().is_none());
        let rest = first.collect().await.unwrap().to_bytes();
        assert_eq!(chunk.len() + rest.len(), REPLAY_LIMIT + 1);
    }
}
