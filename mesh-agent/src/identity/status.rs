//! What `mesh-agent status` shows of the node's identities.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use mesh_identity::{Credential, SpiffeId};

use super::Identities;

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// Whether this agent gets certificates (it follows a control plane).
    pub enabled: bool,
    pub trust_bundle: Vec<RootStatus>,
    /// The node's own certificate (agent <-> control plane).
    pub node: Option<CertificateStatus>,
    /// One per workload identity of this node's pods.
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RootStatus {
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: u64,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub spiffe_id: String,
    /// Hex serial number; `None` until the first certificate arrives.
    pub serial: Option<String>,
    /// Unix seconds.
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub renew_at: Option<u64>,
    /// The last issuance failure, cleared by the next success.
    pub last_error: Option<String>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn describe(identities: &Identities) -> IdentityStatus {
    let trust_bundle = identities
        .trust_bundle()
        .map(|b| {
            b.describe()
                .into_iter()
                .map(|r| RootStatus {
                    fingerprint: r.fingerprint,
                    subject: r.subject,
                    not_after: unix(r.not_after),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut certificates: Vec<CertificateStatus> = identities
        .slots
        .lock()
        .iter()
        .map(|(id, slot)| {
            let credential = slot.state.credential.load_full();
            let last_error = slot.state.last_error.lock().clone();
            certificate_status(id, credential.as_deref(), last_error)
        })
        .collect();
    let node = identities
        .current_signer()
        .and_then(|signer| signer.node_credential())
        .map(|c| certificate_status(c.id(), Some(&c), None));
    certificates.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
    IdentityStatus {
        enabled: identities.has_signer(),
        trust_bundle,
        node,
        certificates,
    }
}

fn certificate_status(
    id: &SpiffeId,
    credential: Option<&Credential>,
    last_error: Option<String>,
) -> CertificateStatus {
    let summary = credential.and_then(|c| c.summary().ok());
    CertificateStatus {
        spiffe_id: id.to_string(),
        serial: summary.as_ref().map(|s| s.serial.clone()),
        not_before: summary.as_ref().map(|s| unix(s.not_before)),
        not_after: summary.as_ref().map(|s| unix(s.not_after)),
        renew_at: credential.map(|c| unix(c.renew_at())),
        last_error,
    }
}
