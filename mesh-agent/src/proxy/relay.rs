//! Carrying bytes both ways between the two sides of a proxied connection.

use tokio::io::copy_bidirectional_with_sizes;
use tokio::net::TcpStream;

use crate::metrics::DirectionCounters;

/// Large buffers: a single stream through the proxy should not be held back by syscall count.
const BUFFER: usize = 64 * 1024;

/// Copies until both sides are done, then records the bytes. `pod_side` is the socket facing
/// the enrolled pod's app, `peer_side` the other end.
pub async fn relay(
    mut pod_side: TcpStream,
    mut peer_side: TcpStream,
    counters: &DirectionCounters,
) {
    counters.active.inc();
    let result = copy_bidirectional_with_sizes(&mut pod_side, &mut peer_side, BUFFER, BUFFER).await;
    counters.active.dec();
    match result {
        Ok((sent, received)) => {
            counters.bytes_sent.inc_by(sent);
            counters.bytes_received.inc_by(received);
        }
        // A reset from either side is ordinary end of life for a connection.
        Err(e) => tracing::debug!(error = %e, "relay ended with an error"),
    }
}
