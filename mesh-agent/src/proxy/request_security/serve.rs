//! The inbound HTTP server for connections that reach a pod over HBONE or plaintext on a
//! port whose requests are judged one by one: each request is judged ([`super::judge`]);
//! a refused one is answered here (the connection stays open for the next); an admitted
//! one goes to the app over the one connection this inbound connection delivered, which
//! the app sees as coming from the real client, as on the L4 path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_api::Protocol;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::counters::RefusedRequest;
use super::{judge, Refusal};
use crate::handover::serve_draining;
use crate::proxy::counted_io::CountedIo;
use crate::proxy::http::body::BoxError;
use crate::proxy::http::errors::{ProxyBody, ProxyError};
use crate::proxy::http::{headers, is_grpc, server_builder, upstream_version};
use crate::proxy::inbound::deliver;
use crate::proxy::policy::PeerInfo;
use crate::proxy::tracker::Registration;
use crate::proxy::PodContext;

/// One connection into a pod, as the inbound server sees it.
pub struct Inbound {
    /// The destination pod.
    pub pod: Arc<PodContext>,
    pub peer: PeerInfo,
    pub peer_address: SocketAddr,
    /// The app's address (pod IP and port).
    pub destination: SocketAddr,
    pub protocol: Protocol,
}

/// The app side: the delivered connection, opened as HTTP/1.1 or HTTP/2 by the first
/// request that passes (its version decides).
enum App {
    Unopened(TcpStream),
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
    Closed,
}

struct Connection {
    inbound: Inbound,
    app: tokio::sync::Mutex<App>,
    /// Shared with upgraded (WebSocket) tunnels, which outlive the HTTP connection: they
    /// stay listed, and end when policy revokes the connection.
    registration: Arc<Registration>,
}

/// Serves `client` as HTTP/1.1 or HTTP/2 until it closes or policy revokes the connection
/// (`registration`), sending admitted requests to the app over `delivered`.
pub async fn serve_inbound<IO>(
    client: IO,
    delivered: TcpStream,
    inbound: Inbound,
    registration: Registration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pod = inbound.pod.clone();
    let counters = pod.counters.inbound.clone();
    counters.active.inc();
    let registration = Arc::new(registration);
    let connection = Arc::new(Connection {
        inbound,
        app: tokio::sync::Mutex::new(App::Unopened(delivered)),
        registration: registration.clone(),
    });
    let service = hyper::service::service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(handle(&connection, request).await) }
    });
    let (io, counts) = CountedIo::new(client);
    let builder = server_builder();
    // Draining (upgrade, SIGTERM): finish the requests under way, then close.
    let served = serve_draining!(
        pod.shared.drain,
        builder.serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    tokio::select! {
        served = served => {
            if let Err(e) = served {
                tracing::debug!(pod = %pod.pod, error = %e, "inbound HTTP connection ended");
            }
        }
        _ = registration.closed() => {}
    }
    let (read, written) = counts.get();
    counters.bytes_received.inc_by(read);
    counters.bytes_sent.inc_by(written);
    counters.active.dec();
}

async fn handle(connection: &Connection, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let inbound = &connection.inbound;
    let pod = &inbound.pod;
    let snapshot = pod.registry.snapshot();
    let grpc = is_grpc(&request);
    let client_upgrade = headers::is_upgrade(request.version(), request.headers())
        .then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let judged = judge(
        pod,
        &snapshot,
        &inbound.peer,
        inbound.destination.port(),
        &mut parts,
    );
    if let Err(refusal) = judged {
        log_refusal(inbound, &snapshot, &parts, grpc, &refusal);
        return refusal.error.response(grpc);
    }
    let version = upstream_version(inbound.protocol, parts.version);
    if client_upgrade.is_none() {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    headers::fit_request_target(
        &mut parts.uri,
        &mut parts.headers,
        version,
        &inbound.destination.to_string(),
    );
    parts.version = version;
    let request = Request::from_parts(parts, body);
    let mut response = match send(connection, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(pod = %pod.pod, error = %e, "sending an inbound request to the app failed");
            return ProxyError::UpstreamReset.response(grpc);
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let app_upgrade = hyper::upgrade::on(&mut response);
            let registration = connection.registration.clone();
            tokio::spawn(async move {
                if let Ok((client, app)) = tokio::try_join!(client_upgrade, app_upgrade) {
                    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut app) => {}
                        _ = registration.closed() => {}
                    }
                }
            });
        }
    } else {
        headers::strip_hop_by_hop(response.headers_mut());
    }
    response.map(|b| b.map_err(Into::into).boxed_unsync())
}

/// Sends an admitted request over the connection to the app: the one delivered with this
/// inbound connection, or a new one delivered the same way when the app has closed it (an
/// idle keep-alive timeout, `Connection: close`, an HTTP/2 GOAWAY): otherwise every later
/// request of a long-lived client connection (a source node's pooled one) would fail.
async fn send(
    connection: &Connection,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let mut app = connection.app.lock().await;
    let gone = match &*app {
        App::Unopened(_) => false,
        App::Http1(sender) => sender.is_closed(),
        App::Http2(sender) => sender.is_closed(),
        App::Closed => true,
    };
    if gone {
        *app = App::Unopened(redeliver(&connection.inbound).await?);
    }
    if let App::Unopened(_) = &*app {
        let App::Unopened(stream) = std::mem::replace(&mut *app, App::Closed) else {
            unreachable!("matched just above");
        };
        *app = open(stream, request.version()).await?;
    }
    match &mut *app {
        App::Http2(sender) => {
            // Streams run concurrently: the lock is only for opening.
            let mut sender = sender.clone();
            drop(app);
            Ok(sender.send_request(request).await?)
        }
        // HTTP/1.1 clients send one request at a time; holding the lock keeps it so.
        App::Http1(sender) => {
            if sender.ready().await.is_err() {
                // Closed between the check and now; nothing of this request was sent.
                let stream = redeliver(&connection.inbound).await?;
                *app = open(stream, Version::HTTP_11).await?;
                let App::Http1(sender) = &mut *app else {
                    unreachable!("opened as HTTP/1.1 just above");
                };
                sender.ready().await?;
                return Ok(sender.send_request(request).await?);
            }
            Ok(sender.send_request(request).await?)
        }
        App::Unopened(_) | App::Closed => Err("the connection to the app failed".into()),
    }
}

/// A new connection to the app for this inbound connection, from the same client.
async fn redeliver(inbound: &Inbound) -> Result<TcpStream, BoxError> {
    let delivered = deliver(&inbound.pod, inbound.destination, inbound.peer_address).await?;
    Ok(delivered.stream)
}

async fn open(stream: TcpStream, version: Version) -> Result<App, hyper::Error> {
    let io = TokioIo::new(stream);
    if version == Version::HTTP_2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        tokio::spawn(connection);
        Ok(App::Http2(sender))
    } else {
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(connection.with_upgrades());
        Ok(App::Http1(sender))
    }
}

fn log_refusal(
    inbound: &Inbound,
    snapshot: &mesh_api::Snapshot,
    parts: &http::request::Parts,
    grpc: bool,
    refusal: &Refusal,
) {
    let observability = &snapshot.mesh_config().observability;
    tracing::debug!(pod = %inbound.pod.pod, principal = ?inbound.peer.principal, method = %parts.method, path = parts.uri.path(), policy = ?refusal.policy, flag = refusal.error.flag(), "request refused");
    if !observability.access_log.enabled {
        return;
    }
    let record = RefusedRequest {
        start_time: SystemTime::now(),
        method: parts.method.as_str(),
        path: parts.uri.path(),
        protocol: if grpc { "grpc" } else { "http" },
        response_code: refusal.error.status().as_u16(),
        response_flags: refusal.error.flag(),
        source_principal: inbound.peer.principal.as_deref().unwrap_or_default(),
        source_address: inbound.peer_address.to_string(),
        destination_workload: inbound.pod.workload.to_string(),
        authz_policy: refusal.policy.as_deref(),
        request_id: parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    };
    inbound
        .pod
        .shared
        .http
        .telemetry
        .log_refused(&observability.access_log.path, &record);
}
