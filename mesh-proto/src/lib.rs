//! The mesh's gRPC API (`proto/mesh.proto`): config distribution between agents and the
//! control plane, and the admin service `meshctl` uses.

#![allow(clippy::all, clippy::pedantic)]

/// `package mesh.v1`.
pub mod v1 {
    tonic::include_proto!("mesh.v1");
}
