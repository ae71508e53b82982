//! A replica's in-memory view of the store: every resource (as stored JSON and parsed), endpoint
//! health and agent records, at one store revision, with enough history to send an agent only
//! what changed since the version it has.
//!
//! Fed by one watch on `/mesh/`; every replica on the same etcd sees the same revisions, so an
//! agent can resume from its version on any replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mesh_api::{Change, ConfigIndex, Resource, Snapshot, Verdict};
use mesh_proto::v1::{ConfigPush, EndpointHealth, ResourceRef};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::jwks::{uris_to_fetch, with_fetched_keys, StoredJwks};
use crate::keys;
use crate::store::{Event, Revision, SharedStore, StoreError};

/// Revisions of change history kept for diffs; older agents get the full config.
const HISTORY: usize = 50_000;

#[derive(Clone)]
pub struct CachedResource {
    pub json: Arc<[u8]>,
    pub resource: Arc<Resource>,
    pub mod_revision: Revision,
}

/// What a replica records about an agent's stream (`/mesh/agents/<node>`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub node: String,
    pub replica: String,
    pub connected: bool,
    pub acked_version: u64,
    pub last_nack: String,
    pub last_nack_version: u64,
    pub connected_since: u64,
    pub last_seen: u64,
}

#[derive(Default)]
struct State {
    /// The config version: the revision of the last change to a resource or to health (agent
    /// records change the store revision too, but are nothing to push).
    version: Revision,
    resources: BTreeMap<String, CachedResource>,
    /// Resource keys changed at each revision (puts and deletes).
    changes: BTreeMap<Revision, Vec<String>>,
    /// Health by `namespace/workload`, with the revision it last changed at.
    health: BTreeMap<String, (EndpointHealth, Revision)>,
    agents: BTreeMap<String, AgentRecord>,
    /// Key sets fetched from `jwksUri`s, by store key (`keys::jwks`): filled into the
    /// RequestAuthentications that name them when those are pushed.
    jwks: BTreeMap<String, (String, Arc<str>)>,
    /// A diff can be computed from any base >= this.
    history_start: Revision,
    /// The cross-resource indexes of `resources`, for checking a change without validating
    /// the whole config again (see `mesh_api::ConfigIndex`).
    index: ConfigIndex,
    /// Resources stored under a key that is not their own (never written so by a control
    /// plane); while there are any, the index is not trusted.
    misplaced: usize,
}

pub struct ConfigCache {
    state: RwLock<State>,
    version: watch::Sender<Revision>,
}

impl ConfigCache {
    /// Loads everything and follows the store from then on.
    pub async fn start(store: SharedStore) -> anyhow::Result<Arc<ConfigCache>> {
        let (version, _) = watch::channel(0);
        let cache = Arc::new(ConfigCache {
            state: RwLock::new(State::default()),
            version,
        });
        let from = cache.resync(&store).await?;
        tokio::spawn(follow(cache.clone(), store, from));
        // Validate the loaded config once now, so the first change does not pay for it.
        let validating = cache.clone();
        tokio::task::spawn_blocking(move || validating.validate_current());
        Ok(cache)
    }

    /// Replaces the state with a fresh listing; returns its revision.
    async fn resync(&self, store: &SharedStore) -> Result<Revision, StoreError> {
        let (entries, revision) = store.list(keys::WATCHED).await?;
        let mut state = State::default();
        // The config version is the newest change to config, not the store revision (agent
        // records move that too): after a restart with nothing changed, agents that already
        // have this version get no push at all, instead of a full one each.
        let mut config_version = 0;
        for kv in entries {
            if is_config(&kv.key) {
                config_version = config_version.max(kv.mod_revision);
            }
            apply_put(&mut state, &kv.key, &kv.value, kv.mod_revision, false);
        }
        state.version = config_version;
        state.history_start = config_version;
        let version = state.version;
        {
            let mut current = self.state.write();
            // A full check of the old set still running must not validate this one.
            state.index.continue_after(&current.index);
            *current = state;
        }
        self.version.send_replace(version);
        // The watch continues from the listing's revision.
        Ok(revision)
    }

    fn apply(&self, events: Vec<Event>) {
        let version = {
            let mut state = self.state.write();
            for event in &events {
                let is_config = is_config(event.key());
                match event {
                    Event::Put(kv) => {
                        apply_put(&mut state, &kv.key, &kv.value, kv.mod_revision, true)
                    }
                    Event::Delete { key, revision } => apply_delete(&mut state, key, *revision),
                }
                if is_config {
                    state.version = state.version.max(event.revision());
                }
            }
            while state.changes.len() > HISTORY {
                if let Some((oldest, _)) = state.changes.pop_first() {
                    state.history_start = oldest;
                }
            }
            state.version
        };
        self.version.send_if_modified(|current| {
            let changed = *current != version;
            *current = version;
            changed
        });
    }

    pub fn version(&self) -> Revision {
        self.state.read().version
    }

    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.version.subscribe()
    }

    /// Waits until this replica's config has caught up with `revision`, a revision returned
    /// by a resource write (read-your-writes after an apply).
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= revision)).await;
    }

    /// Every resource, parsed.
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        self.state
            .read()
            .resources
            .values()
            .map(|c| c.resource.clone())
            .collect()
    }

    /// Every resource, parsed, with its store key, in key order.
    pub fn keyed_resources(&self) -> Vec<(String, Arc<Resource>)> {
        self.state
            .read()
            .resources
            .iter()
            .map(|(k, c)| (k.clone(), c.resource.clone()))
            .collect()
    }

    pub fn resource(&self, key: &str) -> Option<CachedResource> {
        self.state.read().resources.get(key).cloned()
    }

    /// Resources whose key starts with `prefix`.
    pub fn resources_under(&self, prefix: &str) -> Vec<CachedResource> {
        let state = self.state.read();
        state
            .resources
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn health(&self, namespace: &str, workload: &str) -> Option<EndpointHealth> {
        self.state
            .read()
            .health
            .get(&format!("{namespace}/{workload}"))
            .map(|(h, _)| h.clone())
    }

    pub fn agents(&self) -> Vec<AgentRecord> {
        self.state.read().agents.values().cloned().collect()
    }

    pub fn resource_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for cached in self.state.read().resources.values() {
            *counts.entry(cached.resource.kind().to_owned()).or_default() += 1;
        }
        counts
    }

    /// The URIs the stored RequestAuthentications need key sets fetched from.
    pub fn jwks_uris_to_fetch(&self) -> BTreeSet<String> {
        let state = self.state.read();
        let prefix = format!("{}RequestAuthentication/", keys::RESOURCES);
        state
            .resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .flat_map(|(_, c)| uris_to_fetch(&c.resource).map(str::to_owned))
            .collect()
    }

    /// The URIs of the stored key sets.
    pub fn stored_jwks_uris(&self) -> Vec<String> {
        let state = self.state.read();
        state.jwks.values().map(|(uri, _)| uri.clone()).collect()
    }

    /// The stored key set fetched from `uri`.
    pub fn jwks(&self, uri: &str) -> Option<Arc<str>> {
        let state = self.state.read();
        state
            .jwks
            .get(&keys::jwks(uri))
            .map(|(_, jwks)| jwks.clone())
    }

    /// Whether the config after `change` provably passes the full check, judged from the
    /// indexes of the current config (which must itself be validated, see
    /// [`ConfigCache::validate_current`]).
    pub fn check_change(&self, change: Change<'_>) -> Verdict {
        let state = self.state.read();
        if state.misplaced > 0 {
            return Verdict::NeedsFullCheck;
        }
        state.index.check(change)
    }

    /// The kind and `namespace/name` of the resource stored at `key`, if any.
    pub fn identity(&self, key: &str) -> Option<(&'static str, mesh_api::ObjectKey)> {
        let state = self.state.read();
        let cached = state.resources.get(key)?;
        Some((cached.resource.kind(), cached.resource.key()))
    }

    /// Makes sure the current config is known to pass the full check (building and
    /// validating a whole snapshot if it is not yet known); false if it does not pass.
    /// Slow (hundreds of milliseconds at 60k resources), but needed only after a start, a
    /// re-list, or a change that needed the full check itself.
    pub fn validate_current(&self) -> bool {
        let (generation, resources) = {
            let state = self.state.read();
            if state.misplaced > 0 {
                return false;
            }
            if state.index.is_validated() {
                return true;
            }
            let resources: Vec<Arc<Resource>> = state
                .resources
                .values()
                .map(|c| c.resource.clone())
                .collect();
            (state.index.generation(), resources)
        };
        let valid = Snapshot::from_resources(resources.iter().map(|r| (**r).clone())).is_ok();
        if valid {
            self.state.write().index.mark_validated(generation);
        }
        valid
    }

    /// The push that brings an agent from `base` to the current version: a diff when history
    /// allows, else the full config.
    pub fn push_from(&self, base: Revision) -> ConfigPush {
        let state = self.state.read();
        let full = base == 0 || base < state.history_start || base > state.version;
        let mut push = ConfigPush {
            version: state.version,
            full,
            base_version: if full { 0 } else { base },
            ..ConfigPush::default()
        };
        if full {
            push.upserts = state
                .resources
                .values()
                .map(|c| to_proto(&state, c))
                .collect();
            push.health = state.health.values().map(|(h, _)| h.clone()).collect();
            return push;
        }
        let mut changed: Vec<&String> = state
            .changes
            .range(base + 1..)
            .flat_map(|(_, keys)| keys)
            .collect();
        changed.sort();
        changed.dedup();
        for key in changed {
            match state.resources.get(key) {
                Some(cached) => push.upserts.push(to_proto(&state, cached)),
                None => push.deletes.extend(keys::parse_resource(key)),
            }
        }
        push.health = state
            .health
            .values()
            .filter(|(_, revision)| *revision > base)
            .map(|(h, _)| h.clone())
            .collect();
        push
    }
}

/// Config for agents: resources and endpoint health (agent records change the store revision
/// too, but are nothing to push), and fetched key sets, which change what is pushed.
fn is_config(key: &str) -> bool {
    key.starts_with(keys::RESOURCES) || key.starts_with(keys::HEALTH) || key.starts_with(keys::JWKS)
}

/// A resource as agents get it: as stored, but a RequestAuthentication with the key sets
/// fetched for its `jwksUri`s inline.
fn to_proto(state: &State, cached: &CachedResource) -> mesh_proto::v1::Resource {
    let filled = match &*cached.resource {
        Resource::RequestAuthentication(auth) => with_fetched_keys(auth, |uri| {
            state
                .jwks
                .get(&keys::jwks(uri))
                .map(|(_, jwks)| jwks.clone())
        }),
        _ => None,
    };
    mesh_proto::v1::Resource {
        json: match filled {
            Some(resource) => resource.to_json().into_bytes(),
            None => cached.json.to_vec(),
        },
    }
}

/// Records a change, at `revision`, of every RequestAuthentication that names `uri`, so
/// agents get them again with the key set that changed.
fn jwks_changed(state: &mut State, uri: &str, revision: Revision) {
    let prefix = format!("{}RequestAuthentication/", keys::RESOURCES);
    let naming: Vec<String> = state
        .resources
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(_, c)| uris_to_fetch(&c.resource).any(|u| u == uri))
        .map(|(k, _)| k.clone())
        .collect();
    if !naming.is_empty() {
        state.changes.entry(revision).or_default().extend(naming);
    }
}

/// A stored key set, if it is one agents can take: it was checked before it was stored, but
/// the store is not trusted to hold only what this control plane wrote, and a set an agent
/// rejects would make it refuse the whole push.
fn read_jwks(key: &str, value: &[u8]) -> Result<StoredJwks, String> {
    let stored: StoredJwks = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if keys::jwks(&stored.uri) != key {
        return Err(format!(
            "it is for {:?}, stored under another key",
            stored.uri
        ));
    }
    mesh_api::check_jwks(&stored.jwks).map_err(|e| format!("the key set {e}"))?;
    Ok(stored)
}

fn apply_put(state: &mut State, key: &str, value: &[u8], revision: Revision, record_change: bool) {
    if key.starts_with(keys::RESOURCES) {
        match Resource::from_json(value) {
            Ok(resource) => {
                let resource = Arc::new(resource);
                if let Some(old) = state.resources.get(key).cloned() {
                    unindex(state, key, &old.resource);
                }
                if key == keys::resource_of_ref(&resource_ref(&resource)) {
                    state.index.put(resource.clone());
                } else {
                    // Written around the control plane under another resource's key: the
                    // index (one entry per kind and name) cannot mirror that, so every
                    // change gets the full check until it is gone.
                    state.misplaced += 1;
                }
                state.resources.insert(
                    key.to_owned(),
                    CachedResource {
                        json: value.into(),
                        resource,
                        mod_revision: revision,
                    },
                );
                if record_change {
                    state
                        .changes
                        .entry(revision)
                        .or_default()
                        .push(key.to_owned());
                }
            }
            // Written by a newer control plane, or damaged: never crash on store contents.
            Err(e) => {
                tracing::error!(%key, error = %e, "ignoring an unreadable resource in the store")
            }
        }
    } else if let Some(id) = key.strip_prefix(keys::HEALTH) {
        match serde_json::from_slice::<HealthJson>(value) {
            Ok(h) => {
                state.health.insert(id.to_owned(), (h.into(), revision));
            }
            Err(e) => tracing::error!(%key, error = %e, "ignoring unreadable health in the store"),
        }
    } else if key.starts_with(keys::JWKS) {
        match read_jwks(key, value) {
            Ok(stored) => {
                let uri = stored.uri.clone();
                state
                    .jwks
                    .insert(key.to_owned(), (stored.uri, stored.jwks.into()));
                if record_change {
                    jwks_changed(state, &uri, revision);
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "ignoring an unusable key set in the store")
            }
        }
    } else if let Some(node) = key.strip_prefix(keys::AGENTS) {
        if let Ok(record) = serde_json::from_slice::<AgentRecord>(value) {
            state.agents.insert(node.to_owned(), record);
        }
    }
}

/// Takes `resource`, stored at `key`, out of the index (or out of the misplaced count).
fn unindex(state: &mut State, key: &str, resource: &Resource) {
    if key == keys::resource_of_ref(&resource_ref(resource)) {
        state.index.delete(resource.kind(), &resource.key());
    } else {
        state.misplaced -= 1;
    }
}

fn apply_delete(state: &mut State, key: &str, revision: Revision) {
    if key.starts_with(keys::RESOURCES) {
        if let Some(old) = state.resources.remove(key) {
            unindex(state, key, &old.resource);
            state
                .changes
                .entry(revision)
                .or_default()
                .push(key.to_owned());
        }
    } else if let Some(id) = key.strip_prefix(keys::HEALTH) {
        state.health.remove(id);
    } else if key.starts_with(keys::JWKS) {
        if let Some((uri, _)) = state.jwks.remove(key) {
            jwks_changed(state, &uri, revision);
        }
    } else if let Some(node) = key.strip_prefix(keys::AGENTS) {
        state.agents.remove(node);
    }
}

/// Health as stored (JSON, so it is readable with etcdctl).
#[derive(Debug, Serialize, Deserialize)]
pub struct HealthJson {
    pub namespace: String,
    pub workload: String,
    pub healthy: bool,
    pub detail: String,
    pub reporter: String,
}

impl From<HealthJson> for EndpointHealth {
    fn from(h: HealthJson) -> Self {
        EndpointHealth {
            namespace: h.namespace,
            workload: h.workload,
            healthy: h.healthy,
            detail: h.detail,
            reporter: h.reporter,
        }
    }
}

impl From<&EndpointHealth> for HealthJson {
    fn from(h: &EndpointHealth) -> Self {
        HealthJson {
            namespace: h.namespace.clone(),
            workload: h.workload.clone(),
            healthy: h.healthy,
            detail: h.detail.clone(),
            reporter: h.reporter.clone(),
        }
    }
}

/// Follows the store forever; on a compacted history or a broken watch, re-lists.
async fn follow(cache: Arc<ConfigCache>, store: SharedStore, mut from: Revision) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.watch(keys::WATCHED, from).await {
            Ok(mut events) => {
                while let Some(batch) = events.next().await {
                    match batch {
                        Ok(batch) => {
                            from = batch.last().map(Event::revision).unwrap_or(from);
                            cache.apply(batch);
                            backoff = Duration::from_millis(100);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store watch broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "store watch failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        match cache.resync(&store).await {
            Ok(revision) => from = revision,
            Err(e) => tracing::warn!(error = %e, "re-listing the store failed"),
        }
    }
}

/// The ref of a resource.
pub fn resource_ref(resource: &Resource) -> ResourceRef {
    let key = resource.key();
    ResourceRef {
        kind: resource.kind().to_owned(),
        namespace: key.namespace,
        name: key.name,
    }
}
