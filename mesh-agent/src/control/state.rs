//! The config an agent holds from the control plane: every resource and endpoint health at a
//! version, how a push changes it, and the cache file that lets an agent started while the
//! control plane is down serve its last good config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mesh_api::{Resource, ResourceKey, Snapshot};
use mesh_proto::v1::{ConfigPush, EndpointHealth};
use serde::{Deserialize, Serialize};

/// Health as the agent keeps it (and caches it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigState {
    pub version: u64,
    /// By storage key.
    pub resources: BTreeMap<String, Resource>,
    /// By `namespace/workload`.
    pub health: BTreeMap<String, Health>,
}

impl ConfigState {
    /// The state after `push`, validated as a whole; `self` is untouched, so a push that
    /// fails leaves the last good config in place.
    pub fn apply(&self, push: &ConfigPush) -> Result<(ConfigState, Snapshot)> {
        let mut next = if push.full {
            ConfigState {
                version: push.version,
                ..ConfigState::default()
            }
        } else {
            if push.base_version != self.version {
                bail!(
                    "push v{} is a diff on v{}, but this agent has v{}",
                    push.version,
                    push.base_version,
                    self.version
                );
            }
            ConfigState {
                version: push.version,
                ..self.clone()
            }
        };
        for upsert in &push.upserts {
            let resource = Resource::from_json(&upsert.json)
                .map_err(|e| anyhow::anyhow!("push v{}: {e}", push.version))?;
            next.resources.insert(resource.storage_key(), resource);
        }
        for delete in &push.deletes {
            let kind = Resource::kind_named(&delete.kind).with_context(|| {
                format!(
                    "push v{}: unknown kind {:?} in a delete",
                    push.version, delete.kind
                )
            })?;
            next.resources
                .remove(&ResourceKey::new(kind, &delete.namespace, &delete.name).storage_key());
        }
        for h in &push.health {
            next.health.insert(
                health_id(h),
                Health {
                    healthy: h.healthy,
                    detail: h.detail.clone(),
                },
            );
        }
        let snapshot = Snapshot::from_resources(next.resources.values().cloned())
            .map_err(|e| anyhow::anyhow!("push v{}: {e}", push.version))?;
        Ok((next, snapshot))
    }
}

pub fn health_id(h: &EndpointHealth) -> String {
    format!("{}/{}", h.namespace, h.workload)
}

/// `<state-dir>/config-cache.json`, mode 0600.
pub struct ConfigCacheFile {
    path: PathBuf,
}

impl ConfigCacheFile {
    pub fn new(state_dir: &Path) -> ConfigCacheFile {
        ConfigCacheFile {
            path: state_dir.join("config-cache.json"),
        }
    }

    pub fn load(&self) -> Result<Option<ConfigState>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("the config cache {} is unreadable", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn save(&self, state: &ConfigState) -> Result<()> {
        crate::sys::fs::write_private_atomically(&self.path, &serde_json::to_vec(state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::{Resource as PbResource, ResourceRef};

    fn service(name: &str, vip: &str) -> PbResource {
        let yaml = format!(
            "apiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  vips: [\"{vip}\"]\n  ports: [{{port: 80}}]\n  selector: {{app: {name}}}\n"
        );
        let r = mesh_api::load_str("t.yaml", &yaml).unwrap().remove(0);
        PbResource {
            json: r.to_json().into_bytes(),
        }
    }

    #[test]
    fn full_then_diff_then_delete() {
        let full = ConfigPush {
            version: 5,
            full: true,
            upserts: vec![service("a", "10.96.0.1"), service("b", "10.96.0.2")],
            ..Default::default()
        };
        let (s1, snap) = ConfigState::default().apply(&full).unwrap();
        assert_eq!((s1.version, snap.services().len()), (5, 2));
        let diff = ConfigPush {
            version: 7,
            base_version: 5,
            upserts: vec![service("c", "10.96.0.3")],
            deletes: vec![ResourceRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: "a".into(),
            }],
            ..Default::default()
        };
        let (s2, snap) = s1.apply(&diff).unwrap();
        let names: Vec<_> = snap.services().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(
            (s2.version, names),
            (7, vec!["b".to_string(), "c".to_string()])
        );
        // A diff on the wrong base is refused, and the state it was applied to is unchanged.
        assert!(s1.apply(&diff).is_ok());
        assert!(s2
            .apply(&diff)
            .unwrap_err()
            .to_string()
            .contains("diff on v5"));
    }

    #[test]
    fn an_inconsistent_push_is_refused() {
        // Two services with the same VIP: valid one by one, not together.
        let push = ConfigPush {
            version: 2,
            full: true,
            upserts: vec![service("a", "10.96.0.1"), service("b", "10.96.0.1")],
            ..Default::default()
        };
        let err = ConfigState::default().apply(&push).unwrap_err().to_string();
        assert!(
            err.contains("push v2") && err.contains("10.96.0.1"),
            "{err}"
        );
    }

    #[test]
    fn cache_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = ConfigCacheFile::new(dir.path());
        assert!(file.load().unwrap().is_none());
        let push = ConfigPush {
            version: 3,
            full: true,
            upserts: vec![service("a", "10.96.0.1")],
            ..Default::default()
        };
        let (state, _) = ConfigState::default().apply(&push).unwrap();
        file.save(&state).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!((loaded.version, loaded.resources.len()), (3, 1));
    }
}
