//! Carrying bytes both ways between the two sides of a proxied connection.
//!
//! Between two sockets, each direction is a [`pump`]: small messages through the worker
//! thread's buffer, bulk transfers with splice(2), and no buffer or pipe held while the
//! connection is idle. An idle proxied connection costs two sockets and a small task.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pump::{pump, Flow};
use crate::handover::Pause;
use crate::metrics::DirectionCounters;

/// What a relay of two sockets did.
pub struct Relayed {
    /// Bytes sent by the pod, received by it.
    pub sent: u64,
    pub received: u64,
    /// Both sockets (pod side, peer side), when the relay stopped for a successor agent
    /// (`pause`) with nothing of the connection left in the relay, instead of ending.
    pub paused: Option<(TcpStream, TcpStream)>,
}

/// Copies until both directions are done, then records the bytes and returns them (sent by
/// the pod, received by it). `pod_side` is the socket facing the enrolled pod's app,
/// `peer_side` the other end; when the peer is an enrolled pod on this node too (same-node
/// delivery), `peer_counters` are its inbound counters.
///
/// When `pause` resolves (an upgrade: the successor agent takes the connection over), each
/// direction stops before its next read, once what it read is written: the sockets hold the
/// whole connection then, and are returned in `paused`. A direction already ended reads its
/// end again in the next relay and passes it on again, which changes nothing.
pub async fn relay(
    pod_side: TcpStream,
    peer_side: TcpStream,
    counters: &DirectionCounters,
    peer_counters: Option<&DirectionCounters>,
    pause: &Pause,
) -> Relayed {
    let _active = Active::new(counters, peer_counters);
    let (sent, received) = tokio::join!(
        pump(&pod_side, &peer_side, pause.clone().until()),
        pump(&peer_side, &pod_side, pause.clone().until())
    );
    // Handed over only when neither direction failed and one of them paused.
    let paused = matches!(
        (&sent, &received),
        (Ok(Flow::Paused(_)), Ok(_)) | (Ok(_), Ok(Flow::Paused(_)))
    );
    let (sent, received) = (moved(sent), moved(received));
    counters.bytes_sent.inc_by(sent);
    counters.bytes_received.inc_by(received);
    if let Some(peer) = peer_counters {
        peer.bytes_sent.inc_by(received);
        peer.bytes_received.inc_by(sent);
    }
    Relayed {
        sent,
        received,
        paused: paused.then_some((pod_side, peer_side)),
    }
}

/// Like [`relay`] for a peer side that is not a socket (an HBONE stream): bytes go through
/// userspace buffers, since they are encrypted anyway.
pub async fn relay_stream<S>(
    pod_side: TcpStream,
    peer_side: S,
    counters: &DirectionCounters,
) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _active = Active::new(counters, None);
    let (mut pod_read, mut pod_write) = pod_side.into_split();
    let (mut peer_read, mut peer_write) = tokio::io::split(peer_side);
    let (sent, received) = tokio::join!(
        copy(&mut pod_read, &mut peer_write),
        copy(&mut peer_read, &mut pod_write)
    );
    let (sent, received) = (moved(sent), moved(received));
    counters.bytes_sent.inc_by(sent);
    counters.bytes_received.inc_by(received);
    (sent, received)
}

/// Like [`relay_stream`] for an HBONE tunnel, whose buffers go to `h2` and come from it
/// whole (no copy through another buffer, no extra task per stream).
pub async fn relay_tunnel(
    pod_side: TcpStream,
    tunnel: crate::proxy::hbone::HboneStream,
    counters: &DirectionCounters,
) -> (u64, u64) {
    let _active = Active::new(counters, None);
    let (sent, received) = crate::proxy::hbone::relay(pod_side, tunnel).await;
    counters.bytes_sent.inc_by(sent);
    counters.bytes_received.inc_by(received);
    (sent, received)
}

/// Copies until end of stream, then shuts `to` down for writing (half-close). Buffers are
/// allocated once per direction and never zeroed (`read_buf` fills spare capacity): at
/// thousands of new connections per second, zeroing big buffers was the proxy's top cost.
async fn copy<R, W>(from: &mut R, to: &mut W) -> Result<u64, (u64, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Below glibc's mmap threshold, so buffers come from the heap, not fresh zeroed pages.
    const BUFFER: usize = 64 * 1024;
    let mut buf = bytes::BytesMut::with_capacity(BUFFER);
    let mut moved = 0u64;
    loop {
        buf.clear();
        match from.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                to.write_all(&buf).await.map_err(|e| (moved, e))?;
                moved += n as u64;
            }
            Err(e) => {
                let _ = to.shutdown().await;
                return Err((moved, e));
            }
        }
    }
    to.shutdown().await.map_err(|e| (moved, e))?;
    Ok(moved)
}

/// Counts a connection as active for as long as it lives, also when its relay is dropped
/// (a connection closed by policy). No allocation: this is on every connection's path.
struct Active<'a>(&'a DirectionCounters, Option<&'a DirectionCounters>);

impl<'a> Active<'a> {
    fn new(side: &'a DirectionCounters, peer: Option<&'a DirectionCounters>) -> Active<'a> {
        let active = Active(side, peer);
        for side in active.sides() {
            side.active.inc();
        }
        active
    }

    fn sides(&self) -> impl Iterator<Item = &DirectionCounters> {
        std::iter::once(self.0).chain(self.1)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        for side in self.sides() {
            side.active.dec();
        }
    }
}

fn moved<T: Into<u64>>(result: Result<T, (u64, io::Error)>) -> u64 {
    match result {
        Ok(bytes) => bytes.into(),
        // A reset from either side is ordinary end of life for a connection.
        Err((bytes, e)) => {
            tracing::debug!(error = %e, "relay direction ended with an error");
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pump::tests::connected;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two connected pairs (a1<->a2, b1<->b2) with a2 and b1 relayed: bytes written at a1
    /// come out at b2 and back, and a half-close travels through.
    #[tokio::test]
    async fn relays_both_ways_and_propagates_half_close() {
        let ((mut a1, a2), (b1, mut b2)) = (connected().await, connected().await);
        let counters = DirectionCounters::default();
        let relay_task = async { relay(a2, b1, &counters, None, &Pause::never()).await };
        let traffic = async {
            let payload = vec![7u8; 1_000_000];
            a1.write_all(&payload).await.unwrap();
            a1.shutdown().await.unwrap();
            let mut got = Vec::new();
            b2.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), payload.len());
            b2.write_all(b"reply").await.unwrap();
            b2.shutdown().await.unwrap();
            let mut reply = Vec::new();
            a1.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"reply");
        };
        tokio::join!(relay_task, traffic);
        assert_eq!(counters.bytes_sent.get(), 1_000_000);
        assert_eq!(counters.bytes_received.get(), 5);
        assert_eq!(counters.active.get(), 0);
    }

    /// Paused mid-transfer (an upgrade), the relay hands back both sockets with every byte
    /// it read already written: a second relay on them (the successor's) completes the
    /// transfer exactly.
    #[tokio::test]
    async fn a_paused_relay_loses_nothing_and_a_second_relay_finishes() {
        let ((mut a1, a2), (b1, mut b2)) = (connected().await, connected().await);
        let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let handoff = crate::handover::Handoff::default();
        let counters = DirectionCounters::default();
        // Keeps writing across the pause (the socket buffers, then the second relay, take it).
        let writer = tokio::spawn({
            let payload = payload.clone();
            async move {
                a1.write_all(&payload).await.unwrap();
                a1.shutdown().await.unwrap();
                a1
            }
        });
        let pause = handoff.pause();
        let first = async {
            let relayed = relay(a2, b1, &counters, None, &pause).await;
            relayed.paused.expect("paused, not ended")
        };
        let reader = async {
            let mut got = vec![0u8; 100_000];
            b2.read_exact(&mut got).await.unwrap();
            // Mid-transfer: the relay is told to stop.
            let _queue = handoff.start();
            got
        };
        let ((a2, b1), mut got) = tokio::join!(first, reader);
        let never = Pause::never();
        let second = relay(a2, b1, &counters, None, &never);
        let rest = async {
            b2.read_to_end(&mut got).await.unwrap();
            b2.shutdown().await.unwrap();
        };
        let (relayed, ()) = tokio::join!(second, rest);
        let _a1 = writer.await.unwrap();
        assert!(relayed.paused.is_none());
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "bytes lost or reordered across the pause");
    }

    /// A socket relayed to an in-memory stream (what an HBONE stream is to the relay): bytes
    /// both ways, the half-close passed on, the counts recorded.
    #[tokio::test]
    async fn relays_a_socket_to_a_stream() {
        let (mut app, pod_side) = connected().await;
        let (peer_side, mut far) = tokio::io::duplex(1024);
        let counters = DirectionCounters::default();
        let relay_task = relay_stream(pod_side, peer_side, &counters);
        let traffic = async {
            let payload = vec![3u8; 300_000];
            app.write_all(&payload).await.unwrap();
            app.shutdown().await.unwrap();
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, payload);
            far.write_all(b"back").await.unwrap();
            far.shutdown().await.unwrap();
            let mut reply = Vec::new();
            app.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"back");
        };
        tokio::join!(relay_task, traffic);
        assert_eq!(counters.bytes_sent.get(), 300_000);
        assert_eq!(counters.bytes_received.get(), 4);
        assert_eq!(counters.active.get(), 0);
    }
}
