//! How the admin listeners serve connections: HTTP/1.1 with bounds on time and number,
//! because a client that connects and never sends a request (or keeps a connection idle, or
//! trickles a body) must not hold one of the agent's descriptors for good.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mesh_proto::limits::{self, Accept, ConnectionLimit};
use tokio::io::{AsyncRead, AsyncWrite};

/// A request's head must arrive within this of the connection opening or of the previous
/// response; so it is also how long a keep-alive connection may stay idle. Probes, scrapers
/// and the CLI send at once, and reconnecting over loopback costs nothing.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body (enroll) must have arrived in full within this after its head.
pub const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once on each admin listener. Its clients are the kubelet's probes, a
/// metrics scraper and the agent's own CLI: a handful.
pub const MAX_CONNECTIONS: usize = 128;

/// Serves `app` on `listener` (named `name` in the log) forever.
pub async fn serve<L>(listener: L, name: String, app: Router)
where
    L: Accept,
    L::Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limit = ConnectionLimit::new(name, MAX_CONNECTIONS);
    loop {
        let (stream, _, slot) = limits::accept(&listener, &limit).await;
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}
