//! The mesh's gRPC API (`proto/mesh.proto`): config distribution between agents and the
//! control plane, and the admin service `meshctl` uses; the TLS channel to the control plane;
//! the limits every listener of the mesh applies (`limits`).

pub mod channel;
pub mod limits;

/// `package mesh.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("mesh.v1");
}

/// Largest gRPC message either side accepts: a full config of 10k services and 50k workloads
/// is tens of megabytes of JSON (13.5 MB measured).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
