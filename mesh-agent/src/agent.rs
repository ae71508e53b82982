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
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub state: StateStore,
    pub cgroup_root: PathBuf,
    pub connect_timeout: Duration,
    /// Enrolled pods by uid. An async lock: enrollment awaits socket creation in the pod.
    pub pods: tokio::sync::Mutex<BTreeMap<String, EnrolledPod>>,
    /// Set once every saved pod has been resumed.
    pub ready: AtomicBool,
}
