//! The mesh config in a snapshot: at most one, defaults otherwise.

use super::{issue, Snapshot};
use crate::error::Issue;
use crate::mesh_config::{MeshConfig, MeshConfigSpec};

impl Snapshot {
    /// Keeps the first config (in name order) and reports every other one.
    pub(super) fn set_mesh_config(&mut self, configs: Vec<MeshConfig>, issues: &mut Vec<Issue>) {
        let mut configs = configs.into_iter();
        let Some(first) = configs.next() else {
            return;
        };
        for other in configs {
            issues.push(issue(
                &other,
                "metadata.name",
                format!(
                    "only one MeshConfig is allowed (also MeshConfig {})",
                    first.metadata.key()
                ),
            ));
        }
        self.mesh = first.spec.clone();
        self.mesh_config = Some(first);
    }

    /// Mesh-wide settings: the MeshConfig's spec, or the defaults when there is none.
    pub fn mesh_config(&self) -> &MeshConfigSpec {
        &self.mesh
    }

    /// The MeshConfig resource itself, if the snapshot has one.
    pub fn mesh_config_resource(&self) -> Option<&MeshConfig> {
        self.mesh_config.as_ref()
    }
}
