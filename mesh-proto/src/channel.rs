//! gRPC channels to the control plane over TLS 1.3 (rustls, ring), for agents (mutual TLS
//! with the node certificate, or pinned to the root a join token names), meshctl and tools.
//! The caller's rustls config decides what is trusted; the control plane is recognised by its
//! SPIFFE ID (`spiffe://<td>/mesh/control-plane`), never by a DNS name.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use mesh_identity::SpiffeId;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// The control plane's identity as the last handshake of a channel verified it.
pub type PeerSlot = Arc<Mutex<Option<SpiffeId>>>;

/// `host:port` of a control plane URL as users type it: `https://h:p`, `h:p`, or
/// `http://h:p` (from before the control plane spoke TLS; it is TLS all the same).
pub fn authority(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let bad = || format!("control plane URL {url:?}: expected https://HOST:PORT");
    if rest.is_empty() || rest.contains("://") || rest.contains('/') {
        bail!("{}", bad());
    }
    let uri: Uri = format!("http://{rest}").parse().with_context(bad)?;
    if uri.port_u16().is_none() {
        bail!("control plane URL {url:?} has no port (the control plane listens on 15010)");
    }
    Ok(rest.to_owned())
}

/// Connects to `url` with `config` (ALPN h2 is set here). The returned slot holds the
/// control plane's verified SPIFFE ID once connected.
pub async fn connect(
    url: &str,
    mut config: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<(Channel, PeerSlot)> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let authority = authority(url)?;
    let peer: PeerSlot = Arc::default();
    let slot = peer.clone();
    // The URI only names the server for tonic; the connector does the TLS.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("bad control plane URL {url:?}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        let slot = slot.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            // Only SNI: verification goes by SPIFFE ID.
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(bare)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            *slot.lock() = mesh_identity::tls::peer_id(tls.get_ref().1);
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| format!("connecting to the control plane at https://{authority}"))?;
    Ok((channel, peer))
}

/// Every distinct message in an error's source chain (the TLS verdict is deep inside).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        current = e.source();
    }
    messages.join(": ")
}

/// True if connecting failed because the control plane's certificate was refused.
pub fn is_certificate_error(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("invalid peer certificate") || text.contains("peer identity")
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn urls_as_users_type_them() {
        assert_eq!(
            authority("https://127.0.0.1:15010").unwrap(),
            "127.0.0.1:15010"
        );
        assert_eq!(authority("127.0.0.1:15010").unwrap(), "127.0.0.1:15010");
        assert_eq!(authority("http://cp:15010/").unwrap(), "cp:15010");
        assert_eq!(authority("[::1]:15010").unwrap(), "[::1]:15010");
        assert!(authority("https://cp").is_err());
        assert!(authority("grpc://cp:1").is_err());
        assert!(authority("https://cp:1/path").is_err());
        assert!(authority("").is_err());
    }
}
