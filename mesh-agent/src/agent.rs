//! The running agent: the datapath, the mesh view, the enrolled pods and the metrics, shared by
//! the proxy and the admin API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::datapath::Datapath;
use crate::metrics::Metrics;
use crate::pods::{EnrolledPod, StateStore};
use crate::registry::Registry;

pub struct Agent {
    pub node: String,
    pub datapath: Datapath,
    /// The socket hooks, attached once for the node.
    pub node_attachments: Vec<crate::datapath::Attachment>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub state: StateStore,
    pub cgroup_root: PathBuf,
    pub connect_timeout: Duration,
    /// Enrolled pods by uid. An async lock: enrollment awaits socket creation in the pod.
    pub pods: tokio::sync::Mutex<BTreeMap<String, EnrolledPod>>,
    /// Pods being enrolled or resumed: their uid, slot and IPs, taken without holding `pods`
    /// across the slow part of enrollment.
    pub enrolling: crate::pods::Reservations,
    /// Saved pods not (yet) serving: those a resume has not reached yet, and those whose resume
    /// failed for a passing reason (their capture stays attached and fails closed). Kept in
    /// every save so neither is forgotten, and unenroll can still take them out.
    pub unresumed: parking_lot::Mutex<BTreeMap<String, crate::pods::SavedPod>>,
    /// The pods' proxy contexts by IP, for same-node delivery.
    pub local_pods: Arc<crate::proxy::LocalPods>,
    /// Notified when a pod's steered addresses change (`pods::save_on_changes` saves them).
    pub steering_changed: Arc<tokio::sync::Notify>,
    /// Set once every saved pod has been resumed.
    pub ready: AtomicBool,
    /// Results of this node's health checks, by `namespace/workload`.
    pub local_health:
        parking_lot::Mutex<std::collections::BTreeMap<String, mesh_proto::v1::EndpointHealth>>,
    /// Wakes whoever publishes `local_health` when it changes.
    pub health_changed: tokio::sync::Notify,
    /// Certificates of the identities of this node's pods.
    pub identities: Arc<crate::identity::Identities>,
    /// Proxy state shared by all pods: open connections, the HBONE pool.
    pub proxy: Arc<crate::proxy::Shared>,
    /// This agent's cgroup v2 id (kept out of capture; told to a successor).
    pub cgroup_id: u64,
    /// Handing the pods to a successor agent (upgrade), or draining after SIGTERM.
    pub handover: crate::handover::Handover,
    /// The previous agent's cgroup id while it drains (kept out of capture until it exits).
    pub predecessor_cgroup: parking_lot::Mutex<Option<u64>>,
    /// Listeners the previous agent handed over, by pod uid, until the pod is resumed.
    pub inherited: parking_lot::Mutex<
        std::collections::HashMap<
            String,
            Vec<(crate::handover::ListenerRole, std::net::TcpListener)>,
        >,
    >,
}

impl Agent {
    /// The cgroup ids of the agents running on the node: this one, and its predecessor while
    /// that drains.
    pub fn live_agents(&self) -> Vec<u64> {
        std::iter::once(self.cgroup_id)
            .chain(*self.predecessor_cgroup.lock())
            .collect()
    }
}
