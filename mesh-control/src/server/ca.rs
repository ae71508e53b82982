//! The mesh's root certificate authority, created at first start and shared by every replica
//! through the store. (Issuing workload certificates comes with mesh identity; for now the
//! root exists so agents and operators can fetch the trust anchor.)

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::SharedStore;

pub const ROOT_KEY: &str = "/mesh/ca/root";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRoot {
    cert_pem: String,
    key_pem: String,
}

/// The root certificate (PEM), creating the CA if there is none yet.
pub async fn root_certificate(store: &SharedStore, trust_domain: &str) -> Result<String> {
    if let Some(existing) = store.get(ROOT_KEY).await? {
        let root: StoredRoot =
            serde_json::from_slice(&existing.value).context("the stored CA root is unreadable")?;
        return Ok(root.cert_pem);
    }
    let fresh = generate_root(trust_domain)?;
    // Another replica may win the race; everyone then reads the winner's.
    store.create(ROOT_KEY, serde_json::to_vec(&fresh)?).await?;
    let stored = store
        .get(ROOT_KEY)
        .await?
        .context("the CA root vanished from the store")?;
    let root: StoredRoot = serde_json::from_slice(&stored.value)?;
    Ok(root.cert_pem)
}

fn generate_root(trust_domain: &str) -> Result<StoredRoot> {
    let key = rcgen::KeyPair::generate().context("generating the CA key")?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("mesh root CA ({trust_domain})"),
    );
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA root")?;
    Ok(StoredRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
