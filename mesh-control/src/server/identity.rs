//! The NodeIdentity service: nodes join with a token, then get certificates over mTLS for
//! themselves and for the workloads declared on them.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::Resource;
use mesh_identity::SpiffeId;
use mesh_proto::v1::node_identity_server::NodeIdentity;
use mesh_proto::v1::{JoinRequest, SignCertificateRequest, SignedCertificate};
use rcgen::CertificateSigningRequestParams;
use tonic::{Request, Response, Status};

use super::ca::Ca;
use super::cache::ConfigCache;
use super::tls::node_peer;
use super::tokens;
use crate::keys;
use crate::store::SharedStore;

/// Largest CSR accepted (a P-256 CSR is about 400 bytes of PEM).
const MAX_CSR: usize = 16 * 1024;

pub struct Identity {
    pub cache: Arc<ConfigCache>,
    pub store: SharedStore,
    pub ca: Arc<Ca>,
}

/// A parsed CSR and the one SPIFFE ID it asks for.
pub struct Csr {
    pub params: CertificateSigningRequestParams,
    pub id: SpiffeId,
}

/// Parses and checks a CSR: valid signature, exactly one URI SAN, a SPIFFE ID.
pub fn parse_csr(pem: &str) -> Result<Csr, Status> {
    if pem.len() > MAX_CSR {
        return Err(Status::invalid_argument("the CSR is too large"));
    }
    let params = CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
        Status::invalid_argument(format!("not a valid PEM certificate signing request: {e}"))
    })?;
    let mut uris = params
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(Status::invalid_argument(
            "the CSR must carry exactly one URI subject alternative name (the SPIFFE ID)",
        ));
    };
    let id = SpiffeId::parse(&uri).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
    Ok(Csr { params, id })
}

impl Identity {
    fn sign(&self, csr: &Csr, ttl: Duration) -> Result<SignedCertificate, Status> {
        let loaded = self.ca.current();
        let chain_pem = loaded
            .sign(&csr.params.public_key, &csr.id, ttl, Vec::new())
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(SignedCertificate {
            chain_pem,
            trust_bundle_pem: loaded.bundle_pem.clone(),
        })
    }

    /// May `node` have a certificate for `id`? Its own node identity, or a workload identity
    /// of a Workload declared on it.
    fn authorize(&self, node: &str, id: &SpiffeId) -> Result<(), Status> {
        let spec = super::mesh_config_spec(&self.cache);
        if id.trust_domain() != spec.trust_domain {
            return Err(Status::permission_denied(format!(
                "{id} is not in the mesh's trust domain {:?}",
                spec.trust_domain
            )));
        }
        if id.node_name() == Some(node) {
            return Ok(());
        }
        let Some((namespace, service_account)) = id.workload_parts() else {
            return Err(Status::permission_denied(format!(
                "node {node:?} may not have a certificate for {id}: nodes get their own \
                 identity and those of workloads declared on them"
            )));
        };
        let declared = self
            .cache
            .resources_under(&format!("{}Workload/{namespace}/", keys::RESOURCES))
            .iter()
            .any(|cached| match &*cached.resource {
                Resource::Workload(w) => {
                    w.spec.node == node && w.spec.service_account == service_account
                }
                _ => false,
            });
        if !declared {
            return Err(Status::permission_denied(format!(
                "no Workload with identity {id} is declared on node {node:?} (spec.node): the CA \
                 signs a workload identity only for the node it runs on"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl NodeIdentity for Identity {
    async fn join(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        let r = request.into_inner();
        tokens::check_node_name(&r.node)?;
        let csr = parse_csr(&r.csr_pem)?;
        let spec = super::mesh_config_spec(&self.cache);
        let wanted = SpiffeId::node(&spec.trust_domain, &r.node)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        if csr.id != wanted {
            return Err(Status::invalid_argument(format!(
                "a joining node asks for its node identity {wanted}, not {}",
                csr.id
            )));
        }
        tokens::redeem(&self.store, &r.token, &r.node).await?;
        let signed = self.sign(&csr, Duration::from_secs(spec.node_cert_ttl_seconds))?;
        tracing::info!(node = %r.node, "node joined");
        Ok(Response::new(signed))
    }

    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        let peer = node_peer(&request, "SignCertificate")?;
        let node = peer.node_name().unwrap_or_default().to_owned();
        let csr = parse_csr(&request.into_inner().csr_pem)?;
        // Renewing exactly the identity it holds is always allowed (even after the mesh's
        // trust domain changed); anything else is checked against the registry.
        if csr.id != peer {
            self.authorize(&node, &csr.id)?;
        }
        let spec = super::mesh_config_spec(&self.cache);
        let ttl = if csr.id.node_name().is_some() {
            spec.node_cert_ttl_seconds
        } else {
            spec.workload_cert_ttl_seconds
        };
        let signed = self.sign(&csr, Duration::from_secs(ttl))?;
        tracing::debug!(%node, id = %csr.id, "certificate signed");
        Ok(Response::new(signed))
    }
}

/// The admin's "issue a certificate": any identity of the trust domain but the control
/// plane's own.
pub fn issue_for_admin(
    ca: &Ca,
    cache: &ConfigCache,
    csr_pem: &str,
    ttl_seconds: u64,
) -> Result<SignedCertificate, Status> {
    let csr = parse_csr(csr_pem)?;
    let spec = super::mesh_config_spec(cache);
    if csr.id.trust_domain() != spec.trust_domain {
        return Err(Status::invalid_argument(format!(
            "{} is not in the mesh's trust domain {:?}",
            csr.id, spec.trust_domain
        )));
    }
    if csr.id.is_control_plane() {
        return Err(Status::permission_denied(
            "the control plane's identity is not issued on request",
        ));
    }
    let ttl = if ttl_seconds == 0 {
        spec.workload_cert_ttl_seconds
    } else {
        ttl_seconds
    };
    let range = mesh_api::MIN_CERT_TTL_SECONDS..=mesh_api::MAX_CERT_TTL_SECONDS;
    if !range.contains(&ttl) {
        return Err(Status::invalid_argument(format!(
            "a certificate lifetime is {} to {} seconds, not {ttl}",
            range.start(),
            range.end()
        )));
    }
    let loaded = ca.current();
    let chain_pem = loaded
        .sign(
            &csr.params.public_key,
            &csr.id,
            Duration::from_secs(ttl),
            Vec::new(),
        )
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    Ok(SignedCertificate {
        chain_pem,
        trust_bundle_pem: loaded.bundle_pem.clone(),
    })
}
