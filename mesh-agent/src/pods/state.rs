//! Enrollments persisted in the state directory, so a restarted agent resumes every pod
//! without being told again. One JSON file, replaced atomically, readable by root only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::EnrollRequest;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedPod {
    pub request: EnrollRequest,
    pub slot: u32,
    /// Addresses sk_lookup steers for the pod (so they can be withdrawn even if the pod's
    /// namespace is gone by the time the agent restarts).
    #[serde(default)]
    pub steered_ips: Vec<std::net::IpAddr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    pods: BTreeMap<String, SavedPod>,
}

pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn open(state_dir: &Path) -> Result<StateStore> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state dir {}", state_dir.display()))?;
        Ok(StateStore {
            path: state_dir.join("pods.json"),
        })
    }

    /// Saved enrollments by uid. A missing file is an empty state; a corrupt one is an error
    /// (we never silently forget pods whose capture is still attached in the kernel).
    pub fn load(&self) -> Result<BTreeMap<String, SavedPod>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let file: StateFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("state file {} is corrupt", self.path.display()))?;
                Ok(file.pods)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn save(&self, pods: BTreeMap<String, SavedPod>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&StateFile { pods })?;
        off_the_workers(|| crate::sys::fs::write_private_atomically(&self.path, &bytes))
    }
}

/// Runs blocking file work (an fsync can take long on a busy disk) telling the runtime first,
/// so the proxy's tasks move to another worker meanwhile instead of waiting for the disk.
/// Callers save under the pods lock, which keeps the file in the order of the changes.
fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        let mut pods = BTreeMap::new();
        let request = EnrollRequest::for_test("u1", "10.0.0.1");
        pods.insert(
            "u1".to_string(),
            SavedPod {
                request,
                slot: 3,
                steered_ips: vec![],
            },
        );
        store.save(pods).unwrap();
        assert_eq!(store.load().unwrap()["u1"].slot, 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pods.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("pods.json"), b"{nope").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("corrupt"));
    }
}
