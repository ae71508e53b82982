//! The config check every change goes through before anything is written: the change
//! against the indexes of the current, validated config when it provably keeps the config
//! valid (one resource, the common case), else the whole config as it would be after the
//! change, built into a `Snapshot` and validated as agents would (which also words every
//! rejection). Both accept exactly the same changes; see `mesh_api::ConfigIndex`.

use std::collections::HashMap;

use mesh_api::{Change, ObjectKey, Resource, Snapshot, Verdict};
use tonic::Status;

use super::cache::ConfigCache;

/// What the check built, kept alive until the change is on its way (freeing a whole-config
/// snapshot costs a sixth of building it, so not on the latency path).
pub struct Checked {
    full: Option<FullCheck>,
}

/// The snapshot of the config after the change, and the cached config it was built from.
type FullCheck = (Snapshot, Vec<(String, std::sync::Arc<Resource>)>);

impl Checked {
    /// Whether the whole config was checked (the change was not provably valid from the
    /// indexes), which leaves the cache's config to be validated again.
    pub fn was_full(&self) -> bool {
        self.full.is_some()
    }
}

/// Checks `changes` (store key, new resource or `None` to delete) against the cache's
/// config; the error names the source, resource and field of every problem.
pub fn check_changes(
    cache: &ConfigCache,
    changes: &[(String, Option<Resource>)],
    source: &str,
) -> Result<Checked, Status> {
    if let [(key, resource)] = changes {
        if proved_valid(cache, key, resource.as_ref()) {
            return Ok(Checked { full: None });
        }
    }
    // The config after the change: the cached resources (by store key) not changed, and the
    // new versions (the last one of a key given twice). Cloned straight into the snapshot:
    // at 60k resources every extra pass over them costs tens of milliseconds.
    let changed: HashMap<&str, Option<&Resource>> = changes
        .iter()
        .map(|(key, resource)| (key.as_str(), resource.as_ref()))
        .collect();
    let current = cache.keyed_resources();
    let config = current
        .iter()
        .filter(|(key, _)| !changed.contains_key(key.as_str()))
        .map(|(_, r)| (**r).clone())
        .chain(changed.values().flatten().map(|r| (*r).clone()));
    match Snapshot::from_resources(config) {
        Ok(snapshot) => Ok(Checked {
            full: Some((snapshot, current)),
        }),
        Err(e) => {
            let prefix = if source.is_empty() {
                String::new()
            } else {
                format!("{source}: ")
            };
            Err(Status::invalid_argument(format!("{prefix}{e}")))
        }
    }
}

/// Whether one change provably keeps the current config valid. Validates the current config
/// first if that is not known yet (after a start, or after a change that took the full
/// check); if it is invalid (written around the control plane), nothing is proved.
fn proved_valid(cache: &ConfigCache, key: &str, resource: Option<&Resource>) -> bool {
    if !cache.validate_current() {
        return false;
    }
    let verdict = match resource {
        Some(resource) => cache.check_change(Change::Put(resource)),
        None => match cache.identity(key) {
            Some((kind, name)) => cache.check_change(Change::Delete(kind, &name)),
            // Deleting what is not there changes nothing.
            None => cache.check_change(Change::Delete("", &ObjectKey::new("", ""))),
        },
    };
    verdict == Verdict::Valid
}
