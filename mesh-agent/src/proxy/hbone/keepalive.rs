//! HTTP/2 pings on a pooled HBONE connection, so a peer that vanished without closing (a
//! node gone, a network cut) is noticed and its connection dropped rather than reused.

use std::time::Duration;

use h2::{Ping, PingPong};

/// How often a connection is pinged.
const INTERVAL: Duration = Duration::from_secs(30);
/// How long the peer has to answer one.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Pings every [`INTERVAL`]; returns when a ping went unanswered for [`TIMEOUT`] or could
/// not be sent (the connection is gone). The connection must be polled meanwhile (pongs are
/// read by it); the caller drops it when this returns.
pub async fn until_unanswered(mut ping_pong: PingPong) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        match tokio::time::timeout(TIMEOUT, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HBONE ping failed");
                return;
            }
            Err(_) => {
                tracing::info!("HBONE peer did not answer a ping within {TIMEOUT:?}; closing");
                return;
            }
        }
    }
}
