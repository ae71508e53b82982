//! Keys and certificate signing requests. Keys are generated where they are used and never
//! leave that process; only the CSR travels.

use anyhow::{Context, Result};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::SpiffeId;

/// A new ECDSA P-256 key and a CSR whose only subject alternative name is `id`.
/// Returns `(key PEM, CSR PEM)`.
pub fn new_csr(id: &SpiffeId) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.as_str().try_into().context("SPIFFE ID as a URI SAN")?,
    )];
    let csr = params
        .serialize_request(&key)
        .context("building the certificate signing request")?;
    Ok((key.serialize_pem(), csr.pem().context("encoding the CSR")?))
}
