//! TLS for everything the control plane serves (TLS 1.3, rustls with ring).
//!
//! The replica's own certificate (`spiffe://<td>/mesh/control-plane`, plus DNS `localhost` and
//! the listen IP so plain tooling can connect) is issued by the mesh CA at start, and again
//! whenever the CA changes or it reaches half life. The chain it serves ends with the root, so
//! a joining agent can check it against the pin in its join token.
//!
//! Client certificates are optional at the TLS layer (meshctl and joining agents have none);
//! the verified peer identity reaches every handler as a [`PeerInfo`] request extension, and
//! the services that need a node decide (see [`node_of`]).
//!
//! The listener is open to anyone who can reach it, so every connection is bounded (see
//! [`mesh_proto::limits`]): at most `--max-connections` at once, counted from the TCP accept;
//! [`HANDSHAKE_TIMEOUT`] to finish TLS; [`FIRST_CALL_TIMEOUT`] from then to start a call;
//! [`IDLE_TIMEOUT`] with no call in flight. Agents hold their config stream open for good, so
//! they are never idle.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use mesh_identity::tls::{server_config, ClientAuth};
use mesh_identity::{Credential, SpiffeId, TrustBundle};
use mesh_proto::limits::grpc::HasRequestWatch;
use mesh_proto::limits::{self, ConnectionLimit, ConnectionPermit, RequestWatch, Watched};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use super::ca::Ca;
use super::cache::ConfigCache;

/// Lifetime of a replica's serving certificate (renewed at half life).
const SERVER_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A client that has not finished its TLS handshake by then is dropped: a real client
/// needs one round trip, a slowloris needs the slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of the handshake to the first call (the HTTP/2 preface and settings come
/// first): every client of the control plane calls as soon as it connects.
pub const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no call in flight for this long is closed. meshctl connects per
/// command; agents keep a stream open; this only reclaims connections a client forgot.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Who is on the other end of a connection.
#[derive(Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The verified SPIFFE ID of the client certificate, if one was presented.
    pub id: Option<SpiffeId>,
    /// The connection's calls (see [`IDLE_TIMEOUT`]).
    calls: RequestWatch,
}

impl HasRequestWatch for PeerInfo {
    fn request_watch(&self) -> &RequestWatch {
        &self.calls
    }
}

/// The node a request comes from: its verified client certificate must be a node identity.
pub fn node_of<T>(request: &Request<T>, what: &str) -> Result<String, Status> {
    let id = node_peer(request, what)?;
    Ok(id.node_name().unwrap_or_default().to_owned())
}

/// The verified node identity (`spiffe://<td>/mesh/node/<name>`) of the caller.
pub fn node_peer<T>(request: &Request<T>, what: &str) -> Result<SpiffeId, Status> {
    let id = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.id.clone())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "{what} needs the node's client certificate (mTLS); join the node first with \
                 `mesh-agent run --join-token TOKEN` (see `meshctl token create`)"
            ))
        })?;
    if id.node_name().is_none() {
        return Err(Status::permission_denied(format!(
            "{what} is for nodes; the client certificate is {id}, not a node identity"
        )));
    }
    Ok(id)
}

/// One accepted TLS connection, as tonic serves it.
pub struct TlsConn {
    stream: Watched<TlsStream<TcpStream>>,
    info: PeerInfo,
    /// Its slot under `--max-connections`, free again when tonic drops the connection.
    _slot: ConnectionPermit,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The replica's current TLS server config, replaced as the CA changes.
pub struct ServerTls {
    config: ArcSwap<rustls::ServerConfig>,
}

impl ServerTls {
    /// Issues the first serving certificate and keeps it current from then on.
    pub fn start(
        ca: Arc<Ca>,
        cache: Arc<ConfigCache>,
        listen: SocketAddr,
    ) -> Result<Arc<ServerTls>> {
        let (config, renew_at) = build(&ca, &cache, listen)?;
        let tls = Arc::new(ServerTls {
            config: ArcSwap::from_pointee(config),
        });
        tokio::spawn(keep_current(tls.clone(), ca, cache, listen, renew_at));
        Ok(tls)
    }

    /// Accepts TCP connections on `listener` within `limit` and yields the ones that finish
    /// a handshake.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        limit: ConnectionLimit,
    ) -> impl futures::Stream<Item = Result<TlsConn, io::Error>> {
        let (tx, rx) = mpsc::channel::<Result<TlsConn, io::Error>>(64);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote, slot) = limits::accept(&listener, &limit).await;
                if tx.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.load_full());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let id = mesh_identity::tls::peer_id(stream.get_ref().1);
                            let calls = RequestWatch::new(FIRST_CALL_TIMEOUT, Some(IDLE_TIMEOUT));
                            let info = PeerInfo {
                                remote,
                                id,
                                calls: calls.clone(),
                            };
                            let stream = Watched::new(stream, calls);
                            let _ = tx
                                .send(Ok(TlsConn {
                                    stream,
                                    info,
                                    _slot: slot,
                                }))
                                .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn trust_domain(cache: &ConfigCache) -> String {
    super::mesh_config_spec(cache).trust_domain
}

/// A fresh serving config: a new key, a certificate from the active authority.
fn build(
    ca: &Ca,
    cache: &ConfigCache,
    listen: SocketAddr,
) -> Result<(rustls::ServerConfig, SystemTime)> {
    let loaded = ca.current();
    let id = SpiffeId::control_plane(&trust_domain(cache))?;
    let key = rcgen::KeyPair::generate().context("generating the server key")?;
    let mut sans = vec![rcgen::SanType::DnsName(
        "localhost".try_into().context("DNS SAN")?,
    )];
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    sans.extend(ips.into_iter().map(rcgen::SanType::IpAddress));
    let chain = loaded.sign(&key, &id, SERVER_CERT_TTL, sans)?;
    // The root goes last, so a joining agent finds the root its token pins.
    let chain = format!("{chain}{}", loaded.state.active.root_pem);
    let credential = Credential::from_pem(&chain, &key.serialize_pem())?;
    let bundle = TrustBundle::from_pem(&loaded.bundle_pem)?;
    let mut config = server_config(&credential, &bundle, ClientAuth::Optional)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, credential.renew_at()))
}

/// Rebuilds the config when the CA changes (rotation), the trust domain changes, or the
/// certificate reaches half life.
async fn keep_current(
    tls: Arc<ServerTls>,
    ca: Arc<Ca>,
    cache: Arc<ConfigCache>,
    listen: SocketAddr,
    mut renew_at: SystemTime,
) {
    let mut ca_changes = ca.subscribe();
    let mut versions = cache.subscribe();
    let mut domain = trust_domain(&cache);
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            changed = ca_changes.changed() => if changed.is_err() { return },
            changed = versions.changed() => {
                if changed.is_err() { return }
                let now = trust_domain(&cache);
                if now == domain { continue }
                domain = now;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        match build(&ca, &cache, listen) {
            Ok((config, next)) => {
                tls.config.store(Arc::new(config));
                renew_at = next;
                tracing::info!("serving certificate renewed");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "renewing the serving certificate failed");
                renew_at = SystemTime::now() + Duration::from_secs(10);
            }
        }
    }
}
