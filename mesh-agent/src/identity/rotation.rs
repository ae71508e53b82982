//! Keeping one identity's certificate fresh: issue, sleep until half life, renew; on failure
//! retry with capped exponential backoff while the current certificate keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use mesh_identity::{new_csr, Credential, SpiffeId};

use super::{Identities, SlotState};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub(super) async fn keep_fresh(identities: Arc<Identities>, id: SpiffeId, state: Arc<SlotState>) {
    let mut retry = FIRST_RETRY;
    let mut signing_root = identities.signing_root();
    loop {
        match issue(&identities, &id).await {
            Ok(credential) => {
                tracing::info!(
                    identity = %id,
                    expires_unix = unix_seconds(credential.not_after()),
                    "workload certificate issued"
                );
                let renew_at = credential.renew_at();
                state.credential.store(Some(Arc::new(credential)));
                *state.last_error.lock() = None;
                identities.announce_issued();
                retry = FIRST_RETRY;
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let issued_under = *signing_root.borrow_and_update();
                let root_changed = async {
                    // The guard `wait_for` returns must not live across an await.
                    signing_root
                        .wait_for(|root| *root != issued_under)
                        .await
                        .is_ok()
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    true = root_changed => {
                        tracing::info!(identity = %id, "the CA's signing root changed; renewing");
                        // Spread a node's renewals after a rotation.
                        let jitter = Duration::from_millis(rand::random::<u64>() % 2000);
                        tokio::time::sleep(jitter).await;
                    }
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(identity = %id, %error, retry_in = ?retry, "certificate issuance failed");
                *state.last_error.lock() = Some(error);
                // Jitter spreads a node's retries after a CA outage.
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (retry.as_millis() as u64 / 4 + 1),
                );
                tokio::time::sleep(retry + jitter).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

async fn issue(identities: &Identities, id: &SpiffeId) -> Result<Credential> {
    let signer = identities.signer().await;
    let (key_pem, csr_pem) = new_csr(id)?;
    let signed = signer.sign(csr_pem).await?;
    let credential = Credential::from_pem(&signed.chain_pem, &key_pem)
        .context("the CA's answer is not a usable certificate for our key")?;
    if credential.id() != id {
        anyhow::bail!(
            "the CA issued a certificate for {} instead of {id}",
            credential.id()
        );
    }
    identities.set_trust_bundle_pem(&signed.trust_bundle_pem)?;
    Ok(credential)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
