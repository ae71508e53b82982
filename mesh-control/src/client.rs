//! Connecting to the control plane as an administrator (what `meshctl` does).

use anyhow::{Context, Result};
use mesh_proto::v1::mesh_admin_client::MeshAdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
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

pub async fn connect_admin(server: &str, token: &str) -> Result<AdminClient> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("bad --server URL {server:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {server}"))?;
    let header = format!("Bearer {}", token.trim())
        .parse()
        .context("the admin token contains characters not allowed in a header")?;
    Ok(
        MeshAdminClient::with_interceptor(channel, BearerToken(header))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}
