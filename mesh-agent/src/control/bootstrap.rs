//! The node's own identity toward the control plane: joining with a token, keeping the node
//! certificate in the state directory, renewing it, and signing workload CSRs with it.
//!
//! `<state-dir>/identity/` (mode 0700) holds `node.key` (0600), `node.pem` (the chain) and
//! `ca.pem` (the trust bundle). A first start needs `--join-token`: the agent checks the
//! control plane's certificate against the CA hash in the token, sends a CSR for
//! `spiffe://<td>/mesh/node/<name>` with the token (`Join`), and stores what comes back. From
//! then on every call is mutual TLS with the node certificate, renewed at half life (and soon
//! after the trust bundle changes, so a root rotation moves it to the new root); a restart
//! reuses it without a token.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use mesh_identity::tls::{client_config, pinned_client_config, Expect};
use mesh_identity::{Credential, SpiffeId, TrustBundle};
use mesh_proto::v1::node_identity_client::NodeIdentityClient;
use mesh_proto::v1::{JoinRequest, SignCertificateRequest};
use tokio::sync::Notify;

use super::channel;
use crate::identity::{CertificateSigner, SignedCertificate};

/// What the node holds now.
struct Current {
    credential: Credential,
    bundle: TrustBundle,
    bundle_pem: String,
}

pub struct NodeIdentity {
    dir: PathBuf,
    urls: Vec<String>,
    current: ArcSwap<Current>,
    /// Renew soon (the trust bundle changed).
    renew_soon: Notify,
    /// Round-robin start among the replicas.
    next_url: AtomicUsize,
}

/// A join token: `<id>.<secret>.<sha256-hex of the CA root>`.
struct JoinToken {
    pin: [u8; 32],
}

fn parse_token(token: &str) -> Result<JoinToken> {
    let bad = || {
        anyhow::anyhow!(
            "--join-token is malformed: expected <id>.<secret>.<ca-hash> as printed by \
             `meshctl token create --node NAME`"
        )
    };
    let mut parts = token.trim().split('.');
    let (Some(id), Some(secret), Some(pin), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if id.is_empty() || secret.is_empty() || pin.len() != 64 {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&pin[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(JoinToken { pin: bytes })
}

fn is_definitive(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
    )
}

impl NodeIdentity {
    /// The node's credential: the stored one (in `dir`, `--identity-dir`) if it is still
    /// good, else a fresh one from joining with `token`. Without either, fails naming
    /// `--join-token`.
    pub async fn bootstrap(
        dir: &Path,
        node: &str,
        urls: Vec<String>,
        token: Option<&str>,
    ) -> Result<Arc<NodeIdentity>> {
        let dir = dir.to_path_buf();
        let usable = match load(&dir) {
            Ok(Some(current)) => match check_stored(&current, node) {
                Ok(()) => Ok(current),
                Err(problem) => Err(problem),
            },
            Ok(None) => Err(format!(
                "this agent has no node credential yet (none in {})",
                dir.display()
            )),
            Err(e) => Err(format!("the stored node credential is unusable: {e:#}")),
        };
        let current = match (usable, token) {
            // A token naming a root the stored bundle lacks: the mesh rotated its root while
            // this node was away (its credential can no longer work), or it is being moved
            // to another mesh. Try it once; if it is refused, keep the stored credential.
            (Ok(current), Some(token)) if !holds_pinned_root(&current, token) => {
                match join(&urls, node, token, false).await {
                    Ok(joined) => {
                        save(&dir, &joined)?;
                        tracing::info!(id = %joined.credential.id(), "joined the mesh again with the join token");
                        joined
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "the join token is unusable; using the stored node credential");
                        current
                    }
                }
            }
            (Ok(current), token) => {
                tracing::info!(
                    id = %current.credential.id(),
                    ignored_join_token = token.is_some(),
                    "using the stored node credential"
                );
                current
            }
            (Err(problem), None) => bail!(
                "{problem}: start the agent with --join-token TOKEN (create one with \
                 `meshctl token create --node {node}`)"
            ),
            (Err(problem), Some(token)) => {
                tracing::info!(%problem, "joining the mesh with the join token");
                let current = join(&urls, node, token, true).await?;
                save(&dir, &current)?;
                tracing::info!(id = %current.credential.id(), "joined the mesh");
                current
            }
        };
        Ok(Arc::new(NodeIdentity {
            dir,
            urls,
            current: ArcSwap::from_pointee(current),
            renew_soon: Notify::new(),
            next_url: AtomicUsize::new(0),
        }))
    }

    /// The mutual-TLS client config for control-plane calls, with the current credential
    /// and trust bundle.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let current = self.current.load();
        client_config(
            Some(&current.credential),
            &current.bundle,
            Expect::ControlPlane,
        )
    }

    /// The node certificate in use now.
    pub fn credential(&self) -> Credential {
        self.current.load().credential.clone()
    }

    pub fn trust_bundle_pem(&self) -> String {
        self.current.load().bundle_pem.clone()
    }

    /// A trust bundle from the control plane. A changed bundle is stored, and the node
    /// certificate is renewed soon (a rotation moves the signing root). Returns whether it
    /// changed.
    pub fn set_trust_bundle_pem(&self, pem: &str) -> Result<bool> {
        let bundle = TrustBundle::from_pem(pem).context("the pushed trust bundle")?;
        let current = self.current.load_full();
        if current.bundle == bundle {
            return Ok(false);
        }
        let next = Current {
            credential: current.credential.clone(),
            bundle,
            bundle_pem: pem.to_owned(),
        };
        write_file(&self.dir.join("ca.pem"), pem.as_bytes(), 0o644)?;
        tracing::info!(
            roots = next.bundle.roots().len(),
            "control plane trust bundle updated"
        );
        self.current.store(Arc::new(next));
        self.renew_soon.notify_one();
        Ok(true)
    }

    /// Renews the node certificate at half life (and soon after a bundle change), forever;
    /// failures retry with backoff while the current certificate still serves.
    pub async fn maintain(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let renew_at = self.current.load().credential.renew_at();
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.renew_soon.notified() => {
                    // Spread the renewals of many nodes after one bundle change.
                    let jitter = Duration::from_millis(rand::random::<u64>() % 2000);
                    tokio::time::sleep(jitter).await;
                }
            }
            match self.renew().await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "renewing the node certificate failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn renew(&self) -> Result<()> {
        let id = self.current.load().credential.id().clone();
        let (key_pem, csr_pem) = mesh_identity::new_csr(&id)?;
        let signed = self.sign(csr_pem).await?;
        let credential = Credential::from_pem(&signed.chain_pem, &key_pem)
            .context("the control plane returned an unusable certificate")?;
        if credential.id() != &id {
            bail!(
                "the control plane returned a certificate for {}, not {id}",
                credential.id()
            );
        }
        let bundle = TrustBundle::from_pem(&signed.trust_bundle_pem)?;
        let next = Current {
            credential,
            bundle,
            bundle_pem: signed.trust_bundle_pem,
        };
        save(&self.dir, &next)?;
        tracing::info!(%id, "node certificate renewed");
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Gets `csr_pem` signed over mutual TLS, trying each replica once.
    pub async fn sign(&self, csr_pem: String) -> Result<mesh_proto::v1::SignedCertificate> {
        let mut last = None;
        let start = self.next_url.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.urls.len() {
            let url = &self.urls[(start + i) % self.urls.len()];
            let attempt = async {
                let (channel, _) = channel::connect(url, self.client_config()?).await?;
                let response = NodeIdentityClient::new(channel)
                    .sign_certificate(SignCertificateRequest {
                        csr_pem: csr_pem.clone(),
                    })
                    .await;
                Ok::<_, anyhow::Error>(response)
            };
            match attempt.await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if is_definitive(&status) => {
                    bail!("the control plane refused to sign: {}", status.message())
                }
                Ok(Err(status)) => last = Some(anyhow::anyhow!("{url}: {}", status.message())),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no control plane URL")))
    }
}

/// Signs workload CSRs for [`crate::identity::Identities`] through the control plane.
pub struct ControlPlaneSigner(pub Arc<NodeIdentity>);

impl CertificateSigner for ControlPlaneSigner {
    fn sign(&self, csr_pem: String) -> BoxFuture<'static, Result<SignedCertificate>> {
        let node = self.0.clone();
        Box::pin(async move {
            let signed = node.sign(csr_pem).await?;
            // Keep the node's own view of the bundle current too.
            if let Err(e) = node.set_trust_bundle_pem(&signed.trust_bundle_pem) {
                tracing::warn!(error = %format!("{e:#}"), "the trust bundle in a signing response is unusable");
            }
            Ok(SignedCertificate {
                chain_pem: signed.chain_pem,
                trust_bundle_pem: signed.trust_bundle_pem,
            })
        })
    }

    fn node_credential(&self) -> Option<Credential> {
        Some(self.0.credential())
    }
}

fn check_stored(current: &Current, node: &str) -> Result<(), String> {
    let id = current.credential.id();
    if id.node_name() != Some(node) {
        return Err(format!(
            "the stored node credential is for {id}, not node {node:?}"
        ));
    }
    if current.credential.not_after() <= SystemTime::now() {
        return Err(format!(
            "the stored node certificate ({id}) has expired; the node must join again"
        ));
    }
    Ok(())
}

/// Joins with `token`: pinned TLS to learn the trust domain, then Join with a CSR. Retries
/// while no control plane answers; a refusal (bad token, wrong node, wrong CA) ends it.
/// Whether the stored trust bundle holds the root `token` pins (a malformed token: yes,
/// nothing to try).
fn holds_pinned_root(current: &Current, token: &str) -> bool {
    let Ok(parsed) = parse_token(token) else {
        return true;
    };
    current
        .bundle
        .roots()
        .iter()
        .any(|root| mesh_identity::sha256(root.as_ref()) == parsed.pin)
}

/// Joins with `token`, trying the replicas in turn; unreachable ones are retried forever
/// (`retry`) or each tried once.
async fn join(urls: &[String], node: &str, token: &str, retry: bool) -> Result<Current> {
    let parsed = parse_token(token)?;
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        match join_once(url, node, token, &parsed).await {
            Ok(current) => return Ok(current),
            Err(JoinError::Refused(e)) => return Err(e),
            Err(JoinError::Unreachable(e)) if !retry && attempt >= urls.len() => return Err(e),
            Err(JoinError::Unreachable(e)) => {
                tracing::warn!(%url, error = %format!("{e:#}"), "joining failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum JoinError {
    Refused(anyhow::Error),
    Unreachable(anyhow::Error),
}

async fn join_once(
    url: &str,
    node: &str,
    token: &str,
    parsed: &JoinToken,
) -> Result<Current, JoinError> {
    let config =
        pinned_client_config(parsed.pin, Expect::ControlPlane).map_err(JoinError::Refused)?;
    let (channel, peer) = match channel::connect(url, config).await {
        Ok(connected) => connected,
        Err(e) if channel::is_certificate_error(&e) => {
            return Err(JoinError::Refused(e.context(
                "the control plane's certificate does not match the CA the join token names \
                 (a token of another mesh, or not the real control plane)",
            )))
        }
        Err(e) => return Err(JoinError::Unreachable(e)),
    };
    // Connecting is eager: the handshake is done, and the control plane's verified identity
    // names the trust domain.
    let mut client = NodeIdentityClient::new(channel);
    let Some(cp) = peer.lock().clone() else {
        return Err(JoinError::Unreachable(anyhow::anyhow!(
            "the control plane's identity is unknown after connecting"
        )));
    };
    let id = SpiffeId::node(cp.trust_domain(), node).map_err(|e| {
        JoinError::Refused(e.context(format!("--node-name {node:?} is not usable in a SPIFFE ID")))
    })?;
    let (key_pem, csr_pem) = mesh_identity::new_csr(&id).map_err(JoinError::Refused)?;
    let signed = match client
        .join(JoinRequest {
            token: token.trim().to_owned(),
            node: node.to_owned(),
            csr_pem,
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) if is_definitive(&status) => {
            return Err(JoinError::Refused(anyhow::anyhow!(
                "the control plane refused to join node {node:?}: {}",
                status.message()
            )))
        }
        Err(status) => {
            return Err(JoinError::Unreachable(anyhow::anyhow!(
                "{}",
                status.message()
            )))
        }
    };
    let refused = |e: anyhow::Error| JoinError::Refused(e);
    let credential = Credential::from_pem(&signed.chain_pem, &key_pem)
        .context("the control plane returned an unusable node certificate")
        .map_err(refused)?;
    if credential.id() != &id {
        return Err(refused(anyhow::anyhow!(
            "the control plane returned a certificate for {}, not {id}",
            credential.id()
        )));
    }
    let bundle = TrustBundle::from_pem(&signed.trust_bundle_pem)
        .context("the trust bundle from the control plane")
        .map_err(refused)?;
    // The bundle must hold the root the token pins: what the node trusts from now on
    // descends from what the operator vouched for.
    if !bundle
        .roots()
        .iter()
        .any(|root| mesh_identity::sha256(root.as_ref()) == parsed.pin)
    {
        return Err(refused(anyhow::anyhow!(
            "the trust bundle from the control plane lacks the CA root the join token names"
        )));
    }
    Ok(Current {
        credential,
        bundle,
        bundle_pem: signed.trust_bundle_pem,
    })
}

fn load(dir: &Path) -> Result<Option<Current>> {
    let key_path = dir.join("node.key");
    if !key_path.exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let key_pem = read("node.key")?;
    let chain_pem = read("node.pem")?;
    let bundle_pem = read("ca.pem")?;
    let credential = Credential::from_pem(&chain_pem, &key_pem)?;
    let bundle = TrustBundle::from_pem(&bundle_pem)?;
    Ok(Some(Current {
        credential,
        bundle,
        bundle_pem,
    }))
}

fn save(dir: &Path, current: &Current) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write_file(&dir.join("ca.pem"), current.bundle_pem.as_bytes(), 0o644)?;
    write_file(
        &dir.join("node.pem"),
        current.credential.chain_pem().as_bytes(),
        0o644,
    )?;
    // The key last: its presence means the rest is there.
    write_file(
        &dir.join("node.key"),
        current.credential.key_pem().as_bytes(),
        0o600,
    )
}

/// Writes `path` atomically (temp file, then rename) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_before_anything_is_sent() {
        let pin = "ab".repeat(32);
        let good = format!("0123456789ab.{}.{pin}", "c".repeat(32));
        assert_eq!(parse_token(&good).unwrap().pin, [0xab; 32]);
        for bad in [
            "garbage".to_owned(),
            format!("a.b.{}", "zz".repeat(32)),
            format!("a.b.{pin}.d"),
            "a.b.abcd".to_owned(),
            format!(".b.{pin}"),
        ] {
            let e = parse_token(&bad).err().unwrap();
            assert!(
                e.to_string().contains("--join-token is malformed"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn no_token_and_no_credential_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let e = NodeIdentity::bootstrap(dir.path(), "n1", vec!["127.0.0.1:1".into()], None)
            .await
            .err()
            .unwrap();
        let text = format!("{e:#}");
        assert!(text.contains("--join-token"), "{text}");
        assert!(text.contains("meshctl token create --node n1"), "{text}");
    }
}
