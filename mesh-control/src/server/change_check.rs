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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keys;
    use crate::server::cache::resource_ref;
    use crate::store::{EmbeddedStore, SharedStore};

    fn resource(yaml: &str) -> Resource {
        mesh_api::load_str("test.yaml", yaml).unwrap().remove(0)
    }

    fn key(r: &Resource) -> String {
        keys::resource_of_ref(&resource_ref(r))
    }

    async fn put(store: &SharedStore, at: &str, r: &Resource) -> u64 {
        store.put(at, serde_json::to_vec(r).unwrap()).await.unwrap()
    }

    /// Through the real cache, fed by the store's watch: a one-resource change is judged from
    /// the indexes once the stored config is validated, a conflict still gets the full
    /// check's message, and a store the control plane did not write consistently is never
    /// judged from the indexes.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_cache_indexes_decide_one_resource_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let web = resource(
            "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
             spec: {vips: [10.96.0.1], ports: [{name: http, port: 80, protocol: http}], selector: {app: web}}\n",
        );
        let route = resource(
            "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: web, namespace: a}\n\
             spec: {service: web, rules: [{backends: [{service: web}]}]}\n",
        );
        put(&store, &key(&web), &web).await;
        put(&store, &key(&route), &route).await;
        let cache = ConfigCache::start(store.clone()).await.unwrap();

        let workload = |name: &str, ip: &str| {
            resource(&format!(
                "apiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: a}}\n\
                 spec: {{uid: {name}, ips: [{ip}], node: n1}}\n"
            ))
        };
        let w1 = workload("w1", "10.0.0.1");
        let checked = check_changes(&cache, &[(key(&w1), Some(w1.clone()))], "").unwrap();
        assert!(!checked.was_full());

        let on_vip = workload("w2", "10.96.0.1");
        let err = check_changes(&cache, &[(key(&on_vip), Some(on_vip))], "f.yaml")
            .err()
            .expect("rejected");
        assert!(
            err.message().starts_with("f.yaml: ")
                && err
                    .message()
                    .contains("10.96.0.1 is also an IP of Workload a/w2"),
            "{}",
            err.message()
        );
        let err = check_changes(&cache, &[(key(&web), None)], "")
            .err()
            .expect("rejected");
        assert!(
            err.message().contains("no Service a/web"),
            "{}",
            err.message()
        );

        // w1 stored under another workload's key: the index cannot mirror that.
        let revision = put(&store, &keys::resource("Workload", "a", "elsewhere"), &w1).await;
        cache.wait_for(revision).await;
        let w3 = workload("w3", "10.0.0.3");
        let checked = check_changes(&cache, &[(key(&w3), Some(w3))], "").unwrap();
        assert!(checked.was_full());
    }
}
