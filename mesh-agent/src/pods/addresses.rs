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
//! down are caught, and sweeps entries a previous agent left for addresses that are gone
//! (retried until a listing succeeds).
//!
//! One pod must not be able to exhaust the node-wide map or the agent: at most
//! [`MAX_UNDECLARED`] addresses beyond the declared ones are steered (the rest stay refused,
//! failing closed), re-reads are at least [`MIN_SYNC_INTERVAL`] apart, and state saves at least
//! [`MIN_SAVE_INTERVAL`] apart. IPv4-mapped IPv6 addresses are never claimed: the map stores
//! them as the IPv4 address, which may be another pod's.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// When the "over the cap" warning was last logged.
    last_cap_warning: Option<Instant>,
}

/// How long to wait before re-reading after the notice socket failed (it should not).
const RETRY: Duration = Duration::from_secs(1);
/// Addresses beyond the declared ones steered to one pod at most: the map is node-wide.
pub const MAX_UNDECLARED: usize = 16;
/// The shortest time between two re-reads of a pod's addresses; notices that come meanwhile
/// cost one re-read together.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(150);
/// The shortest time between two saves of the agent's state for address changes.
const MIN_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two "over the cap" warnings for one pod.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

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
                last_cap_warning: None,
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
    /// Stops following (a successor agent follows the pod now), leaving the maps as they are.
    pub fn stop_following(&self) {
        self.follower.abort();
    }

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
    // Until one listing succeeds, entries a previous agent left may still be in the map.
    let mut sweep_stale = true;
    loop {
        if pod.sync(sweep_stale).await {
            sweep_stale = false;
        }
        // Rate limit: notices arriving during the pause are consumed together below.
        tokio::time::sleep(MIN_SYNC_INTERVAL).await;
        if let Err(e) = events.changed().await {
            tracing::warn!(pod = %pod.context.pod, error = %e, "reading address change notices failed; re-reading the addresses");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// The undeclared addresses to try to steer, in order of preference: those steered already
/// first (so going over the cap never moves steering between addresses), then new ones.
/// Declared, duplicate and IPv4-mapped IPv6 addresses are left out.
fn candidates(declared: &[IpAddr], steered: &[IpAddr], found: &[IpAddr]) -> Vec<IpAddr> {
    let declared: HashSet<IpAddr> = declared.iter().copied().collect();
    let steered_now: HashSet<IpAddr> = steered.iter().copied().collect();
    let mut seen = HashSet::new();
    let usable: Vec<IpAddr> = found
        .iter()
        .copied()
        .filter(|ip| !declared.contains(ip) && !is_ipv4_mapped(*ip) && seen.insert(*ip))
        .collect();
    let (mut kept, new): (Vec<IpAddr>, Vec<IpAddr>) =
        usable.into_iter().partition(|ip| steered_now.contains(ip));
    kept.extend(new);
    kept
}

/// `::ffff:a.b.c.d`: the kernel lets a pod add one, but the map would store it as `a.b.c.d`.
fn is_ipv4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

impl PodAddresses {
    /// Makes the steered addresses the declared ones plus the routable addresses the pod has,
    /// up to [`MAX_UNDECLARED`] of those. False if the addresses could not be listed.
    async fn sync(&self, sweep_stale: bool) -> bool {
        let context = &self.context;
        let found = match context.netns.routable_addresses().await {
            Ok(found) => found,
            Err(e) => {
                // Unlisted addresses stay refused by sk_lookup; the next notice retries.
                tracing::warn!(pod = %context.pod, error = %e, "listing the pod's addresses failed");
                return false;
            }
        };
        let mut steering = self.steering.lock();
        if steering.withdrawn {
            return true;
        }
        self.restore_declared(&found);
        let mut wanted = self.declared.clone();
        let mut refused = 0;
        for ip in candidates(&self.declared, &steering.steered, &found) {
            if wanted.len() - self.declared.len() >= MAX_UNDECLARED {
                refused += 1;
            } else if self.claim(ip) {
                wanted.push(ip);
            }
        }
        if refused > 0 && self.cap_warning_due(&mut steering) {
            tracing::warn!(pod = %context.pod, cap = MAX_UNDECLARED, refused, "the pod has more undeclared addresses than the cap; the rest stay unsteered (refused)");
        }
        let wanted_set: HashSet<IpAddr> = wanted.iter().copied().collect();
        for ip in &steering.steered {
            if !wanted_set.contains(ip) {
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
        true
    }

    /// Puts back the entry of each declared IP the pod has if something else removed it; an
    /// entry pointing at another pod is left alone (never stolen) and reported.
    fn restore_declared(&self, found: &[IpAddr]) {
        let context = &self.context;
        for ip in self.declared.iter().filter(|ip| found.contains(ip)) {
            match context.maps.claim_pod_ip(*ip, self.slot) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(pod = %context.pod, %ip, "a declared IP of the pod is registered for another pod; left as it is")
                }
                Err(e) => {
                    tracing::error!(pod = %context.pod, error = %format!("{e:#}"), "restoring a declared IP's steering failed")
                }
            }
        }
    }

    /// Whether to log the "over the cap" warning now (at most once per interval per pod).
    fn cap_warning_due(&self, steering: &mut Steering) -> bool {
        let now = Instant::now();
        let due = steering
            .last_cap_warning
            .is_none_or(|last| now.duration_since(last) >= CAP_WARNING_INTERVAL);
        if due {
            steering.last_cap_warning = Some(now);
        }
        due
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
/// knows what to withdraw for a pod deleted meanwhile. At most once per [`MIN_SAVE_INTERVAL`]:
/// a change notified during the pause leaves a permit, so the latest state is saved after it.
pub async fn save_on_changes(agent: Arc<crate::agent::Agent>) {
    loop {
        agent.steering_changed.notified().await;
        {
            let pods = agent.pods.lock().await;
            if let Err(e) = agent.save(&pods) {
                tracing::warn!(error = %format!("{e:#}"), "saving the pods' state failed");
            }
        }
        tokio::time::sleep(MIN_SAVE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn candidates_leave_out_declared_duplicate_and_mapped_addresses() {
        let declared = [ip("10.0.0.5")];
        let found = [
            ip("10.0.0.5"),
            ip("::ffff:10.0.0.6"),
            ip("fd00::5"),
            ip("fd00::5"),
        ];
        assert_eq!(candidates(&declared, &[], &found), [ip("fd00::5")]);
    }

    #[test]
    fn candidates_prefer_addresses_steered_already() {
        let found: Vec<IpAddr> = (1..=40).map(|i| ip(&format!("fd00::{i}"))).collect();
        let steered = [ip("10.0.0.5"), ip("fd00::39"), ip("fd00::40")];
        let order = candidates(&[ip("10.0.0.5")], &steered, &found);
        assert_eq!(order.len(), 40);
        assert_eq!(order[..2], [ip("fd00::39"), ip("fd00::40")]);
        assert_eq!(order[2], ip("fd00::1"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_recognised() {
        assert!(is_ipv4_mapped(ip("::ffff:10.0.0.5")));
        assert!(!is_ipv4_mapped(ip("fd00::5")));
        assert!(!is_ipv4_mapped(ip("10.0.0.5")));
    }
}
