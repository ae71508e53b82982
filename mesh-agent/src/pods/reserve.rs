//! Pods on their way in. An enrollment (or a resume) takes its uid, slot and IPs here while it
//! holds the pods lock, does its slow part (opening the pod's namespace, listeners, attaching)
//! without the lock, and commits under the lock again. So the lock that status, health checks
//! and other enrollments need is never held across slow work, and two enrollments still never
//! get the same uid, IP or slot.
//!
//! An unenroll of a pod still on its way in cancels it: the enrollment sees that when it
//! commits, takes down what it set up, and fails.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::state::SavedPod;
use super::{EnrollRequest, EnrolledPod};

#[derive(Default)]
pub struct Reservations(Mutex<BTreeMap<String, Reserved>>);

struct Reserved {
    slot: u32,
    ips: Vec<IpAddr>,
    cancelled: bool,
    /// Dropped with the reservation: tells a waiting unenroll the enrollment has finished.
    _finished: watch::Sender<()>,
}

/// A uid, slot and IPs held for one enrollment; released on drop.
pub struct Reservation<'a> {
    reservations: &'a Reservations,
    uid: String,
    slot: u32,
}

impl Reservations {
    /// Reserves the request's uid and IPs, and `slot` (or the first free one), against the
    /// enrolled pods, the saved pods not serving (`unresumed`: their capture may still be
    /// attached, so their slot must not go to another pod) and the other reservations. Call it
    /// holding the pods lock, `enrolled`.
    pub fn reserve<'a>(
        &'a self,
        enrolled: &BTreeMap<String, EnrolledPod>,
        unresumed: &BTreeMap<String, SavedPod>,
        request: &EnrollRequest,
        slot: Option<u32>,
    ) -> Result<Reservation<'a>> {
        let uid = &request.uid;
        let mut reserved = self.0.lock();
        if enrolled.contains_key(uid) {
            bail!("enroll {uid}: a pod with this uid is already enrolled");
        }
        if reserved.contains_key(uid) {
            bail!("enroll {uid}: a pod with this uid is being enrolled right now");
        }
        if unresumed.contains_key(uid) {
            bail!("enroll {uid}: a pod with this uid was saved by an earlier run and is not serving (its resume failed or is under way); unenroll it first");
        }
        for ip in &request.ips {
            if let Some(other) = enrolled.values().find(|p| p.request.ips.contains(ip)) {
                bail!(
                    "enroll {uid}: IP {ip} already belongs to enrolled pod {} ({})",
                    other.request.pod_name(),
                    other.request.uid
                );
            }
            if let Some((other, _)) = unresumed.iter().find(|(_, p)| p.request.ips.contains(ip)) {
                bail!("enroll {uid}: IP {ip} already belongs to pod {other}, saved by an earlier run and not serving (its resume failed or is under way)");
            }
            if let Some((other, _)) = reserved.iter().find(|(_, r)| r.ips.contains(ip)) {
                bail!("enroll {uid}: IP {ip} already belongs to pod {other}, being enrolled right now");
            }
        }
        let taken = |slot: u32| {
            enrolled.values().any(|p| p.slot == slot)
                || unresumed.values().any(|p| p.slot == slot)
                || reserved.values().any(|r| r.slot == slot)
        };
        let slot = match slot {
            Some(slot) if taken(slot) => bail!("enroll {uid}: slot {slot} is already taken"),
            Some(slot) => slot,
            None => (0..mesh_common::limits::MAX_PODS)
                .find(|slot| !taken(*slot))
                .context("this node already has the maximum number of enrolled pods")?,
        };
        reserved.insert(
            uid.clone(),
            Reserved {
                slot,
                ips: request.ips.clone(),
                cancelled: false,
                _finished: watch::channel(()).0,
            },
        );
        Ok(Reservation {
            reservations: self,
            uid: uid.clone(),
            slot,
        })
    }

    /// Cancels the enrollment of `uid` if one is under way, returning what closes once that
    /// enrollment has finished (and undone its work); `None` if `uid` is not being enrolled.
    /// Resolves once no enrollment or resume is under way.
    pub async fn settled(&self) {
        while !self.0.lock().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn cancel(&self, uid: &str) -> Option<watch::Receiver<()>> {
        let mut reserved = self.0.lock();
        let reservation = reserved.get_mut(uid)?;
        reservation.cancelled = true;
        Some(reservation._finished.subscribe())
    }
}

impl Reservation<'_> {
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// True once an unenroll asked for this pod: it must not be committed.
    pub fn is_cancelled(&self) -> bool {
        self.reservations
            .0
            .lock()
            .get(&self.uid)
            .is_some_and(|r| r.cancelled)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.reservations.0.lock().remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uid: &str, ip: &str) -> EnrollRequest {
        EnrollRequest::for_test(uid, ip)
    }

    #[test]
    fn concurrent_enrollments_never_share_a_uid_ip_or_slot() {
        let reservations = Reservations::default();
        let none = BTreeMap::new();
        let a = reservations
            .reserve(&none, &BTreeMap::new(), &request("a", "10.0.0.1"), None)
            .unwrap();
        let err = |r: Result<Reservation>| format!("{:#}", r.err().expect("a conflict"));
        assert!(err(reservations.reserve(
            &none,
            &BTreeMap::new(),
            &request("a", "10.0.0.9"),
            None
        ))
        .contains("being enrolled right now"));
        assert!(err(reservations.reserve(
            &none,
            &BTreeMap::new(),
            &request("b", "10.0.0.1"),
            None
        ))
        .contains("IP 10.0.0.1 already belongs to pod a"));
        assert!(err(reservations.reserve(
            &none,
            &BTreeMap::new(),
            &request("b", "10.0.0.2"),
            Some(a.slot())
        ))
        .contains("slot 0 is already taken"));
        let b = reservations
            .reserve(&none, &BTreeMap::new(), &request("b", "10.0.0.2"), None)
            .unwrap();
        assert_ne!(a.slot(), b.slot());
        // Released on drop: the uid, IP and slot are free again.
        let slot = a.slot();
        drop(a);
        let again = reservations
            .reserve(&none, &BTreeMap::new(), &request("a", "10.0.0.1"), None)
            .unwrap();
        assert_eq!(again.slot(), slot);
    }

    #[test]
    fn cancelling_marks_the_enrollment_and_tells_when_it_ended() {
        let reservations = Reservations::default();
        assert!(reservations.cancel("a").is_none());
        let a = reservations
            .reserve(
                &BTreeMap::new(),
                &BTreeMap::new(),
                &request("a", "10.0.0.1"),
                None,
            )
            .unwrap();
        assert!(!a.is_cancelled());
        let finished = reservations.cancel("a").unwrap();
        assert!(a.is_cancelled());
        assert!(finished.has_changed().is_ok(), "still under way");
        drop(a);
        assert!(finished.has_changed().is_err(), "ended");
    }

    #[test]
    fn a_pod_whose_resume_failed_keeps_its_uid_ip_and_slot() {
        let reservations = Reservations::default();
        let failed = SavedPod {
            request: request("a", "10.0.0.1"),
            slot: 0,
            steered_ips: Vec::new(),
        };
        let unresumed = BTreeMap::from([("a".to_string(), failed)]);
        let none = BTreeMap::new();
        let err = |r: Result<Reservation>| format!("{:#}", r.err().expect("a conflict"));
        assert!(
            err(reservations.reserve(&none, &unresumed, &request("a", "10.0.0.9"), None))
                .contains("saved by an earlier run and is not serving")
        );
        assert!(
            err(reservations.reserve(&none, &unresumed, &request("b", "10.0.0.1"), None))
                .contains("IP 10.0.0.1 already belongs to pod a")
        );
        // Its capture may still be attached: its slot must not serve another pod.
        let b = reservations
            .reserve(&none, &unresumed, &request("b", "10.0.0.2"), None)
            .unwrap();
        assert_ne!(b.slot(), 0);
    }
}
