//! Channels to the control plane: `mesh_proto::channel`, with the agent's connect timeout
//! (short: the agent fails over to the next replica instead of waiting).

use std::time::Duration;

use anyhow::Result;
pub use mesh_proto::channel::{authority, is_certificate_error, PeerSlot};
use tonic::transport::Channel;

pub async fn connect(url: &str, config: rustls::ClientConfig) -> Result<(Channel, PeerSlot)> {
    mesh_proto::channel::connect(url, config, Duration::from_secs(2)).await
}
