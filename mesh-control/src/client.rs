//! Connecting to the control plane: TLS (1.3, rustls) verified against the mesh's trust
//! bundle and the control plane's SPIFFE ID, as an administrator (what `meshctl` does) or
//! with any rustls client config (tests, tools).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_identity::tls::{client_config, Expect};
use mesh_identity::TrustBundle;
use mesh_proto::v1::mesh_admin_client::MeshAdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
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

pub use mesh_proto::channel::{authority, error_chain as describe_connect_error};

/// A gRPC channel to `url` over TLS with `config`.
pub async fn tls_channel(url: &str, config: rustls::ClientConfig) -> Result<Channel> {
    let (channel, _) = mesh_proto::channel::connect(url, config, Duration::from_secs(5)).await?;
    Ok(channel)
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
