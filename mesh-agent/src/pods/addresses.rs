//! Following a pod's addresses after enrollment.
//!
//! sk_lookup refuses TCP to any address of an enrolled pod's namespace that is not registered
//! in `MESH_POD_BY_IP` (`mesh-ebpf/src/sk_lookup.rs`), so an address added inside the pod can
//! never carry a connection around the mesh, whether the agent is up or not. This follower is
//! what makes such an address work *through* the mesh: it watches the pod's namespace for
//! address changes (`sys/netlink.rs`) and keeps the pod's steered addresses equal to its
//! declared IPs plus every routable address it has, in the kernel map, in the proxy's
//! `LocalPods`, in status and in the saved state. Between `ip addr add` and the follower's
//! update a connection to the new address is refused, never delivered around the mesh.
//!
//! A (re)started follower re-reads the full list first, so changes made while the agent was
//! down are caught, and sweeps entries a previous agent left for addresses that are gone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::proxy::PodContext;
use crate::sys::netlink::AddressEvents;

/// The addresses sk_lookup steers to one pod, kept up to date while the pod is enrolled.
/// Dropping it stops following and leaves the steering in place (an agent going down keeps
/// failing closed); [`SteeredAddresses::withdraw`] removes it.
pub struct SteeredAddresses {
    pod: Arc<PodAddresses>,
    follower: JoinHandle<()>,
}

struct PodAddresses {
    context: Arc<PodContext>,
    slot: u32,
    /// Always steered, whether or not the pod has them right now.
    declared: Vec<IpAddr>,
    steering: Mutex<Steering>,
    /// Tells the agent to save its state.
    changed: Arc<Notify>,
}

struct Steering {
    steered: Vec<IpAddr>,
    /// Set by `withdraw`: a sync still under way must not register anything any more.
    withdrawn: bool,
}

/// How long to wait before re-reading after the notice socket failed (it should not).
const RETRY: Duration = Duration::from_secs(1);

impl SteeredAddresses {
    /// Starts following the pod's addresses. `steered` is what is registered already (the
    /// declared IPs and the addresses found at enrollment); `events` must have been subscribed
    /// before those addresses were listed, so no change falls in between.
    pub fn follow(
        events: AddressEvents,
        context: Arc<PodContext>,
        slot: u32,
        declared: Vec<IpAddr>,
        steered: Vec<IpAddr>,
        changed: Arc<Notify>,
    ) -> SteeredAddresses {
        let pod = Arc::new(PodAddresses {
            context,
            slot,
            declared,
            steering: Mutex::new(Steering {
                steered,
                withdrawn: false,
            }),
            changed,
        });
        let follower = tokio::spawn(follow(pod.clone(), events));
        SteeredAddresses { pod, follower }
    }

    /// Every address steered to the pod now.
    pub fn steered(&self) -> Vec<IpAddr> {
        self.pod.steering.lock().steered.clone()
    }

    /// Stops following and withdraws every steered address (unenroll).
    pub fn withdraw(&self) {
        self.follower.abort();
        let pod = &self.pod;
        let mut steering = pod.steering.lock();
        steering.withdrawn = true;
        for ip in steering.steered.drain(..) {
            pod.context.maps.release_pod_ip(ip, pod.slot);
            pod.context.local_pods.release(ip, &pod.context);
        }
    }
}

impl Drop for SteeredAddresses {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

async fn follow(pod: Arc<PodAddresses>, mut events: AddressEvents) {
    let mut first = true;
    loop {
        pod.sync(first).await;
        first = false;
        if let Err(e) = events.changed().await {
            tracing::warn!(pod = %pod.context.pod, error = %e, "reading address change notices failed; re-reading the addresses");
            tokio::time::sleep(RETRY).await;
        }
    }
}

impl PodAddresses {
    /// Makes the steered addresses the declared ones plus every routable address the pod has.
    async fn sync(&self, sweep_stale: bool) {
        let context = &self.context;
        let found = match context.netns.routable_addresses().await {
            Ok(found) => found,
            Err(e) => {
                // Unlisted addresses stay refused by sk_lookup; the next notice retries.
                tracing::warn!(pod = %context.pod, error = %e, "listing the pod's addresses failed");
                return;
            }
        };
        let mut steering = self.steering.lock();
        if steering.withdrawn {
            return;
        }
        let mut wanted = self.declared.clone();
        for ip in found {
            if !wanted.contains(&ip) && self.claim(ip) {
                wanted.push(ip);
            }
        }
        for ip in &steering.steered {
            if !wanted.contains(ip) {
                context.maps.release_pod_ip(*ip, self.slot);
                context.local_pods.release(*ip, context);
            }
        }
        if sweep_stale {
            context.maps.retain_pod_ips(self.slot, &wanted);
        }
        if steering.steered != wanted {
            tracing::info!(pod = %context.pod, before = ?steering.steered, now = ?wanted, "the pod's addresses changed; steering follows");
            steering.steered = wanted;
            self.changed.notify_one();
        }
    }

    /// Registers an address the pod has for steering, unless it belongs to another pod of this
    /// node: then it stays unregistered in this pod, where sk_lookup refuses it.
    fn claim(&self, ip: IpAddr) -> bool {
        let context = &self.context;
        if !context.local_pods.claim(ip, context) {
            tracing::warn!(pod = %context.pod, %ip, "the pod has an address of another enrolled pod; not steered for this pod");
            return false;
        }
        match context.maps.claim_pod_ip(ip, self.slot) {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(pod = %context.pod, %ip, "the address is registered for another pod; not steered for this pod");
                context.local_pods.release(ip, context);
                false
            }
            Err(e) => {
                tracing::warn!(pod = %context.pod, error = %format!("{e:#}"), "steering a new address failed; it stays refused");
                context.local_pods.release(ip, context);
                false
            }
        }
    }
}

/// Saves the agent's state whenever a pod's steered addresses change, so a restarted agent
/// knows what to withdraw for a pod deleted meanwhile.
pub async fn save_on_changes(agent: Arc<crate::agent::Agent>) {
    loop {
        agent.steering_changed.notified().await;
        let pods = agent.pods.lock().await;
        if let Err(e) = agent.save(&pods) {
            tracing::warn!(error = %format!("{e:#}"), "saving the pods' state failed");
        }
    }
}
