//! What the admin API shows of the CA: its rotation phase and each root (role, fingerprint,
//! subject, expiry), for `meshctl ca status`.

use mesh_proto::v1 as pb;

/// `CaStatus` of the CA as it is now.
pub fn ca_status(loaded: &super::ca::Loaded) -> pb::CaStatus {
    let state = &loaded.state;
    let mut roots = Vec::new();
    let mut add = |pem: &str, role: &str, operator_supplied: bool| {
        if let Ok(der) = super::ca::pem_to_der(pem) {
            let (subject, not_after) = describe(&der);
            roots.push(pb::CaRoot {
                sha256: super::tokens::hex(&mesh_identity::sha256(&der)),
                subject,
                not_after,
                role: role.into(),
                operator_supplied,
            });
        }
    };
    if let Some(previous) = &state.previous_root_pem {
        add(previous, "previous", false);
    }
    add(
        &state.active.root_pem,
        "active",
        state.active.operator_supplied,
    );
    if let Some(next) = &state.next {
        add(&next.root_pem, "next", next.operator_supplied);
    }
    pb::CaStatus {
        phase: state.phase().into(),
        roots,
        trust_bundle_pem: loaded.bundle_pem.clone(),
    }
}

fn describe(der: &[u8]) -> (String, u64) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => (
            cert.subject().to_string(),
            cert.validity().not_after.timestamp().max(0) as u64,
        ),
        Err(_) => (String::new(), 0),
    }
}
