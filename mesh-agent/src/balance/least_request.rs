//! `least_request`: of two endpoints picked at random, the one with the lower cost, where
//! cost = (outstanding + 1) × a peak-EWMA estimate of its latency (the idea of Finagle's and
//! linkerd's balancers). Outstanding counts requests on HTTP ports and open connections on
//! TCP ports; the latency is to the response head (HTTP) or of the connect (TCP).
//!
//! The estimate jumps up to any slower sample at once (a slowing endpoint is avoided at
//! once) and moves toward faster samples with a 10 s time constant. Read, it also fades
//! toward zero with the same constant, so an endpoint that was avoided is tried again after a
//! while and re-measured. An endpoint never measured counts as 30 ms until its first sample,
//! which then replaces the default; and one never sent to wins its first comparison, so it
//! gets measured at all (against endpoints measured at 0.5 ms, a 30 ms default would lose
//! every comparison until it faded, which takes tens of seconds: a new endpoint would get no
//! traffic for a minute).
//!
//! State is per endpoint IP, node-wide: the same pod behind two services (or a service and
//! its subset) is one load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rand::Rng;

/// Time constant of the latency estimate.
const DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint not measured yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The load of one endpoint as this node sees it.
pub struct EndpointLoad {
    outstanding: AtomicU32,
    /// No request (connection) was ever started on it.
    untried: std::sync::atomic::AtomicBool,
    estimate: Mutex<Estimate>,
}

struct Estimate {
    nanos: f64,
    at: Instant,
    measured: bool,
}

impl EndpointLoad {
    fn new(now: Instant) -> EndpointLoad {
        EndpointLoad {
            outstanding: AtomicU32::new(0),
            untried: std::sync::atomic::AtomicBool::new(true),
            estimate: Mutex::new(Estimate {
                nanos: DEFAULT_RTT.as_nanos() as f64,
                at: now,
                measured: false,
            }),
        }
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`, faded by the time since it was last updated.
    pub fn latency_at(&self, now: Instant) -> Duration {
        let e = self.estimate.lock();
        Duration::from_nanos((e.nanos * fade(now.saturating_duration_since(e.at))) as u64)
    }

    fn cost_at(&self, now: Instant) -> f64 {
        self.latency_at(now).as_nanos() as f64 * f64::from(self.outstanding() + 1)
    }

    /// Folds a sample in: peaks at once, otherwise an exponentially weighted average over
    /// time. `floor_at_estimate`: a failure, which must never make the endpoint look faster.
    fn observe(&self, sample: Duration, now: Instant, floor_at_estimate: bool) {
        self.untried.store(false, Ordering::Relaxed);
        let mut e = self.estimate.lock();
        let sample = sample.as_nanos() as f64;
        let w = fade(now.saturating_duration_since(e.at));
        let faded = e.nanos * w;
        e.nanos = if floor_at_estimate {
            sample.max(e.nanos)
        } else if !e.measured || sample > faded {
            sample
        } else {
            faded + sample * (1.0 - w)
        };
        e.measured |= !floor_at_estimate;
        e.at = now;
    }
}

/// e^(-elapsed / DECAY).
fn fade(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// Loads of every endpoint this node has sent to under `least_request`, by IP.
#[derive(Default)]
pub struct Loads {
    by_ip: RwLock<HashMap<IpAddr, Arc<EndpointLoad>>>,
}

impl Loads {
    pub fn of(&self, ip: IpAddr) -> Arc<EndpointLoad> {
        if let Some(load) = self.by_ip.read().get(&ip) {
            return load.clone();
        }
        self.by_ip
            .write()
            .entry(ip)
            .or_insert_with(|| Arc::new(EndpointLoad::new(Instant::now())))
            .clone()
    }

    /// The load of `ip` if it was ever tracked (for status).
    pub fn get(&self, ip: IpAddr) -> Option<Arc<EndpointLoad>> {
        self.by_ip.read().get(&ip).cloned()
    }

    /// Counts a request (connection) to `ip` as outstanding until the handle is dropped.
    pub fn start(&self, ip: IpAddr) -> InFlight {
        let load = self.of(ip);
        load.outstanding.fetch_add(1, Ordering::Relaxed);
        load.untried.store(false, Ordering::Relaxed);
        InFlight {
            load,
            started: Instant::now(),
        }
    }

    /// Forgets endpoints no longer in the config. Their handles in flight still count down
    /// on the load they hold.
    pub fn retain(&self, keep: impl Fn(IpAddr) -> bool) {
        self.by_ip.write().retain(|ip, _| keep(*ip));
    }
}

/// One outstanding request (HTTP) or open connection (TCP) to an endpoint. Report how it
/// went once (`succeeded` when the response head arrived or the connection was made,
/// `failed` otherwise); dropping it ends the outstanding count.
pub struct InFlight {
    load: Arc<EndpointLoad>,
    started: Instant,
}

impl InFlight {
    /// Records the time since the start as a latency sample.
    pub fn succeeded(&self) {
        self.load
            .observe(self.started.elapsed(), Instant::now(), false);
    }

    /// Records the time since the start, but never below the current estimate: an endpoint
    /// that fails fast must not attract traffic for it.
    pub fn failed(&self) {
        self.load
            .observe(self.started.elapsed(), Instant::now(), true);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: the cheaper of two distinct endpoints picked at random (ties go to
/// the first drawn, itself random).
pub fn pick(loads: &[Arc<EndpointLoad>], rng: &mut impl Rng) -> usize {
    pick_at(loads, Instant::now(), rng)
}

fn pick_at(loads: &[Arc<EndpointLoad>], now: Instant, rng: &mut impl Rng) -> usize {
    let n = loads.len();
    if n < 2 {
        return 0;
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let untried = |i: usize| loads[i].untried.load(Ordering::Relaxed);
    match (untried(a), untried(b)) {
        (false, true) => return b,
        (true, _) => return a,
        _ => {}
    }
    if loads[b].cost_at(now) < loads[a].cost_at(now) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_estimate_peaks_at_once_and_falls_with_a_10_s_time_constant() {
        let t0 = Instant::now();
        let load = EndpointLoad::new(t0);
        assert_eq!(load.latency_at(t0), DEFAULT_RTT);
        // The first sample replaces the default, even a faster one.
        load.observe(ms(2), t0, false);
        assert_eq!(load.latency_at(t0), ms(2));
        // A slower sample is taken at once.
        load.observe(ms(80), t0, false);
        assert_eq!(load.latency_at(t0), ms(80));
        // A faster one 10 s later pulls it (1 - 1/e) of the way: 80/e + 2 (1 - 1/e).
        let t10 = t0 + Duration::from_secs(10);
        load.observe(ms(2), t10, false);
        let expected = 80.0 / std::f64::consts::E + 2.0 * (1.0 - 1.0 / std::f64::consts::E);
        let got = load.latency_at(t10).as_secs_f64() * 1000.0;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
        // Unread for another 10 s, it has faded by 1/e, so an avoided endpoint gets tried.
        let faded = load.latency_at(t10 + Duration::from_secs(10)).as_secs_f64() * 1000.0;
        assert!(
            (faded - expected / std::f64::consts::E).abs() < 0.01,
            "{faded}"
        );
    }

    #[test]
    fn a_failure_never_lowers_the_estimate() {
        let t0 = Instant::now();
        let load = EndpointLoad::new(t0);
        load.observe(ms(40), t0, false);
        load.observe(ms(1), t0, true);
        assert_eq!(load.latency_at(t0), ms(40));
        load.observe(ms(90), t0, true);
        assert_eq!(load.latency_at(t0), ms(90));
    }

    #[test]
    fn handles_count_outstanding_until_dropped() {
        let loads = Loads::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = loads.start(ip);
        let b = loads.start(ip);
        assert_eq!(loads.of(ip).outstanding(), 2);
        a.succeeded();
        drop(a);
        assert_eq!(loads.of(ip).outstanding(), 1);
        drop(b);
        assert_eq!(loads.of(ip).outstanding(), 0);
        // A forgotten endpoint's handle still counts down on its own load.
        let c = loads.start(ip);
        let held = loads.of(ip);
        loads.retain(|_| false);
        assert!(loads.get(ip).is_none());
        drop(c);
        assert_eq!(held.outstanding(), 0);
    }

    /// With equal latency, cost is outstanding + 1: P2C sends the next request to the less
    /// loaded of the two it draws. Exact counts over 3 endpoints with 0, 1 and 5 outstanding:
    /// the idle one wins every draw it is in (2 of the 3 pairs), the 5-loaded one never wins.
    #[test]
    fn two_choices_prefer_the_less_loaded_endpoint() {
        let t0 = Instant::now();
        let loads: Vec<Arc<EndpointLoad>> =
            (0..3).map(|_| Arc::new(EndpointLoad::new(t0))).collect();
        for load in &loads {
            load.observe(ms(10), t0, false);
        }
        loads[1].outstanding.store(1, Ordering::Relaxed);
        loads[2].outstanding.store(5, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(7);
        let mut wins = [0u32; 3];
        let draws = 30_000;
        for _ in 0..draws {
            wins[pick_at(&loads, t0, &mut rng)] += 1;
        }
        assert_eq!(wins[2], 0);
        // Each pair is drawn with probability 1/3: the idle endpoint wins 2/3 of the draws.
        // Binomial(30000, 2/3): sd ~82; 5 sd either side.
        assert!((19_590..=20_410).contains(&wins[0]), "{wins:?}");
    }

    /// A new endpoint among ones measured far below the 30 ms default still gets its first
    /// request (found by the bench: it got none for as long as the default took to fade),
    /// and from then on competes on its measurement.
    #[test]
    fn an_endpoint_never_tried_is_tried() {
        let t0 = Instant::now();
        let measured = Arc::new(EndpointLoad::new(t0));
        measured.observe(Duration::from_micros(500), t0, false);
        let new = Arc::new(EndpointLoad::new(t0));
        let loads = [measured, new.clone()];
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(pick_at(&loads, t0, &mut rng), 1);
        new.observe(Duration::from_micros(400), t0, false);
        let picks: Vec<usize> = (0..100).map(|_| pick_at(&loads, t0, &mut rng)).collect();
        assert!(picks.iter().all(|&i| i == 1), "now the faster one");
    }

    /// An endpoint 50 ms slower than its peer (same outstanding) loses every draw: with two
    /// endpoints every draw holds both.
    #[test]
    fn two_choices_avoid_the_slower_endpoint() {
        let t0 = Instant::now();
        let fast = Arc::new(EndpointLoad::new(t0));
        let slow = Arc::new(EndpointLoad::new(t0));
        fast.observe(ms(1), t0, false);
        slow.observe(ms(51), t0, false);
        let loads = [fast.clone(), slow];
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| pick_at(&loads, t0, &mut rng) == 0));
        // Until the fast one has 51 outstanding: then (51 + 1) * 1 > 51.
        fast.outstanding.store(51, Ordering::Relaxed);
        assert!((0..1000).all(|_| pick_at(&loads, t0, &mut rng) == 1));
    }
}
