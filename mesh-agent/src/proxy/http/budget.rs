//! The retry budget: per destination service on this node, retries may add at most 20 % to
//! the requests of the last 10 seconds, plus 10 per second. When a service is down, every
//! request failing and being retried would otherwise multiply its load by the attempts.

use std::collections::HashMap;
use std::time::Instant;

use mesh_api::ObjectKey;
use parking_lot::Mutex;

/// Share of recent requests that retries may add.
const RATIO: f64 = 0.2;
/// Retries allowed per second on top of the ratio (so low-traffic services can retry).
const MIN_PER_SECOND: f64 = 10.0;
/// The window the counts cover, in one-second buckets.
const WINDOW_SECONDS: usize = 10;

#[derive(Default)]
pub struct RetryBudgets {
    by_service: Mutex<HashMap<ObjectKey, Window>>,
}

impl RetryBudgets {
    /// Counts a request (first tries only).
    pub fn request(&self, service: &ObjectKey) {
        self.with(service, |w| w.current().0 += 1);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub fn try_retry(&self, service: &ObjectKey) -> bool {
        self.with(service, |w| {
            let (requests, retries) = w.totals();
            let allowed = RATIO * requests as f64 + MIN_PER_SECOND * WINDOW_SECONDS as f64;
            if (retries as f64) < allowed {
                w.current().1 += 1;
                true
            } else {
                false
            }
        })
    }

    fn with<T>(&self, service: &ObjectKey, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut all = self.by_service.lock();
        if let Some(window) = all.get_mut(service) {
            return f(window);
        }
        f(all.entry(service.clone()).or_insert_with(Window::new))
    }
}

/// (requests, retries) per second for the last [`WINDOW_SECONDS`] seconds.
struct Window {
    start: Instant,
    /// Second (since `start`) that `buckets[second % N]` holds.
    seconds: [u64; WINDOW_SECONDS],
    buckets: [(u64, u64); WINDOW_SECONDS],
}

impl Window {
    fn new() -> Window {
        Window {
            start: Instant::now(),
            seconds: [u64::MAX; WINDOW_SECONDS],
            buckets: [(0, 0); WINDOW_SECONDS],
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    fn current(&mut self) -> &mut (u64, u64) {
        let second = self.now();
        let i = (second % WINDOW_SECONDS as u64) as usize;
        if self.seconds[i] != second {
            self.seconds[i] = second;
            self.buckets[i] = (0, 0);
        }
        &mut self.buckets[i]
    }

    fn totals(&self) -> (u64, u64) {
        let now = self.now();
        self.seconds
            .iter()
            .zip(&self.buckets)
            .filter(|(s, _)| **s != u64::MAX && now.saturating_sub(**s) < WINDOW_SECONDS as u64)
            .fold((0, 0), |(q, r), (_, (bq, br))| (q + bq, r + br))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_requests_plus_a_floor() {
        let budgets = RetryBudgets::default();
        let web = ObjectKey::new("default", "web");
        for _ in 0..1000 {
            budgets.request(&web);
        }
        let granted = (0..1000).filter(|_| budgets.try_retry(&web)).count();
        // 20 % of 1000 plus 10/s over the 10 s window.
        assert_eq!(granted, 300);
        // Another service has its own budget.
        assert!(budgets.try_retry(&ObjectKey::new("default", "other")));
    }
}
