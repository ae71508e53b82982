//! Certificates and keys: parsing PEM, reading the SPIFFE ID and validity out of a
//! certificate, and the set of roots a process trusts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (_, cert) = X509Certificate::from_der(der).context("not a valid X.509 certificate")?;
    Ok(cert)
}

/// The SPIFFE ID of a certificate: its one URI subject alternative name.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId> {
    let cert = parse(der)?;
    let san = cert
        .subject_alternative_name()
        .context("the certificate's subject alternative names are malformed")?
        .context("the certificate has no subject alternative names (no SPIFFE ID)")?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        bail!("a SPIFFE certificate must have exactly one URI subject alternative name");
    };
    SpiffeId::parse(uri)
}

fn validity_of(der: &[u8]) -> Result<(SystemTime, SystemTime)> {
    let cert = parse(der)?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp().max(0) as u64;
        UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

fn certificates_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: malformed PEM"))?;
    if certs.is_empty() {
        bail!("{what}: no certificate found in the PEM");
    }
    Ok(certs)
}

fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The roots a process trusts. During a root rotation it holds both the old and the new root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    pub fn from_pem(pem: &str) -> Result<TrustBundle> {
        let roots = certificates_from_pem(pem, "trust bundle")?;
        for root in &roots {
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| anyhow::anyhow!("trust bundle: unusable root certificate: {e}"))?;
        }
        Ok(TrustBundle { roots })
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn to_pem(&self) -> String {
        to_pem(&self.roots)
    }

    /// `(sha256 hex, subject, not after)` of each root, for status output.
    pub fn describe(&self) -> Vec<CertificateSummary> {
        self.roots
            .iter()
            .filter_map(|c| summarize(c).ok())
            .collect()
    }
}

/// What status output shows of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSummary {
    pub fingerprint: String,
    pub subject: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

pub fn summarize(der: &[u8]) -> Result<CertificateSummary> {
    let cert = parse(der)?;
    let (not_before, not_after) = validity_of(der)?;
    Ok(CertificateSummary {
        fingerprint: hex(&sha256(der)),
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before,
        not_after,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate chain (leaf first), its private key and what the leaf says about itself.
#[derive(Debug)]
pub struct Credential {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this process got it: a CA backdates `not_before` (clock skew), so half life is
    /// measured from here, not from `not_before`.
    received: SystemTime,
}

impl Clone for Credential {
    fn clone(&self) -> Self {
        Credential {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            id: self.id.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            received: self.received,
        }
    }
}

impl Credential {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Credential> {
        let chain = certificates_from_pem(chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .context("private key: malformed or missing PEM")?;
        let id = spiffe_id_of(&chain[0]).context("the leaf certificate")?;
        let (not_before, not_after) = validity_of(&chain[0])?;
        let credential = Credential {
            chain,
            key,
            id,
            not_before,
            not_after,
            received: SystemTime::now(),
        };
        // Catches a key that does not belong to the certificate before a handshake does.
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&credential.key)
            .context("private key: unsupported key type")?;
        Ok(credential)
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Half way through its life, when it should be replaced. Life counts from when it was
    /// received (or `not_before`, if later), since CAs backdate `not_before`.
    pub fn renew_at(&self) -> SystemTime {
        let start = self.not_before.max(self.received);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }

    pub fn chain_pem(&self) -> String {
        to_pem(&self.chain)
    }

    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_block(label, self.key.secret_der())
    }

    pub fn summary(&self) -> Result<CertificateSummary> {
        summarize(&self.chain[0])
    }
}
