//! rustls configs for mutual TLS between mesh processes (TLS 1.3 only, aws-lc-rs).
//!
//! Peers are authenticated by certificate chain to a [`TrustBundle`] root and by SPIFFE ID;
//! DNS names play no part, so a workload certificate needs nothing but its URI SAN.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, Error,
    ServerConfig, SignatureScheme,
};

use crate::{sha256, spiffe_id_of, Credential, SpiffeId, TrustBundle};

/// Which peer identity a client accepts from the server.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this SPIFFE ID.
    Exactly(SpiffeId),
    /// A control-plane replica (`/mesh/control-plane`) of any trust domain the bundle holds.
    ControlPlane,
    /// Any identity the bundle's roots issued.
    Any,
}

impl Expect {
    fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            Expect::Exactly(expected) => expected == id,
            Expect::ControlPlane => id.is_control_plane(),
            Expect::Any => true,
        }
    }
}

/// Whether a server demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    /// Verified when presented; the application decides what an anonymous client may do.
    Optional,
}

/// The crypto of every mesh mTLS config: aws-lc-rs, whose AES-GCM is about 1.6x ring's on
/// full-size records on CPUs with VAES (what HBONE's bulk transfers spend their time on).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client that presents `credential` (if any) and accepts a server whose chain ends at a
/// root of `bundle` and whose SPIFFE ID `expect` accepts.
pub fn client_config(
    credential: Option<&Credential>,
    bundle: &TrustBundle,
    expect: Expect,
) -> anyhow::Result<ClientConfig> {
    let verifier = Arc::new(SpiffeServerVerifier {
        anchors: Anchors::Bundle(bundle.clone()),
        expect,
        algorithms: provider().signature_verification_algorithms,
    });
    finish_client(credential, verifier)
}

/// For joining: the client has no trust bundle yet, only the SHA-256 of the root it expects
/// (from the join token). The server must present that root in its chain.
pub fn pinned_client_config(root_sha256: [u8; 32], expect: Expect) -> anyhow::Result<ClientConfig> {
    let verifier = Arc::new(SpiffeServerVerifier {
        anchors: Anchors::Pinned(root_sha256),
        expect,
        algorithms: provider().signature_verification_algorithms,
    });
    finish_client(None, verifier)
}

fn finish_client(
    credential: Option<&Credential>,
    verifier: Arc<SpiffeServerVerifier>,
) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match credential {
        Some(c) => builder.with_client_auth_cert(c.chain().to_vec(), c.key().clone_key())?,
        None => builder.with_no_client_auth(),
    })
}

/// A server presenting `credential`, verifying client certificates against `bundle`.
pub fn server_config(
    credential: &Credential,
    bundle: &TrustBundle,
    client_auth: ClientAuth,
) -> anyhow::Result<ServerConfig> {
    let verifier = Arc::new(SpiffeClientVerifier {
        bundle: bundle.clone(),
        mandatory: client_auth == ClientAuth::Required,
        algorithms: provider().signature_verification_algorithms,
    });
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(credential.chain().to_vec(), credential.key().clone_key())?)
}

/// The verified SPIFFE ID of the peer of a finished handshake.
pub fn peer_id(connection: &CommonState) -> Option<SpiffeId> {
    let leaf = connection.peer_certificates()?.first()?;
    spiffe_id_of(leaf).ok()
}

enum Anchors {
    Bundle(TrustBundle),
    Pinned([u8; 32]),
}

/// Verifies `end_entity` up to one of `roots` for `usage`, then returns its SPIFFE ID.
fn verify_chain(
    roots: &[CertificateDer<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, Error> {
    let anchors = roots
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect::<Vec<_>>();
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
        Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    })?;
    cert.verify_for_usage(
        algorithms.all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(webpki_error)?;
    spiffe_id_of(end_entity).map_err(|e| {
        Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            IdentityError(format!("{e:#}")),
        ))))
    })
}

fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    let kind = match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(kind)
}

/// Why a verified chain's identity was not accepted.
#[derive(Debug)]
struct IdentityError(String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

fn unexpected_identity(id: &SpiffeId, expect: &Expect) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        IdentityError(format!("peer identity {id} is not the expected {expect:?}")),
    ))))
}

/// The handshake-signature methods both verifier traits require, the same for both: TLS 1.2
/// is refused (the configs allow TLS 1.3 only), TLS 1.3 signatures are checked with the
/// provider's algorithms (`self.algorithms`).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

struct SpiffeServerVerifier {
    anchors: Anchors,
    expect: Expect,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeServerVerifier({:?})", self.expect)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let pinned;
        let roots: &[CertificateDer<'_>] = match &self.anchors {
            Anchors::Bundle(bundle) => bundle.roots(),
            Anchors::Pinned(hash) => {
                // The pinned root must be among what the server sent.
                let found = intermediates.iter().find(|c| sha256(c.as_ref()) == *hash);
                let Some(root) = found else {
                    return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
                };
                pinned = [root.clone()];
                &pinned
            }
        };
        let id = verify_chain(
            roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.algorithms,
        )?;
        if !self.expect.accepts(&id) {
            return Err(unexpected_identity(&id, &self.expect));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

struct SpiffeClientVerifier {
    bundle: TrustBundle,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeClientVerifier(mandatory: {})", self.mandatory)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_chain(
            self.bundle.roots(),
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            &self.algorithms,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}
