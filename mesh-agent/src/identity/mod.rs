//! Workload identities of the pods on this node: one key and certificate per SPIFFE ID in
//! use, obtained from the control-plane CA and replaced at half life.
//!
//! Keys are generated here and live only in this process's memory; only CSRs leave the node.
//! If the CA cannot be reached, the current certificate keeps serving until it expires while
//! renewal retries with backoff. Without a signer (static config, no control plane) there are
//! no certificates, and traffic between nodes stays plaintext.

mod rotation;
mod status;

pub use status::IdentityStatus;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use mesh_identity::{Credential, SpiffeId, TrustBundle};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the CA returns for a CSR.
pub struct SignedCertificate {
    /// Leaf first, then any intermediates.
    pub chain_pem: String,
    /// The roots to trust from now on.
    pub trust_bundle_pem: String,
}

/// Gets CSRs signed (by the control plane, over the node's mTLS channel).
pub trait CertificateSigner: Send + Sync + 'static {
    fn sign(&self, csr_pem: String) -> BoxFuture<'static, Result<SignedCertificate>>;

    /// The node's own certificate, the one the signer authenticates with, for status.
    fn node_credential(&self) -> Option<Credential>;
}

#[derive(Default)]
pub struct Identities {
    signer: RwLock<Option<Arc<dyn CertificateSigner>>>,
    signer_set: Notify,
    bundle: ArcSwapOption<TrustBundle>,
    /// SHA-256 of the bundle's first root, the one the CA signs with now. When it changes (a
    /// root rotation was activated), certificates are renewed under the new root before the
    /// old one leaves the bundle.
    signing_root: tokio::sync::watch::Sender<Option<[u8; 32]>>,
    slots: Mutex<HashMap<SpiffeId, Slot>>,
    /// Woken on every issuance, for connections waiting for their pod's first certificate.
    issued: Notify,
}

/// One identity in use on this node.
struct Slot {
    /// Pods using it; the slot (and its rotation task) goes when the last one leaves.
    users: usize,
    state: Arc<SlotState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct SlotState {
    credential: ArcSwapOption<Credential>,
    last_error: Mutex<Option<String>>,
}

impl Identities {
    pub fn new() -> Arc<Identities> {
        Arc::new(Identities::default())
    }

    /// From now on certificates come from `signer`; waiting rotation tasks start.
    pub fn set_signer(&self, signer: Arc<dyn CertificateSigner>) {
        *self.signer.write() = Some(signer);
        self.signer_set.notify_waiters();
    }

    /// True once a signer is set: this node is expected to speak mTLS between nodes.
    pub fn has_signer(&self) -> bool {
        self.signer.read().is_some()
    }

    /// Replaces the roots this node trusts (from a certificate response or a config push).
    pub fn set_trust_bundle_pem(&self, pem: &str) -> Result<()> {
        let bundle = TrustBundle::from_pem(pem)?;
        if self.bundle.load().as_deref() != Some(&bundle) {
            tracing::info!(roots = bundle.roots().len(), "trust bundle updated");
            let first = bundle
                .roots()
                .first()
                .map(|root| mesh_identity::sha256(root));
            // The bundle first: renewals woken by a new signing root build on it.
            self.bundle.store(Some(Arc::new(bundle)));
            self.signing_root.send_if_modified(|current| {
                let changed = *current != first;
                *current = first;
                changed
            });
        }
        Ok(())
    }

    pub fn trust_bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.load_full()
    }

    /// Wakes connections waiting for a pod's first certificate.
    fn announce_issued(&self) {
        self.issued.notify_waiters();
    }

    /// A pod with identity `id` arrived: keep a certificate for it.
    pub fn acquire(self: &Arc<Self>, id: &SpiffeId) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get_mut(id) {
            slot.users += 1;
            return;
        }
        let state = Arc::new(SlotState::default());
        let task = tokio::spawn(rotation::keep_fresh(
            self.clone(),
            id.clone(),
            state.clone(),
        ));
        slots.insert(
            id.clone(),
            Slot {
                users: 1,
                state,
                task,
            },
        );
    }

    /// A pod with identity `id` left.
    pub fn release(&self, id: &SpiffeId) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get_mut(id) {
            slot.users -= 1;
            if slot.users == 0 {
                slot.task.abort();
                slots.remove(id);
            }
        }
    }

    /// The current, unexpired credential for `id`.
    pub fn credential(&self, id: &SpiffeId) -> Option<Arc<Credential>> {
        let credential = self.slots.lock().get(id)?.state.credential.load_full()?;
        (credential.not_after() > std::time::SystemTime::now()).then_some(credential)
    }

    /// Like [`Self::credential`], waiting up to `timeout` for a first certificate (a pod's
    /// first connections can race its first issuance).
    pub async fn credential_within(
        &self,
        id: &SpiffeId,
        timeout: Duration,
    ) -> Option<Arc<Credential>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let issued = self.issued.notified();
            if let Some(credential) = self.credential(id) {
                return Some(credential);
            }
            if tokio::time::timeout_at(deadline, issued).await.is_err() {
                return None;
            }
        }
    }

    fn signing_root(&self) -> tokio::sync::watch::Receiver<Option<[u8; 32]>> {
        self.signing_root.subscribe()
    }

    fn current_signer(&self) -> Option<Arc<dyn CertificateSigner>> {
        self.signer.read().clone()
    }

    async fn signer(&self) -> Arc<dyn CertificateSigner> {
        loop {
            let set = self.signer_set.notified();
            if let Some(signer) = self.signer.read().clone() {
                return signer;
            }
            set.await;
        }
    }

    pub fn status(&self) -> IdentityStatus {
        status::describe(self)
    }
}
