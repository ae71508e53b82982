//! Passive outlier detection, per client node: endpoints of a Service with
//! `outlierDetection` that fail `consecutiveErrors` times in a row (connections that could
//! not be made; for HTTP also 5xx answers, resets and timeouts) are ejected, that is
//! skipped by balancing like an endpoint failing its health checks, for `baseEjectionMs`
//! times the number of times they were ejected (capped at [`MAX_EJECTION`] or the base, if
//! larger). At most `maxEjectionPercent` of the service's endpoints are out at once (at
//! least one). An ejected endpoint comes back by itself when its time is up; each
//! `intervalMs` spent back in rotation without an ejection takes one off its count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::{ObjectKey, OutlierDetection};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Longest ejection, like Envoy's `max_ejection_time` default.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Outlier state of every service with `outlierDetection` this node sends to.
#[derive(Default)]
pub struct Outliers {
    services: Mutex<HashMap<ObjectKey, HashMap<SocketAddr, Record>>>,
    /// Every ejection so far, for `circuit_breaker_opens`.
    ejections: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Record {
    consecutive_errors: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// When it last came back (or was first seen), for decaying `times_ejected`.
    since: Option<Instant>,
}

/// An ejected endpoint, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ejection {
    pub service: String,
    pub endpoint: String,
    pub times_ejected: u32,
    pub remaining_ms: u64,
}

/// How one connection or request went on an endpoint, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outliers {
    /// Whether `endpoint` of `service` is ejected at `now`.
    pub fn is_ejected(&self, service: &ObjectKey, endpoint: SocketAddr, now: Instant) -> bool {
        self.services
            .lock()
            .get(service)
            .and_then(|s| s.get(&endpoint))
            .and_then(|r| r.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// Counts `outcome` on `endpoint` of `service` (which has `endpoints` endpoints) and
    /// ejects it when that makes `settings.consecutive_errors` failures in a row. True when
    /// this report ejected it.
    pub fn report(
        &self,
        service: &ObjectKey,
        settings: &OutlierDetection,
        endpoints: usize,
        endpoint: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        let mut services = self.services.lock();
        let records = services.entry(service.clone()).or_default();
        let record = records.entry(endpoint).or_default();
        if outcome == Outcome::Success {
            record.consecutive_errors = 0;
            return false;
        }
        record.consecutive_errors = record.consecutive_errors.saturating_add(1);
        let ejected_now = record.ejected_until.is_some_and(|until| now < until);
        if ejected_now || record.consecutive_errors < settings.consecutive_errors {
            return false;
        }
        let out = records
            .values()
            .filter(|r| r.ejected_until.is_some_and(|until| now < until))
            .count();
        let cap = (endpoints * settings.max_ejection_percent as usize / 100).max(1);
        if out >= cap {
            return false;
        }
        let record = records.get_mut(&endpoint).expect("inserted above");
        let interval = Duration::from_millis(settings.interval_ms.max(1));
        if let Some(since) = record.since {
            let quiet = now.saturating_duration_since(since).as_millis() / interval.as_millis();
            record.times_ejected = record
                .times_ejected
                .saturating_sub(u32::try_from(quiet).unwrap_or(u32::MAX));
        }
        record.times_ejected = record.times_ejected.saturating_add(1);
        let base = Duration::from_millis(settings.base_ejection_ms);
        let duration = base
            .saturating_mul(record.times_ejected)
            .min(MAX_EJECTION.max(base));
        record.ejected_until = Some(now + duration);
        record.since = Some(now + duration);
        record.consecutive_errors = 0;
        self.ejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(service = %service, %endpoint, ms = duration.as_millis() as u64, times = record.times_ejected, "outlier ejected");
        true
    }

    /// How much longer the endpoint of `service` at `ip` (any port) stays ejected, if it is.
    pub fn ejected_for(
        &self,
        service: &ObjectKey,
        ip: std::net::IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        self.services
            .lock()
            .get(service)?
            .iter()
            .filter(|(addr, _)| addr.ip() == ip)
            .filter_map(|(_, r)| r.ejected_until.filter(|until| now < *until))
            .max()
            .map(|until| until - now)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The endpoints ejected now.
    pub fn ejected(&self, now: Instant) -> Vec<Ejection> {
        let services = self.services.lock();
        let mut out: Vec<Ejection> = services
            .iter()
            .flat_map(|(service, records)| {
                records.iter().filter_map(move |(endpoint, r)| {
                    let until = r.ejected_until.filter(|until| now < *until)?;
                    Some(Ejection {
                        service: service.to_string(),
                        endpoint: endpoint.to_string(),
                        times_ejected: r.times_ejected,
                        remaining_ms: (until - now).as_millis() as u64,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        out
    }

    /// Forgets services the config no longer has outlier detection for, and endpoints no
    /// workload has any more (an ejected pod replaced by one at a new address must not hold
    /// a place under `maxEjectionPercent`).
    pub fn retain(
        &self,
        keep_service: impl Fn(&ObjectKey) -> bool,
        keep_endpoint: impl Fn(SocketAddr) -> bool,
    ) {
        let mut services = self.services.lock();
        services.retain(|service, _| keep_service(service));
        for records in services.values_mut() {
            records.retain(|addr, _| keep_endpoint(*addr));
        }
    }
}

/// Reports outcomes on the endpoints of one service pick.
#[derive(Clone)]
pub struct OutlierReporter {
    pub(super) outliers: Arc<Outliers>,
    pub(super) service: ObjectKey,
    pub(super) settings: OutlierDetection,
    pub(super) endpoints: usize,
}

impl OutlierReporter {
    pub fn service(&self) -> &ObjectKey {
        &self.service
    }

    /// Counts `outcome` on `endpoint`; true when that ejected it.
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome) -> bool {
        self.outliers.report(
            &self.service,
            &self.settings,
            self.endpoints,
            endpoint,
            outcome,
            Instant::now(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierDetection {
        OutlierDetection {
            consecutive_errors: 3,
            interval_ms: 10_000,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 80))
    }

    #[test]
    fn consecutive_errors_eject_for_base_times_count_and_a_success_resets_the_run() {
        let o = Outliers::default();
        let s = ObjectKey::new("default", "web");
        let t0 = Instant::now();
        let fail = |at| o.report(&s, &settings(), 4, addr(1), Outcome::Failure, at);
        assert!(!fail(t0));
        assert!(!fail(t0));
        o.report(&s, &settings(), 4, addr(1), Outcome::Success, t0);
        assert!(!fail(t0) && !fail(t0), "a success starts the count again");
        assert!(fail(t0), "the third in a row ejects");
        assert!(o.is_ejected(&s, addr(1), t0 + Duration::from_secs(29)));
        assert!(
            !o.is_ejected(&s, addr(1), t0 + Duration::from_secs(30)),
            "back by itself"
        );
        // Ejected again at once after coming back: twice as long.
        let t1 = t0 + Duration::from_secs(30);
        for _ in 0..3 {
            fail(t1);
        }
        assert!(o.is_ejected(&s, addr(1), t1 + Duration::from_secs(59)));
        assert!(!o.is_ejected(&s, addr(1), t1 + Duration::from_secs(60)));
        // After a long quiet time the count has decayed: the base again.
        let t2 = t1 + Duration::from_secs(60 + 100);
        for _ in 0..3 {
            fail(t2);
        }
        assert!(!o.is_ejected(&s, addr(1), t2 + Duration::from_secs(30)));
        assert_eq!(o.ejections(), 3);
    }

    #[test]
    fn at_most_max_ejection_percent_are_out_at_once_but_always_one() {
        let o = Outliers::default();
        let s = ObjectKey::new("default", "web");
        let now = Instant::now();
        let eject = |n: usize, endpoint| {
            (0..3).any(|_| o.report(&s, &settings(), n, endpoint, Outcome::Failure, now))
        };
        // 50 % of 4: two of them.
        assert!(eject(4, addr(1)));
        assert!(eject(4, addr(2)));
        assert!(!eject(4, addr(3)));
        assert_eq!(o.ejected(now).len(), 2);
        // One endpoint of one: 50 % rounds to 0, yet one may go.
        let single = ObjectKey::new("default", "single");
        assert!((0..3).any(|_| o.report(&single, &settings(), 1, addr(9), Outcome::Failure, now)));
    }
}
