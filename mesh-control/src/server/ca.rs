//! The mesh's certificate authority, shared by every replica through the store
//! (`/mesh/ca/state`; only the control plane reads it, the admin API never lists it).
//!
//! Either the control plane made its own root at first start (it then signs with the root
//! itself), or the operator supplied a root (`mesh-control serve --ca-cert --ca-key`): the
//! control plane then signs with an intermediate under it, and only the intermediate's key is
//! stored. What agents trust is the *trust bundle*: every root currently trusted.
//!
//! Root rotation keeps old and new roots trusted while the change spreads:
//!
//! | phase     | signs    | trust bundle        | step to get there         |
//! |-----------|----------|---------------------|---------------------------|
//! | steady    | old      | old                 |                           |
//! | prepared  | old      | old + new           | `meshctl ca rotate prepare`  |
//! | activated | new      | old + new           | `meshctl ca rotate activate` |
//! | steady    | new      | new                 | `meshctl ca rotate finish`   |

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use mesh_identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{Event, SharedStore};

/// The CA state (JSON [`CaState`]).
pub const STATE_KEY: &str = "/mesh/ca/state";
/// Where the first versions kept their self-made root (`{certPem, keyPem}`); adopted as the
/// active authority when there is no state yet.
pub const LEGACY_ROOT_KEY: &str = "/mesh/ca/root";

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start this much in the past, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// One signing authority: a root, and what signs under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// The root agents trust (self-signed).
    pub root_pem: String,
    /// The certificate that signs: the root itself, or an intermediate under it.
    pub issuer_pem: String,
    pub issuer_key_pem: String,
    /// The operator supplied the root (its key is not kept); `issuer_pem` is an intermediate.
    #[serde(default)]
    pub operator_supplied: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaState {
    /// Signs every certificate.
    pub active: Authority,
    /// Prepared: trusted, signs after `activate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Authority>,
    /// The root that signed before `activate`: trusted until `finish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_root_pem: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    Activate,
    Finish,
}

impl std::str::FromStr for Phase {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Phase> {
        match s {
            "prepare" => Ok(Phase::Prepare),
            "activate" => Ok(Phase::Activate),
            "finish" => Ok(Phase::Finish),
            other => {
                bail!("unknown rotation phase {other:?}: expected prepare, activate or finish")
            }
        }
    }
}

impl CaState {
    /// The trust bundle: the active root first (the one signing: a certificate that does
    /// not chain to it should be renewed), then the prepared one, then the previous one
    /// (until finish). So `activate` changes the bundle too, and agents renew.
    pub fn trusted_roots(&self) -> Vec<&str> {
        let mut roots: Vec<&str> = Vec::new();
        let candidates = [
            Some(self.active.root_pem.as_str()),
            self.next.as_ref().map(|n| n.root_pem.as_str()),
            self.previous_root_pem.as_deref(),
        ];
        for pem in candidates.into_iter().flatten() {
            if !roots.contains(&pem) {
                roots.push(pem);
            }
        }
        roots
    }

    pub fn phase(&self) -> &'static str {
        if self.next.is_some() {
            "prepared"
        } else if self.previous_root_pem.is_some() {
            "activated"
        } else {
            "steady"
        }
    }

    /// The state after one rotation step. `new_authority` is the prepared one (prepare only).
    pub fn rotate(&self, phase: Phase, new_authority: Option<Authority>) -> Result<CaState> {
        let mut next = self.clone();
        match phase {
            Phase::Prepare => {
                if self.next.is_some() {
                    bail!("a new root is already prepared: run `meshctl ca rotate activate` next");
                }
                if self.previous_root_pem.is_some() {
                    bail!(
                        "the last rotation is not finished: run `meshctl ca rotate finish` first"
                    );
                }
                let authority = new_authority.context("prepare needs a new authority")?;
                if authority.root_pem == self.active.root_pem {
                    bail!("the new root is the one already signing");
                }
                next.next = Some(authority);
            }
            Phase::Activate => {
                let Some(prepared) = self.next.clone() else {
                    bail!("no new root is prepared: run `meshctl ca rotate prepare` first");
                };
                next.previous_root_pem = Some(self.active.root_pem.clone());
                next.active = prepared;
                next.next = None;
            }
            Phase::Finish => {
                if self.next.is_some() {
                    bail!("the prepared root does not sign yet: run `meshctl ca rotate activate` first");
                }
                if self.previous_root_pem.is_none() {
                    bail!("no rotation in progress: nothing to finish");
                }
                next.previous_root_pem = None;
            }
        }
        Ok(next)
    }
}

/// The CA state as loaded: parsed once, ready to sign.
pub struct Loaded {
    pub state: CaState,
    /// Store revision of the state (newer wins).
    pub revision: u64,
    pub bundle_pem: String,
    /// DER of the active root (what join tokens pin).
    pub active_root_der: Vec<u8>,
    /// What follows a leaf in a chain: the intermediate, if the active authority has one.
    pub intermediates_pem: String,
    issuer: Issuer<'static, KeyPair>,
    issuer_not_after: SystemTime,
}

impl Loaded {
    fn new(state: CaState, revision: u64) -> Result<Loaded> {
        let bundle_pem = state.trusted_roots().concat();
        mesh_identity::TrustBundle::from_pem(&bundle_pem).context("the CA's trust bundle")?;
        let active_root_der = pem_to_der(&state.active.root_pem).context("the active CA root")?;
        let key = KeyPair::from_pem(&state.active.issuer_key_pem)
            .context("the stored CA signing key is unreadable")?;
        let issuer = Issuer::from_ca_cert_pem(&state.active.issuer_pem, key)
            .context("the stored CA signing certificate is unreadable")?;
        let issuer_der = pem_to_der(&state.active.issuer_pem)?;
        let issuer_not_after = not_after_of(&issuer_der)?;
        let intermediates_pem = if state.active.issuer_pem == state.active.root_pem {
            String::new()
        } else {
            state.active.issuer_pem.clone()
        };
        Ok(Loaded {
            state,
            revision,
            bundle_pem,
            active_root_der,
            intermediates_pem,
            issuer,
            issuer_not_after,
        })
    }

    /// Signs a leaf for `id` with `public_key`, valid for `ttl` (capped at the issuer's own
    /// expiry). `extra` adds DNS/IP subject alternative names (the control plane's own
    /// serving certificate only). Returns the chain PEM: leaf, then intermediate (if any).
    pub fn sign(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
        extra: Vec<SanType>,
    ) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.as_str()
                .try_into()
                .context("the SPIFFE ID is not a valid URI")?,
        )];
        params.subject_alt_names.extend(extra);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl).min(self.issuer_not_after).into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .context("signing the certificate")?;
        Ok(format!("{}{}", cert.pem(), self.intermediates_pem))
    }
}

pub struct Ca {
    store: SharedStore,
    current: watch::Sender<Arc<Loaded>>,
    /// Rotations on this replica one at a time.
    rotating: tokio::sync::Mutex<()>,
}

/// An operator's root and its key (PEM).
pub struct OperatorRoot {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// Loads the CA from the store, creating it at first start (a new root, or an
    /// intermediate under `operator`'s root), and follows changes other replicas make.
    pub async fn start(
        store: SharedStore,
        operator: Option<OperatorRoot>,
        trust_domain: &str,
    ) -> Result<Arc<Ca>> {
        let (state, revision) = match read_state(&store).await? {
            Some(found) => found,
            None => {
                let fresh = match &operator {
                    Some(root) => CaState {
                        active: intermediate_authority(root, trust_domain)?,
                        next: None,
                        previous_root_pem: None,
                    },
                    None => match legacy_root(&store).await? {
                        Some(authority) => CaState {
                            active: authority,
                            next: None,
                            previous_root_pem: None,
                        },
                        None => CaState {
                            active: generate_root_authority(trust_domain)?,
                            next: None,
                            previous_root_pem: None,
                        },
                    },
                };
                // Another replica may win the race; everyone then reads the winner's.
                store
                    .create(STATE_KEY, serde_json::to_vec(&fresh)?)
                    .await
                    .context("storing the CA")?;
                read_state(&store)
                    .await?
                    .context("the CA vanished from the store")?
            }
        };
        if let Some(root) = &operator {
            let given = pem_to_der(&root.cert_pem).context("--ca-cert")?;
            let trusted = state
                .trusted_roots()
                .iter()
                .filter_map(|pem| pem_to_der(pem).ok())
                .any(|der| der == given);
            if !trusted {
                bail!(
                    "--ca-cert is not a root of this mesh's CA (the store already holds a CA with \
                     another root); to move the mesh to a new root use `meshctl ca rotate prepare \
                     --ca-cert FILE --ca-key FILE`, then activate and finish"
                );
            }
        }
        let loaded = Arc::new(Loaded::new(state, revision)?);
        let (current, _) = watch::channel(loaded);
        let ca = Arc::new(Ca {
            store,
            current,
            rotating: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(follow(ca.clone(), revision));
        Ok(ca)
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.borrow().clone()
    }

    /// Changes whenever the CA state does (a rotation step, on any replica).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Loaded>> {
        self.current.subscribe()
    }

    pub fn trust_bundle_pem(&self) -> String {
        self.current().bundle_pem.clone()
    }

    /// Replaces the current state if `loaded` is newer.
    fn offer(&self, loaded: Loaded) {
        self.current.send_if_modified(|current| {
            if loaded.revision > current.revision && loaded.state != current.state {
                *current = Arc::new(loaded);
                true
            } else {
                false
            }
        });
    }

    /// One rotation step. `new_root`: the operator's next root (prepare only); without it a
    /// new root is made.
    pub async fn rotate(
        &self,
        phase: Phase,
        new_root: Option<OperatorRoot>,
        trust_domain: &str,
    ) -> Result<Arc<Loaded>> {
        let _guard = self.rotating.lock().await;
        let (state, _) = read_state(&self.store)
            .await?
            .context("the CA is missing from the store")?;
        if new_root.is_some() && phase != Phase::Prepare {
            bail!("a new root (--ca-cert/--ca-key) is only given to `prepare`");
        }
        let authority = match (phase, new_root) {
            (Phase::Prepare, Some(root)) => Some(intermediate_authority(&root, trust_domain)?),
            (Phase::Prepare, None) => Some(generate_root_authority(trust_domain)?),
            _ => None,
        };
        let next = state.rotate(phase, authority)?;
        let revision = self
            .store
            .put(STATE_KEY, serde_json::to_vec(&next)?)
            .await
            .context("storing the CA")?;
        self.offer(Loaded::new(next, revision)?);
        Ok(self.current())
    }
}

async fn read_state(store: &SharedStore) -> Result<Option<(CaState, u64)>> {
    let Some(kv) = store.get(STATE_KEY).await.context("reading the CA")? else {
        return Ok(None);
    };
    let state: CaState =
        serde_json::from_slice(&kv.value).context("the stored CA state is unreadable")?;
    Ok(Some((state, kv.mod_revision)))
}

/// Follows the CA state in the store (rotations made through another replica).
async fn follow(ca: Arc<Ca>, mut after: u64) {
    use futures::StreamExt;
    loop {
        match ca.store.watch(STATE_KEY, after).await {
            Ok(mut events) => {
                while let Some(batch) = events.next().await {
                    let Ok(batch) = batch else { break };
                    for event in batch {
                        after = after.max(event.revision());
                        if let Event::Put(kv) = event {
                            if kv.key != STATE_KEY {
                                continue;
                            }
                            let loaded = serde_json::from_slice::<CaState>(&kv.value)
                                .map_err(anyhow::Error::from)
                                .and_then(|state| Loaded::new(state, kv.mod_revision));
                            match loaded {
                                Ok(loaded) => ca.offer(loaded),
                                Err(e) => {
                                    tracing::error!(error = %format!("{e:#}"), "ignoring an unreadable CA state")
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching the CA state failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Re-read (the history may be compacted) and watch from there.
        match read_state(&ca.store).await {
            Ok(Some((state, revision))) => {
                after = revision;
                match Loaded::new(state, revision) {
                    Ok(loaded) => ca.offer(loaded),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "ignoring an unreadable CA state")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "re-reading the CA state failed"),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyRoot {
    cert_pem: String,
    key_pem: String,
}

async fn legacy_root(store: &SharedStore) -> Result<Option<Authority>> {
    let Some(kv) = store.get(LEGACY_ROOT_KEY).await? else {
        return Ok(None);
    };
    let root: LegacyRoot =
        serde_json::from_slice(&kv.value).context("the stored CA root is unreadable")?;
    Ok(Some(Authority {
        root_pem: root.cert_pem.clone(),
        issuer_pem: root.cert_pem,
        issuer_key_pem: root.key_pem,
        operator_supplied: false,
    }))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn ca_params(common_name: String, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    params
}

/// A new self-signed root that signs by itself.
pub fn generate_root_authority(trust_domain: &str) -> Result<Authority> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let params = ca_params(
        format!("mesh root CA ({trust_domain}, {created})"),
        ROOT_LIFETIME,
        None,
    );
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA root")?;
    Ok(Authority {
        root_pem: cert.pem(),
        issuer_pem: cert.pem(),
        issuer_key_pem: key.serialize_pem(),
        operator_supplied: false,
    })
}

/// An intermediate under the operator's root; the root's key is used once, here.
pub fn intermediate_authority(root: &OperatorRoot, trust_domain: &str) -> Result<Authority> {
    let root_der = pem_to_der(&root.cert_pem).context("the CA certificate")?;
    check_is_ca(&root_der).context("the CA certificate")?;
    let root_key = KeyPair::from_pem(&root.key_pem)
        .context("the CA key: expected an unencrypted PKCS#8 PEM key (BEGIN PRIVATE KEY)")?;
    if !spki_matches(&root_der, &root_key)? {
        bail!("the CA key does not belong to the CA certificate");
    }
    let root_not_after = not_after_of(&root_der)?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, root_key)
        .context("the CA certificate is unusable as an issuer")?;
    let key = KeyPair::generate().context("generating the intermediate key")?;
    let mut params = ca_params(
        format!("mesh intermediate CA ({trust_domain})"),
        INTERMEDIATE_LIFETIME,
        Some(0),
    );
    let not_after = (SystemTime::now() + INTERMEDIATE_LIFETIME).min(root_not_after);
    params.not_after = not_after.into();
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the intermediate with the CA key")?;
    Ok(Authority {
        root_pem: der_to_pem(&root_der),
        issuer_pem: cert.pem(),
        issuer_key_pem: key.serialize_pem(),
        operator_supplied: true,
    })
}

fn check_is_ca(der: &[u8]) -> Result<()> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).context("not a valid X.509 certificate")?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        bail!("not a CA certificate (basicConstraints CA:TRUE missing)");
    }
    if cert.subject() != cert.issuer() {
        bail!("not a root (self-signed) certificate: give the mesh the root agents should trust");
    }
    Ok(())
}

fn not_after_of(der: &[u8]) -> Result<SystemTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).context("not a valid X.509 certificate")?;
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn spki_matches(cert_der: &[u8], key: &KeyPair) -> Result<bool> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).context("not a valid X.509 certificate")?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("malformed PEM certificate: {e}"))?;
    Ok(cert.to_vec())
}

fn der_to_pem(der: &[u8]) -> String {
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    let encoded = base64_encode(der);
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
