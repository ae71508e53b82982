//! One HBONE tunnel: the two halves of an HTTP/2 CONNECT stream, driven with `h2` directly.
//!
//! Writing goes straight into the connection's send queue (no channel and no extra task per
//! stream between the relay and the connection), and [`relay`] hands whole buffers to `h2`
//! and whole received frames to the socket without copying them through another buffer.
//! For users that need a byte stream (the HTTP proxy, the sniffer), [`HboneStream`] is also
//! `AsyncRead + AsyncWrite`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the app per send: one read fills at most this much (then it goes to `h2`
/// as it is, split into frames there).
const READ_CHUNK: usize = 64 * 1024;

pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: Received,
}

/// The receiving half, with what a short read left over.
struct Received {
    stream: RecvStream,
    /// Received bytes not yet read (an `AsyncRead` buffer smaller than a frame).
    unread: Bytes,
}

impl HboneStream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> HboneStream {
        HboneStream {
            send,
            recv: Received {
                stream: recv,
                unread: Bytes::new(),
            },
        }
    }
}

impl Received {
    /// The next received chunk, `None` at the end of the stream.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.unread.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.unread))));
        }
        poll_receive(&mut self.stream, cx)
    }
}

/// Like [`RecvStream::poll_data`], with the credit released and a peer's orderly reset
/// (`NO_ERROR`, `CANCEL`) taken as the end of the stream.
fn poll_receive(recv: &mut RecvStream, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
    loop {
        return match ready!(recv.poll_data(cx)) {
            None => Poll::Ready(Ok(None)),
            Some(Ok(data)) if data.is_empty() => continue,
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Poll::Ready(Ok(Some(data)))
            }
            Some(Err(e)) if orderly(&e) => Poll::Ready(Ok(None)),
            Some(Err(e)) => Poll::Ready(Err(io_error(e))),
        };
    }
}

fn orderly(e: &h2::Error) -> bool {
    matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io");
    }
    io::Error::other(e)
}

/// Sends `data` on `send` as the peer's window allows, waiting for credit; returns once all
/// of it is queued in `h2` (which keeps the `Bytes`, no copy).
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    while !data.is_empty() {
        let credit = poll_fn(|cx| poll_credit(send, data.len(), cx)).await?;
        let piece = data.split_to(credit.min(data.len()));
        send.send_data(piece, false).map_err(io_error)?;
    }
    Ok(())
}

/// Credit to send up to `wanted` bytes (at least one), or why the stream cannot take any.
fn poll_credit(
    send: &mut SendStream<Bytes>,
    wanted: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if let Poll::Ready(reset) = send.poll_reset(cx) {
        let reason = reset.map_err(io_error)?;
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the peer reset the stream ({reason})"),
        )));
    }
    send.reserve_capacity(wanted);
    loop {
        return match ready!(send.poll_capacity(cx)) {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => Poll::Ready(Ok(n)),
            Some(Err(e)) => Poll::Ready(Err(io_error(e))),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the HBONE stream closed",
            ))),
        };
    }
}

/// Ends our half of the stream (the peer's app sees end of file).
fn finish(send: &mut SendStream<Bytes>) -> io::Result<()> {
    send.send_data(Bytes::new(), true).map_err(io_error)
}

/// Relays `pod_side` and the tunnel until both directions end; the bytes sent (pod to
/// tunnel) and received. Each direction ends with a half-close of the other side, like the
/// socket relay; an error ends the direction it happens in (a reset is ordinary).
pub async fn relay(pod_side: TcpStream, stream: HboneStream) -> (u64, u64) {
    let HboneStream { mut send, mut recv } = stream;
    let (pod_read, mut pod_write) = pod_side.into_split();
    let outgoing = async {
        let mut moved = 0u64;
        loop {
            // A buffer only once there is something to read, handed to `h2` whole: an idle
            // tunnel holds no buffer of its own.
            let read = match pod_read.readable().await {
                Ok(()) => {
                    let mut buf = BytesMut::with_capacity(READ_CHUNK);
                    pod_read.try_read_buf(&mut buf).map(|n| (n, buf))
                }
                Err(e) => Err(e),
            };
            match read {
                Ok((0, _)) => {
                    let _ = finish(&mut send);
                    break;
                }
                Ok((n, buf)) => {
                    if let Err(e) = send_all(&mut send, buf.freeze()).await {
                        tracing::debug!(error = %e, "HBONE relay: sending failed");
                        break;
                    }
                    moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "HBONE relay: reading the app failed");
                    send.send_reset(Reason::CANCEL);
                    break;
                }
            }
        }
        moved
    };
    let incoming = async {
        let mut moved = 0u64;
        loop {
            match poll_fn(|cx| recv.poll_next(cx)).await {
                Ok(Some(data)) => {
                    if let Err(e) = pod_write.write_all(&data).await {
                        tracing::debug!(error = %e, "HBONE relay: writing to the app failed");
                        break;
                    }
                    moved += data.len() as u64;
                }
                Ok(None) => {
                    let _ = pod_write.shutdown().await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "HBONE relay: receiving failed");
                    let _ = pod_write.shutdown().await;
                    break;
                }
            }
        }
        moved
    };
    tokio::join!(outgoing, incoming)
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let recv = &mut self.get_mut().recv;
        let Some(mut data) = ready!(recv.poll_next(cx))? else {
            return Poll::Ready(Ok(()));
        };
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        data.advance(n);
        recv.unread = data;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.get_mut().send;
        let credit = ready!(poll_credit(send, buf.len(), cx))?;
        let n = credit.min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    /// Gathers the slices into one buffer for `h2` (one copy, as for a single slice).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.get_mut().send;
        let credit = ready!(poll_credit(send, total, cx))?;
        let limit = credit.min(total);
        let mut data = BytesMut::with_capacity(limit);
        for buf in bufs {
            let room = limit - data.len();
            if room == 0 {
                break;
            }
            data.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        let n = data.len();
        send.send_data(data.freeze(), false).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued data is the connection task's to write.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Fails only when the stream is over already (ended or reset): nothing left to end.
        let _ = finish(&mut self.get_mut().send);
        Poll::Ready(Ok(()))
    }
}
