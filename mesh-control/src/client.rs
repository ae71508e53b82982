//! Connecting to the control plane: TLS (1.3, rustls) verified against the mesh's trust
//! bundle and the control plane's SPIFFE ID, as an administrator (what `meshctl` does) or
//! with any rustls client config (tests, tools).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use mesh_identity::tls::{client_config, Expect};
use mesh_identity::TrustBundle;
use mesh_proto::v1::mesh_admin_client::MeshAdminClient;
use rustls::pki_types::ServerName;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::server::MAX_MESSAGE;

#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type AdminClient = MeshAdminClient<InterceptedService<Channel, BearerToken>>;

/// `host:port` of a control plane URL as users type it: `https://h:p`, `h:p`, or (from
/// before the control plane spoke TLS) `http://h:p`, which is taken as https too.
pub fn authority(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    if rest.contains("://") {
        bail!("control plane URL {url:?}: expected https://HOST:PORT");
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        bail!("control plane URL {url:?}: expected https://HOST:PORT");
    }
    let uri: Uri = format!("http://{rest}")
        .parse()
        .with_context(|| format!("control plane URL {url:?}: expected https://HOST:PORT"))?;
    if uri.port_u16().is_none() {
        bail!("control plane URL {url:?} has no port (the control plane listens on 15010)");
    }
    Ok(rest.to_owned())
}

/// A gRPC channel to `url` over TLS with `config` (ALPN h2 is set here).
pub async fn tls_channel(url: &str, mut config: rustls::ClientConfig) -> Result<Channel> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let authority = authority(url)?;
    // The URI only names the server for tonic; the connector below does the TLS.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("bad control plane URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            // Names play no part in verification (SPIFFE IDs do), only in SNI.
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(bare)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_connect_error(&e)))
        .with_context(|| format!("cannot connect to the control plane at https://{authority}"))
}

/// The most telling message in a connect error's chain (the TLS verdict, if there is one).
pub fn describe_connect_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !messages.contains(&text) {
            messages.push(text);
        }
        current = e.source();
    }
    messages.join(": ")
}

/// A client config that trusts `bundle_pem` and accepts only a control plane.
pub fn control_plane_client_config(bundle_pem: &str) -> Result<rustls::ClientConfig> {
    let bundle = TrustBundle::from_pem(bundle_pem)?;
    client_config(None, &bundle, Expect::ControlPlane)
}

pub async fn connect_admin(server: &str, token: &str, ca_pem: &str) -> Result<AdminClient> {
    let config = control_plane_client_config(ca_pem).context("the CA file")?;
    let channel = tls_channel(server, config).await?;
    let header = format!("Bearer {}", token.trim())
        .parse()
        .context("the admin token contains characters not allowed in a header")?;
    Ok(
        MeshAdminClient::with_interceptor(channel, BearerToken(header))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

/// A node credential issued through the admin API (`IssueCertificate`), for tools and tests
/// that act as agents (cp-load): (credential, trust bundle PEM).
pub async fn issue_node_credential(
    admin: &mut AdminClient,
    node: &str,
) -> Result<(mesh_identity::Credential, String)> {
    let config = admin
        .get_mesh_config(mesh_proto::v1::Empty {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let trust_domain = match mesh_api::Resource::from_json(&config.json) {
        Ok(mesh_api::Resource::MeshConfig(c)) => c.spec.trust_domain,
        _ => bail!("the control plane sent an unreadable MeshConfig"),
    };
    let id = mesh_identity::SpiffeId::node(&trust_domain, node)?;
    let (key_pem, csr_pem) = mesh_identity::new_csr(&id)?;
    let signed = admin
        .issue_certificate(mesh_proto::v1::IssueCertificateRequest {
            csr_pem,
            ttl_seconds: 0,
        })
        .await
        .map_err(|s| anyhow::anyhow!("issuing a certificate for {id}: {}", s.message()))?
        .into_inner();
    let credential = mesh_identity::Credential::from_pem(&signed.chain_pem, &key_pem)?;
    Ok((credential, signed.trust_bundle_pem))
}

/// A client config presenting `credential`, accepting only a control plane of `bundle_pem`.
pub fn node_client_config(
    credential: &mesh_identity::Credential,
    bundle_pem: &str,
) -> Result<rustls::ClientConfig> {
    let bundle = TrustBundle::from_pem(bundle_pem)?;
    client_config(Some(credential), &bundle, Expect::ControlPlane)
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
        assert!(authority("ftp://x:1").is_err());
        assert!(authority("https://cp").is_err());
        assert!(authority("https://cp:1/path").is_err());
        assert!(authority("").is_err());
    }
}
