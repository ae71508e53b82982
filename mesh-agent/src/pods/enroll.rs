//! Enroll, resume and unenroll.
//!
//! Order matters for fail-closed behaviour: a pod's listeners go into the SOCKMAP before its
//! IPs are announced to sk_lookup, and the cgroup hooks are attached last, so there is no
//! moment where the pod's traffic is steered to a listener that does not exist yet, nor a
//! moment where capture is on and the proxy is not.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mesh_api::ObjectKey;
use mesh_common::{ports, ListenerKind};
use mesh_identity::SpiffeId;
use tokio::task::JoinHandle;

use super::addresses::SteeredAddresses;
use super::refusal::{Reason, Refusal};
use super::reserve::Reservation;
use super::state::SavedPod;
use super::targets::{prepare, PreparedPod, Unfit, PREPARE_TIMEOUT};
use super::EnrollRequest;
use crate::agent::Agent;
use crate::datapath::{AttachTarget, PodAttachments};
use crate::handover::ListenerRole;
use crate::proxy::{self, bind_listener, PodContext, PodListeners};
use crate::sys::netlink::AddressEvents;
use crate::sys::netns::NetnsSockets;

/// A pod the agent serves.
pub struct EnrolledPod {
    pub request: EnrollRequest,
    pub slot: u32,
    /// Every address sk_lookup steers for this pod: the declared IPs plus every other routable
    /// address in its namespace, followed as addresses come and go.
    pub addresses: SteeredAddresses,
    pub attachments: PodAttachments,
    /// (role, address) of each listener, for status.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub context: Arc<PodContext>,
    tasks: Vec<JoinHandle<()>>,
    /// Second descriptors of the listeners the tasks serve, to hand over to a successor agent
    /// (`handover`) while this one still accepts on them.
    pub listener_fds: Vec<(ListenerRole, OwnedFd)>,
}

impl EnrolledPod {
    /// Stops accepting and following the pod's addresses, leaving everything in the kernel as
    /// it is: a successor agent serves the pod now (or, on SIGTERM, nobody until the next
    /// agent, and the pod's traffic fails closed). Open connections go on.
    pub fn stop_serving(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.addresses.stop_following();
        self.listener_fds.clear();
    }
}

impl Drop for EnrolledPod {
    fn drop(&mut self) {
        // Stops the accept loops, which closes the listeners (and removes them from the
        // SOCKMAP). Connections already open finish on their own.
        for task in &self.tasks {
            task.abort();
        }
        self.context.identities.release(&self.context.identity);
    }
}

impl Agent {
    /// Enrolls a new pod. Nothing of it remains if this fails.
    ///
    /// The pods lock is held only to reserve the pod's uid, slot and IPs and to commit it:
    /// opening its namespace and cgroup (which a bad path can make slow) and starting it run
    /// without it, so status, health checks and other pods' (un)enrollments go on meanwhile.
    /// Run it as a task of its own: dropped half-way, it would leave the pod half set up.
    pub async fn enroll(&self, mut request: EnrollRequest) -> Result<()> {
        self.refuse_while_handing_over(&request.uid)?;
        let reservation = {
            let pods = self.pods.lock().await;
            let unresumed = self.unresumed.lock().clone();
            let reservation = self.enrolling.reserve(&pods, &unresumed, &request, None)?;
            request.check_declared(&self.registry.snapshot(), &self.node)?;
            reservation
        };
        let prepared = prepare(&request, &self.cgroup_root).await?;
        if reservation.is_cancelled() {
            bail!("{}", cancelled(&request));
        }
        let slot = reservation.slot();
        let pod = match self.start_pod(request.clone(), slot, prepared).await {
            Ok(pod) => pod,
            Err(e) => {
                self.datapath.detach_pod(&request.uid, slot);
                return Err(e);
            }
        };
        let mut pods = self.pods.lock().await;
        if reservation.is_cancelled() {
            self.stop_pod(pod);
            bail!("{}", cancelled(&request));
        }
        if let Err(e) = self.refuse_while_handing_over(&request.uid) {
            // Handed over since it started: the successor does not know this pod.
            self.stop_pod(pod);
            return Err(e);
        }
        tracing::info!(uid = %request.uid, pod = %request.pod_name(), slot, "pod enrolled");
        pods.insert(request.uid.clone(), pod);
        drop(reservation);
        self.save(&pods)
    }

    /// Resumes the pods saved by an earlier run, each checked like a new enrollment. A pod
    /// whose namespace or cgroup is gone was deleted while the agent was down; one whose
    /// namespace or cgroup must not be enrolled (the node's own namespace, the cgroup root...:
    /// an older agent took it) is not attached again. Either way its leftovers are cleaned up.
    ///
    /// Every saved pod stays in `unresumed` (and so in every save, including those of
    /// enrollments made meanwhile: the admin socket is served during resume) until it serves
    /// again or is cleaned up; one whose resume fails for a passing reason stays there for good,
    /// its capture attached and failing closed, until it is unenrolled.
    pub async fn resume(&self) -> Result<()> {
        let saved = self.state.load()?;
        let mut reserved = Vec::new();
        {
            let pods = self.pods.lock().await;
            for (uid, saved) in &saved {
                match self.enrolling.reserve(
                    &pods,
                    &BTreeMap::new(),
                    &saved.request,
                    Some(saved.slot),
                ) {
                    Ok(reservation) => reserved.push((reservation, saved.clone())),
                    Err(e) => {
                        tracing::error!(%uid, error = %format!("{e:#}"), "saved pod conflicts with another; not resumed (unenroll it to remove its capture)")
                    }
                }
            }
            *self.unresumed.lock() = saved;
        }
        for (reservation, saved) in reserved {
            self.resume_pod(reservation, saved).await;
        }
        let pods = self.pods.lock().await;
        self.save(&pods)
    }

    async fn resume_pod(&self, reservation: Reservation<'_>, saved: SavedPod) {
        let uid = saved.request.uid.clone();
        let resumed = if reservation.is_cancelled() {
            // Unenrolled before its turn came: nothing to resume.
            Err(None)
        } else {
            self.try_resume(&saved).await.map_err(Some)
        };
        let mut pods = self.pods.lock().await;
        let cancelled = reservation.is_cancelled();
        match resumed {
            Ok(pod) if cancelled => {
                self.stop_pod(pod);
                tracing::info!(%uid, "pod unenrolled while it was being resumed");
            }
            Ok(pod) => {
                tracing::info!(%uid, pod = %saved.request.pod_name(), slot = saved.slot, "pod resumed");
                pods.insert(uid.clone(), pod);
            }
            Err(error) => {
                let gone_or_refused = match &error {
                    Some(e) => {
                        let error = format!("{e:#}");
                        match e.downcast_ref::<Unfit>() {
                            Some(Unfit::Gone(_)) => {
                                tracing::info!(%uid, %error, "pod is gone; cleaning up");
                                true
                            }
                            Some(Unfit::Refused(_)) => {
                                tracing::error!(
                                    %uid, %error,
                                    "saved pod must not be enrolled; removing its capture instead of resuming it"
                                );
                                true
                            }
                            None => {
                                tracing::error!(%uid, %error, "resuming pod failed; its capture stays attached and fails closed until it is unenrolled");
                                false
                            }
                        }
                    }
                    None => true,
                };
                if !(gone_or_refused || cancelled) {
                    // Stays in `unresumed`: saved, and unenroll can take it out. The
                    // reservation goes under the lock, so an unenroll either cancelled it
                    // (seen above) or finds the pod in `unresumed`.
                    drop(reservation);
                    return;
                }
                self.remove_leftovers(&saved);
                if cancelled {
                    tracing::info!(%uid, "pod unenrolled while it was being resumed");
                }
            }
        }
        self.unresumed.lock().remove(&uid);
        // Under the pods lock, so a waiting unenroll sees the outcome as soon as it is woken.
        drop(reservation);
    }

    /// Opens a saved pod's namespace and cgroup and starts serving it again.
    async fn try_resume(&self, saved: &SavedPod) -> Result<EnrolledPod> {
        let mut request = saved.request.clone();
        let prepared = prepare(&request, &self.cgroup_root).await?;
        if let Err(e) = request.check_declared(&self.registry.snapshot(), &self.node) {
            // Keep serving it: dropping capture would let it bypass the mesh.
            tracing::warn!(uid = %request.uid, error = %e, "resumed pod no longer matches the config");
        }
        self.start_pod(request, saved.slot, prepared).await
    }

    /// Takes out what a saved pod that is not serving left in the kernel: its capture and the
    /// sk_lookup entries still pointing at its slot (an entry another pod holds now is left
    /// alone: an undeclared address was never reserved for this pod).
    fn remove_leftovers(&self, saved: &SavedPod) {
        self.datapath.detach_pod(&saved.request.uid, saved.slot);
        for ip in saved.request.ips.iter().chain(&saved.steered_ips) {
            self.datapath.maps.release_pod_ip(*ip, saved.slot);
        }
    }

    /// Unenrolls a pod. One still being enrolled is cancelled: this returns once its
    /// enrollment has undone its work.
    pub async fn unenroll(&self, uid: &str) -> Result<()> {
        self.refuse_while_handing_over(uid)?;
        let mut pods = self.pods.lock().await;
        let Some(pod) = pods.remove(uid) else {
            let Some(mut finished) = self.enrolling.cancel(uid) else {
                let Some(failed) = self.unresumed.lock().remove(uid) else {
                    bail!("unenroll {uid}: no pod with this uid is enrolled");
                };
                self.remove_leftovers(&failed);
                tracing::info!(%uid, "pod whose resume had failed unenrolled");
                return self.save(&pods);
            };
            drop(pods);
            // `changed` fails once the enrollment has dropped its reservation.
            let wait = tokio::time::timeout(2 * PREPARE_TIMEOUT, finished.changed()).await;
            if wait.is_err() {
                bail!("unenroll {uid}: the pod is still being enrolled; its enrollment is cancelled and undoes itself when it finishes");
            }
            tracing::info!(%uid, "enrollment cancelled by unenroll");
            return Ok(());
        };
        self.stop_pod(pod);
        self.save(&pods)
    }

    /// Takes a pod out of the mesh: capture off first, then inbound steering, then the proxy.
    fn stop_pod(&self, pod: EnrolledPod) {
        let uid = &pod.request.uid;
        self.datapath.detach_pod(uid, pod.slot);
        pod.addresses.withdraw();
        self.metrics.remove_pod(&pod.request.pod_name());
        tracing::info!(%uid, pod = %pod.request.pod_name(), "pod unenrolled");
    }

    async fn start_pod(
        &self,
        request: EnrollRequest,
        slot: u32,
        prepared: PreparedPod,
    ) -> Result<EnrolledPod> {
        let context = format!("enroll {}", request.uid);
        let PreparedPod {
            netns: netns_file,
            sockets: netns,
            ..
        } = prepared;
        let target = AttachTarget {
            path: &request.netns,
            file: &netns_file,
        };
        let listeners = match self.inherited_listeners(&request.uid)? {
            Some(listeners) => listeners,
            None => open_listeners(&netns).await.context(context.clone())?,
        };
        let addresses = listeners.addresses();
        let listener_fds = listeners.duplicates().context(context.clone())?;
        let maps = &self.datapath.maps;
        for (kind, group) in [
            (ListenerKind::Inbound, &listeners.inbound),
            (ListenerKind::Hbone, &listeners.hbone),
        ] {
            for listener in group {
                let ipv6 = listener.local_addr()?.is_ipv6();
                maps.set_listener(slot, kind, ipv6, listener)?;
            }
        }
        let trust_domain = self.registry.snapshot().mesh_config().trust_domain.clone();
        let identity =
            SpiffeId::workload(&trust_domain, &request.namespace, &request.service_account)
                .with_context(|| format!("{context}: the pod's SPIFFE ID"))?;
        // Subscribed before the addresses are listed, so no change falls in between.
        let address_events = AddressEvents::subscribe(&netns)
            .await
            .with_context(|| format!("{context}: watching the pod's addresses"))?;
        let mut steered_ips = request.ips.clone();
        for ip in netns.routable_addresses().await.context(context.clone())? {
            // An undeclared address is the pod's only if no other pod holds it: a pod must not
            // take over another's steering. (A map error leaves it refused; the address
            // follower retries and logs it.)
            if !steered_ips.contains(&ip) && maps.claim_pod_ip(ip, slot).unwrap_or(false) {
                steered_ips.push(ip);
            }
        }
        let attached =
            self.announce_and_attach(&request.uid, slot, &steered_ips, target, netns.cookie());
        let attachments = match attached {
            Ok(attachments) => attachments,
            Err(e) => {
                // Slot-checked: an address held by another pod is not this pod's to withdraw.
                for ip in &steered_ips {
                    maps.release_pod_ip(*ip, slot);
                }
                return Err(e.context(context));
            }
        };
        let pod_context = Arc::new(PodContext {
            pod: request.pod_name(),
            netns,
            maps: maps.clone(),
            registry: self.registry.clone(),
            counters: self.metrics.pod(&request.pod_name()),
            connect_timeout: self.connect_timeout,
            ips: steered_ips.clone(),
            local_pods: self.local_pods.clone(),
            workload: ObjectKey::new(&request.namespace, &request.name),
            identity,
            identities: self.identities.clone(),
            shared: self.proxy.clone(),
            http_pool: Default::default(),
            security: Default::default(),
        });
        self.identities.acquire(&pod_context.identity);
        self.local_pods.insert(&pod_context);
        let tasks = proxy::serve(pod_context.clone(), listeners);
        let steered = SteeredAddresses::follow(
            address_events,
            pod_context.clone(),
            slot,
            request.ips.clone(),
            steered_ips,
            self.steering_changed.clone(),
        );
        Ok(EnrolledPod {
            request,
            slot,
            addresses: steered,
            attachments,
            listeners: addresses,
            context: pod_context,
            tasks,
            listener_fds,
        })
    }

    /// Tells sk_lookup about the pod's addresses, then turns capture on for its namespace.
    fn announce_and_attach(
        &self,
        uid: &str,
        slot: u32,
        ips: &[IpAddr],
        netns: AttachTarget,
        cookie: u64,
    ) -> Result<PodAttachments> {
        for ip in ips {
            self.datapath.maps.add_pod_ip(*ip, slot)?;
        }
        self.datapath.attach_pod(uid, netns, cookie, slot)
    }

    /// Stops accepting for every pod (a successor serves them, or the agent is stopping),
    /// leaving capture and steering in place.
    pub async fn stop_serving_pods(&self) {
        let mut pods = self.pods.lock().await;
        for pod in pods.values_mut() {
            pod.stop_serving();
        }
    }

    /// Enrollment changes wait while the pods are being handed to a successor agent; the CNI
    /// plugin takes this refusal as "try again later".
    fn refuse_while_handing_over(&self, uid: &str) -> Result<()> {
        if self.handover.is_frozen() || self.handover.is_released() {
            let message = format!(
                "{uid}: the agent is handing over to its successor (upgrade) or stopping; try again in a few seconds"
            );
            return Err(Refusal::new(Reason::NotReady, message).into());
        }
        Ok(())
    }

    /// The listeners the previous agent handed over for this pod, if any.
    fn inherited_listeners(&self, uid: &str) -> Result<Option<PodListeners>> {
        let Some(handed) = self.inherited.lock().remove(uid) else {
            return Ok(None);
        };
        let mut listeners = PodListeners::default();
        for (role, listener) in handed {
            let listener = tokio::net::TcpListener::from_std(listener)
                .with_context(|| format!("enroll {uid}: adopting a handed-over listener"))?;
            match role {
                ListenerRole::Outbound => listeners.outbound.push(listener),
                ListenerRole::Inbound => listeners.inbound.push(listener),
                ListenerRole::Hbone => listeners.hbone.push(listener),
            }
        }
        Ok(Some(listeners))
    }

    /// Saves the enrolled pods and the saved ones not serving (see `unresumed`). Not once the
    /// pods are handed over: the file is the successor's then.
    pub(crate) fn save(&self, pods: &BTreeMap<String, EnrolledPod>) -> Result<()> {
        if self.handover.is_released() {
            return Ok(());
        }
        let enrolled = pods
            .iter()
            .map(|(uid, p)| {
                (
                    uid.clone(),
                    SavedPod {
                        request: p.request.clone(),
                        slot: p.slot,
                        steered_ips: p.addresses.steered(),
                    },
                )
            })
            .collect();
        self.state
            .save(with_unresumed(enrolled, &self.unresumed.lock()))
    }
}

/// The pod's listeners: outbound on loopback (where connect4/6 send captured connections),
/// inbound plaintext and HBONE (reached only through sk_lookup). IPv6 ones only if the pod
/// has IPv6.
async fn open_listeners(netns: &NetnsSockets) -> Result<PodListeners> {
    let mut listeners = PodListeners::default();
    for (loopback, required) in [
        (IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        // IPv6 is optional: a pod without ::1 (IPv6 disabled) is IPv4-only.
        (IpAddr::V6(Ipv6Addr::LOCALHOST), false),
    ] {
        let bind = |port| bind_listener(netns, SocketAddr::new(loopback, port));
        let bound = async {
            Ok::<_, std::io::Error>((
                bind(ports::OUTBOUND).await?,
                bind(ports::INBOUND).await?,
                bind(ports::HBONE).await?,
            ))
        };
        match bound.await {
            Ok((outbound, inbound, hbone)) => {
                listeners.outbound.push(outbound);
                listeners.inbound.push(inbound);
                listeners.hbone.push(hbone);
            }
            Err(e) if required => {
                return Err(e).with_context(|| {
                    format!(
                    "binding the proxy listeners on {loopback} (15001, 15006, 15008) in the pod"
                )
                })
            }
            Err(_) => {}
        }
    }
    Ok(listeners)
}

fn cancelled(request: &EnrollRequest) -> String {
    format!(
        "enroll {}: cancelled: the pod was unenrolled while it was being enrolled",
        request.uid
    )
}

/// What the state file holds: the enrolled pods, and the saved pods not serving (an enrolled
/// pod's entry wins: it is the newer one).
fn with_unresumed(
    mut enrolled: BTreeMap<String, SavedPod>,
    unresumed: &BTreeMap<String, SavedPod>,
) -> BTreeMap<String, SavedPod> {
    for (uid, saved) in unresumed {
        enrolled.entry(uid.clone()).or_insert_with(|| saved.clone());
    }
    enrolled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(uid: &str, slot: u32) -> (String, SavedPod) {
        let request = EnrollRequest::for_test(uid, &format!("10.0.0.{}", slot + 1));
        (
            uid.into(),
            SavedPod {
                request,
                slot,
                steered_ips: Vec::new(),
            },
        )
    }

    #[test]
    fn a_save_during_resume_or_after_failed_resumes_keeps_the_pods_not_serving() {
        // Pod a is resumed (and its entry newer), b failed or is not reached yet; c was
        // enrolled meanwhile.
        let enrolled = BTreeMap::from([saved("a", 7), saved("c", 2)]);
        let unresumed = BTreeMap::from([saved("a", 0), saved("b", 1)]);
        let state = with_unresumed(enrolled, &unresumed);
        assert_eq!(state.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(state["a"].slot, 7, "the enrolled entry wins");
        assert_eq!(state["b"].slot, 1);
    }
}
