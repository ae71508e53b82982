//! The byte stream under a pooled upstream HTTP/1.1 connection, with the errors of writing
//! to a peer that stopped reading hidden from hyper, so that its early answer still arrives.
//!
//! A server may answer before it has read the whole request body (a 413, a 401, a 503 from
//! an app that is shedding load) and close the connection. The proxy, still sending the
//! body, then gets EPIPE or ECONNRESET on a write, and hyper's client fails the request with
//! that error although the complete response sits in the socket: the client would get a 502
//! instead of the server's answer. After the first such error, writes are accepted and
//! dropped, so hyper goes on to read the response; a server that closed without answering
//! still fails the request, when hyper reads the end of the connection.
//!
//! Not for upgraded connections (WebSocket): after the switch their bytes are relayed, and
//! dropping them would hide a dead peer from the other side.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct KeepReading<T> {
    inner: T,
    /// The peer no longer takes what is written.
    peer_stopped_reading: bool,
}

impl<T> KeepReading<T> {
    pub fn new(inner: T) -> KeepReading<T> {
        KeepReading {
            inner,
            peer_stopped_reading: false,
        }
    }

    /// A write's result, with "the peer stopped reading" turned into `written` bytes taken.
    fn absorb<R>(&mut self, polled: Poll<io::Result<R>>, written: R) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(Err(e)) if stopped_reading(&e) => {
                tracing::debug!(error = %e, "upstream stopped reading; reading its answer");
                self.peer_stopped_reading = true;
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }
}

fn stopped_reading(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for KeepReading<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for KeepReading<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.absorb(polled, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(len));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.absorb(polled, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.absorb(polled, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.absorb(polled, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    /// What a server that answers early looks like from the client's socket: every read
    /// waits until `answer_after` writes went through, then gets the whole answer, then the
    /// end; writes take at most 16 KiB each, and fail with EPIPE soon after the answer (the
    /// server closed).
    struct EarlyAnswer {
        answer: &'static [u8],
        answer_after: usize,
        writes: usize,
        read_waiting: Option<std::task::Waker>,
    }

    impl AsyncRead for EarlyAnswer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.writes < self.answer_after {
                self.read_waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = self.answer.len().min(buf.remaining());
            buf.put_slice(&self.answer[..n]);
            self.answer = &self.answer[n..];
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EarlyAnswer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.writes > self.answer_after {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            self.writes += 1;
            if self.writes == self.answer_after {
                if let Some(waker) = self.read_waiting.take() {
                    waker.wake();
                }
            }
            Poll::Ready(Ok(buf.len().min(16384)))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// POSTs 1 MiB in 16 KiB chunks, every chunk ready at once (as from a fast client), and
    /// returns the status and body of the answer, or hyper's error.
    async fn post<T>(io: T) -> Result<(u16, Bytes), hyper::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(connection);
        let chunks = (0..64).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![0; 16384]))));
        let request = Request::post("/upload")
            .header("host", "app")
            .header("content-length", "1048576")
            .body(StreamBody::new(futures::stream::iter(chunks)))
            .unwrap();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }

    fn early_answer() -> EarlyAnswer {
        EarlyAnswer {
            answer: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy\n",
            answer_after: 2,
            writes: 0,
            read_waiting: None,
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_body_was_sent_reaches_the_client() {
        let (status, body) = post(KeepReading::new(early_answer())).await.unwrap();
        assert_eq!((status, &body[..]), (503, &b"busy\n"[..]));
        // Without it, hyper reports the failed write instead of the answer.
        let error = post(early_answer()).await.unwrap_err();
        assert!(error.to_string().contains("writing a body"), "{error}");
    }

    #[tokio::test]
    async fn a_peer_that_closes_without_answering_still_fails_the_request() {
        let silent = EarlyAnswer {
            answer: b"",
            ..early_answer()
        };
        assert!(post(KeepReading::new(silent)).await.is_err());
    }
}
