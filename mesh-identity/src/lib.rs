//! Mesh identity, shared by the control plane, the agents and meshctl.
//!
//! - [`SpiffeId`]: who a workload, node or control plane is
//!   (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, `.../mesh/node/<name>`,
//!   `.../mesh/control-plane`).
//! - [`Credential`]: a certificate chain and its key; [`TrustBundle`]: the roots a process
//!   trusts (more than one while the root is being rotated).
//! - [`new_csr`]: a fresh key and a signing request for an identity.
//! - [`tls`]: rustls configs that authenticate peers by SPIFFE ID, never by DNS name.

mod certs;
mod csr;
mod spiffe;
pub mod tls;

pub use certs::{
    hex, sha256, spiffe_id_of, summarize, CertificateSummary, Credential, TrustBundle,
};
pub use csr::new_csr;
pub use spiffe::SpiffeId;

#[cfg(test)]
mod tests;
