//! Key sets from `jwksUri`: agents make no outbound calls, so the control plane fetches every
//! URI the stored RequestAuthentications name (without inline `jwks`) over HTTPS
//! ([`fetch`]), checks each set as an inline one is checked at apply, and keeps the last good
//! one in the store (`/mesh/jwks/<hex of the URI>`, [`StoredJwks`]). Storing it makes a
//! change to a set a config revision like any other: every replica's cache sees it at the
//! same version and pushes the RequestAuthentications that name the URI again, with `jwks`
//! filled in ([`with_fetched_keys`]), while `meshctl get` still shows what the user wrote.
//!
//! One task per URI refreshes it every `--jwks-refresh-secs`, sooner (with backoff) after a
//! failure; a failure keeps the last good set and is logged with the URI and the reason.
//! A URI no longer named is no longer fetched and its set is deleted.

pub mod fetch;

#[cfg(test)]
mod fetch_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mesh_api::{RequestAuthentication, Resource};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::cache::ConfigCache;
use crate::keys;
use crate::store::SharedStore;
use fetch::JwksClient;

/// `--jwks-refresh-secs` by default: a rotated key reaches agents within five minutes,
/// at one small GET per URI and replica. (Istio waits 20 minutes; issuers usually publish a
/// new key well before signing with it, but five minutes keeps a missed overlap short.)
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The first retry after a failure; doubled on each further failure up to [`MAX_RETRY`]
/// (never later than the refresh interval).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct JwksOptions {
    /// PEM bundles of the CAs that issuers' certificates must chain to (`--jwks-ca`).
    pub ca_files: Vec<PathBuf>,
    /// How often each URI is fetched again (`--jwks-refresh-secs`).
    pub refresh: Duration,
}

/// A fetched key set as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredJwks {
    pub uri: String,
    /// The key set's JSON text as the issuer served it.
    pub jwks: String,
}

/// The URIs `resource` needs fetched: its rules' `jwksUri`s that have no inline `jwks`.
pub fn uris_to_fetch(resource: &Resource) -> impl Iterator<Item = &str> {
    let rules = match resource {
        Resource::RequestAuthentication(r) => r.spec.jwt_rules.as_slice(),
        _ => &[],
    };
    rules.iter().filter_map(|rule| rule.uri_to_fetch())
}

/// `auth` as agents get it: each rule fetched from a URI carries the set `fetched` gives for
/// it as inline `jwks` (its `jwksUri` kept, for the record). `None` when there is nothing
/// to fill in (send the resource as stored).
pub fn with_fetched_keys(
    auth: &RequestAuthentication,
    fetched: impl Fn(&str) -> Option<Arc<str>>,
) -> Option<Resource> {
    let mut filled = auth.clone();
    let mut any = false;
    for rule in &mut filled.spec.jwt_rules {
        if let Some(jwks) = rule.uri_to_fetch().and_then(&fetched) {
            rule.jwks = Some(jwks.to_string());
            any = true;
        }
    }
    any.then_some(Resource::RequestAuthentication(filled))
}

/// The last fetch of one URI by this replica (`meshctl status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStatus {
    /// Unix seconds of the last attempt and of the last success (0: never).
    pub last_attempt: u64,
    pub last_success: u64,
    /// Why the last attempt failed; empty when it succeeded.
    pub last_error: String,
}

/// Fetch results by URI, shared with the admin service.
#[derive(Default)]
pub struct JwksStatus(Mutex<BTreeMap<String, FetchStatus>>);

impl JwksStatus {
    pub fn snapshot(&self) -> BTreeMap<String, FetchStatus> {
        self.0.lock().clone()
    }

    fn record(&self, uri: &str, result: &Result<()>) {
        let mut all = self.0.lock();
        let Some(status) = all.get_mut(uri) else {
            return; // no longer named
        };
        status.last_attempt = now();
        match result {
            Ok(()) => {
                status.last_success = status.last_attempt;
                status.last_error.clear();
            }
            Err(e) => status.last_error = format!("{e:#}"),
        }
    }
}

/// Starts following the stored RequestAuthentications' URIs. Fails only on unusable
/// `--jwks-ca` files.
pub fn start(
    cache: Arc<ConfigCache>,
    store: SharedStore,
    options: JwksOptions,
) -> Result<Arc<JwksStatus>> {
    let fetcher = Arc::new(Fetcher {
        client: JwksClient::new(&options.ca_files)?,
        cache,
        store,
        refresh: options.refresh,
        status: Arc::default(),
    });
    let status = fetcher.status.clone();
    tokio::spawn(fetcher.follow());
    Ok(status)
}

struct Fetcher {
    client: JwksClient,
    cache: Arc<ConfigCache>,
    store: SharedStore,
    refresh: Duration,
    status: Arc<JwksStatus>,
}

impl Fetcher {
    /// On every config change: a refresh task for each newly named URI, none for URIs no
    /// longer named, whose stored sets are deleted.
    async fn follow(self: Arc<Self>) {
        let mut versions = self.cache.subscribe();
        let mut tasks: HashMap<String, AbortOnDrop> = HashMap::new();
        loop {
            let named = self.cache.jwks_uris_to_fetch();
            tasks.retain(|uri, _| named.contains(uri));
            self.status.0.lock().retain(|uri, _| named.contains(uri));
            for uri in &named {
                if !tasks.contains_key(uri) {
                    tracing::info!(%uri, "fetching a JSON Web Key Set");
                    self.status
                        .0
                        .lock()
                        .insert(uri.clone(), FetchStatus::default());
                    let task = tokio::spawn(self.clone().refresh_forever(uri.clone()));
                    tasks.insert(uri.clone(), AbortOnDrop(task));
                }
            }
            self.forget_unnamed(&named).await;
            if versions.changed().await.is_err() {
                return;
            }
        }
    }

    async fn forget_unnamed(&self, named: &BTreeSet<String>) {
        for uri in self.cache.stored_jwks_uris() {
            if named.contains(&uri) {
                continue;
            }
            tracing::info!(%uri, "no RequestAuthentication names this jwksUri any more; forgetting its key set");
            if let Err(e) = self.store.delete(&keys::jwks(&uri)).await {
                tracing::warn!(%uri, error = %e, "deleting a stored key set failed");
            }
        }
    }

    async fn refresh_forever(self: Arc<Self>, uri: String) {
        let mut retry = FIRST_RETRY;
        loop {
            let result = self.refresh(&uri).await;
            self.status.record(&uri, &result);
            let wait = match result {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    self.refresh
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %format!("{e:#}"), retry_in = ?retry.min(self.refresh), "fetching a JSON Web Key Set failed; agents keep the last good set");
                    let wait = retry.min(self.refresh);
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches `uri`, checks the set, and stores it if it changed.
    async fn refresh(&self, uri: &str) -> Result<()> {
        let jwks = self.client.fetch(uri).await?;
        mesh_api::check_jwks(&jwks).map_err(|e| anyhow!("the key set is invalid: {e}"))?;
        if self.cache.jwks(uri).as_deref() == Some(jwks.as_str()) {
            return Ok(());
        }
        let stored = StoredJwks {
            uri: uri.to_owned(),
            jwks,
        };
        let value = serde_json::to_vec(&stored)?;
        let revision = self
            .store
            .put(&keys::jwks(uri), value)
            .await
            .context("storing the key set")?;
        tracing::info!(%uri, revision, "new JSON Web Key Set; pushing it to agents");
        // So that the next refresh compares with this set.
        self.cache.wait_for(revision).await;
        Ok(())
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
